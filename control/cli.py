"""The `xskproxy` command: run the agent, the demo, and inspect a running agent's state.

Inspection commands read what the agent publishes under its state directory (stats.json,
services.json, the memory-mapped conntrack files); they never talk to the dataplane directly,
and end as `cat` does when their reader goes away (`xskproxy services | head`: SIGPIPE, no
traceback).
"""
import argparse
import json
import os
import signal
import sys

DEFAULT_STATE_DIR = "/run/xskproxy"


def _add_state_dir(parser):
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                        help=f"the running agent's state directory (default {DEFAULT_STATE_DIR})")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="xskproxy",
        description="AF_XDP userspace dataplane for Kubernetes Services and noEncap Pod traffic.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the agent on this node",
                         description="Attach the steering program to the transport and gateway "
                         "interfaces, start one worker per queue and the control thread. SIGINT "
                         "detaches and exits. SIGTERM hands over: the program stays attached and drops the "
                         "translated traffic it has no socket for, until the next agent replaces it or "
                         "handoverSeconds (default 10; 0: detach at once) run out, when the kernel path "
                         "takes over. Per-flow state stays in the state directory for the next start "
                         "to adopt.")
    run.add_argument("--config", required=True, help="YAML configuration file (see deploy/configmap.yaml)")

    demo = sub.add_parser("demo", help="build the lab, run every scenario, print the results",
                          description="Builds a multi-node lab in network namespaces, starts one "
                          "agent per node from bundled manifests, runs the Service scenarios with "
                          "real clients, compares throughput with the kernel path, tears down.")
    demo.add_argument("--keep-going", action="store_true", help="run every scenario even after a failure")

    stats = sub.add_parser("stats", help="counters per reason, interface and queue",
                           description="Steering decisions, pipeline drop reasons and outcomes, "
                           "worker slow paths and socket statistics of the running agent.")
    _add_state_dir(stats)
    stats.add_argument("--json", action="store_true", help="print the raw JSON snapshot")

    conntrack = sub.add_parser("conntrack", help="list tracked flows with their translation",
                               description="Reads the agent's memory-mapped conntrack tables.")
    _add_state_dir(conntrack)
    conntrack.add_argument("--service", help="only flows of this Service (namespace/name)")
    conntrack.add_argument("--address", help="only flows with this address on either side")
    conntrack.add_argument("--json", action="store_true", help="one JSON object per flow")

    services = sub.add_parser("services", help="frontends and backends as the dataplane sees them",
                              description="The Service tables of the generation currently published.")
    _add_state_dir(services)
    services.add_argument("--json", action="store_true", help="print the raw JSON snapshot")
    return parser


def _read_json(state_dir, name):
    path = os.path.join(state_dir, name)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise SystemExit(f"xskproxy: {path} not found: is the agent running with --state-dir {state_dir}?")


def cmd_stats(args):
    snapshot = _read_json(args.state_dir, "stats.json")
    if args.json:
        print(json.dumps(snapshot, indent=2, sort_keys=True))
        return 0
    sync = snapshot.get("sync") or {}
    if sync.get("consecutive_failures"):
        print(f"PUBLISH FAILING: {sync['consecutive_failures']} attempts in a row, the tables in use are "
              f"stale; last error: {sync.get('last_error')}")
    for section, values in snapshot.items():
        if isinstance(values, dict):
            print(f"{section}:")
            for name, value in values.items():
                if isinstance(value, dict):
                    nonzero = {k: v for k, v in value.items() if v}
                    print(f"  {name}: " + (" ".join(f"{k}={v}" for k, v in nonzero.items()) or "-"))
                else:
                    print(f"  {name}: {value}")
        else:
            print(f"{section}: {values}")
    return 0


def cmd_services(args):
    snapshot = _read_json(args.state_dir, "services.json")
    if args.json:
        print(json.dumps(snapshot, indent=2, sort_keys=True))
        return 0
    for name, svc in sorted(snapshot.items()):
        flags = f" [{', '.join(svc['flags'])}]" if svc["flags"] else ""
        print(f"{name}{flags}")
        for frontend in svc["frontends"]:
            print(f"  frontend {frontend}")
        for title, ring in (("backend", svc["backends"]), ("local backend", svc["local_backends"])):
            for backend, slots in sorted(ring.items()):
                print(f"  {title} {backend} ({slots} ring slots)")
        if not svc["backends"]:
            print("  no usable backend")
    return 0


def cmd_conntrack(args):
    from control import agent
    flows = agent.read_conntrack(args.state_dir, service=args.service, address=args.address)
    for flow in flows:
        print(json.dumps(flow) if args.json else agent.format_flow(flow))
    if not args.json:
        print(f"{len(flows)} flows", file=sys.stderr)
    return 0


def cmd_run(args):
    from control import agent
    from control.config import ConfigError, load_config
    try:
        config = load_config(args.config)
    except ConfigError as e:
        raise SystemExit(f"xskproxy: {args.config}: {e}")
    return agent.run(config)


def cmd_demo(args):
    from control import demo
    return demo.main(keep_going=args.keep_going)


COMMANDS = {"run": cmd_run, "demo": cmd_demo, "stats": cmd_stats,
            "conntrack": cmd_conntrack, "services": cmd_services}
INSPECTION_COMMANDS = ("stats", "conntrack", "services")   # nothing to clean up if killed


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command in INSPECTION_COMMANDS:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)      # Python ignores it: BrokenPipeError
    return COMMANDS[args.command](args) or 0


if __name__ == "__main__":
    sys.exit(main())
