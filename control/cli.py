"""The `xskproxy` command: run the agent, the demo, and inspect a running agent's state.

Inspection commands read what the agent publishes under its state directory (stats.json,
services.json, the memory-mapped conntrack files); they never talk to the dataplane directly,
and end as `cat` does when their reader goes away (`xskproxy services | head`: SIGPIPE, no
traceback).
"""
import argparse
import json
import logging
import os
import re
import signal
import sys
import time

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
                          "agent per node from bundled manifests, runs every Service and lifetime "
                          "scenario with real clients (all of them, whatever failed before), "
                          "compares throughput with the kernel path, tears down.")
    demo.add_argument("--keep-going", action="store_true",
                      help="accepted for old scripts: every scenario runs even after a failure anyway")

    stats = sub.add_parser("stats", help="counters per reason, interface and queue",
                           description="Tables of the running agent's counters (stats.json, rewritten "
                           "every second): steering decisions of the XDP program and of the kernel fast "
                           "path, the fast path's flow table, pipeline drop reasons and outcomes per "
                           "queue, worker loop events and AF_XDP socket statistics per queue and "
                           "interface. Counters at zero are left out unless --all.")
    _add_state_dir(stats)
    stats.add_argument("--json", action="store_true", help="print the raw JSON snapshot")
    stats.add_argument("--explain", action="store_true",
                       help="each counter's meaning beside it (from native/xskproxy_abi.h); without "
                       "a running agent, the list of every counter and its meaning")
    stats.add_argument("--all", action="store_true", help="also the counters at zero")

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


# -- xskproxy stats ---------------------------------------------------------------------------
# Every counter's meaning is its comment in native/xskproxy_abi.h, read when asked for: the
# header stays the one place where a counter is named and explained.
_HEADER_MEMBER = re.compile(r"^\s*(?:__[us]\d+\s+)?([A-Za-z_]\w*)\s*(?:=\s*[^,;/]+)?[,;]\s*(?:/\*(.*?)(\*/|$))?\s*$")
_HEADER_CONTINUATION = re.compile(r"^\s*\*?\s*(.*?)\s*(\*/)?\s*$")
_HEADER_BLOCK = re.compile(r"^\s*(enum|struct)\s+(\w+)\s*\{")


def header_meanings(path=None):
    """{name: one-line meaning} of every enum member and struct field of the ABI header, in the
    header's order: the comment on its line (one running on over the next lines is joined; ""
    when there is none). Struct fields are keyed "struct_name.field", and xskp_socket_stats'
    fields (the names stats.json uses for a socket's counters) by their bare name too."""
    if path is None:
        from dataplane.abi import HEADER_PATH as path
    meanings, block, open_name, words = {}, None, None, []
    with open(path) as f:
        for line in f:
            if open_name is not None:                       # a member's comment running on
                m = _HEADER_CONTINUATION.match(line)
                words.append(m.group(1))
                if m.group(2):
                    meanings[open_name] = " ".join(" ".join(words).split())
                    open_name = None
                continue
            if (m := _HEADER_BLOCK.match(line)):
                block = m.group(1), m.group(2)
                continue
            if line.strip().startswith("}"):
                block = None
                continue
            if block is None or not (m := _HEADER_MEMBER.match(line)):
                continue
            name = m.group(1) if block[0] == "enum" else f"{block[1]}.{m.group(1)}"
            words = [(m.group(2) or "").strip()]
            if m.group(2) is None or m.group(3):
                meanings[name] = " ".join(" ".join(words).split())
            else:
                open_name = name
    for name, meaning in list(meanings.items()):
        if name.startswith("xskp_socket_stats."):
            meanings[name.split(".", 1)[1]] = meaning
    return meanings


def _worker_key(name):
    return "XSKP_WC_" + name.upper()


def _table(title, columns, rows, meanings=None, key=lambda name: name, hidden=0):
    """Lines of a text table: the counter name, one right-aligned column per entry of `columns`,
    and with `meanings` the header comment of each counter. rows: [(name, [values])]."""
    lines = [title]
    if not rows:
        lines.append("  (none)" if not hidden else f"  (all {hidden} at zero; --all shows them)")
        return lines
    width = max(len("counter"), *(len(name) for name, _ in rows))
    widths = [max(len(c), *(len(_number(v[i])) for _, v in rows)) for i, c in enumerate(columns)]
    head = "  " + "counter".ljust(width) + "".join("  " + c.rjust(w) for c, w in zip(columns, widths))
    lines.append(head + ("  meaning" if meanings is not None else ""))
    for name, values in rows:
        line = "  " + name.ljust(width) + "".join("  " + _number(v).rjust(w) for v, w in zip(values, widths))
        if meanings is not None:
            line += "  " + (meanings.get(key(name)) or "?")
        lines.append(line)
    if hidden:
        lines.append(f"  ({hidden} more at zero; --all shows them)")
    return lines


def _number(value):
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _rows(names, columns_of, show_all):
    """[(name, [value per column])] in `names` order, zero rows dropped unless show_all; and how
    many were dropped."""
    rows, hidden = [], 0
    for name in names:
        values = [column.get(name, 0) for column in columns_of]
        if show_all or any(values):
            rows.append((name, values))
        else:
            hidden += 1
    return rows, hidden


def _ordered(names, order):
    """`names` in the header's order (order: names as the header lists them), others after."""
    rank = {name: i for i, name in enumerate(order)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def _ago(timestamp, now):
    if not timestamp:
        return "never"
    return (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))
            + f", {max(0.0, now - timestamp):.0f} s ago")


def render_stats(snapshot, meanings=None, explain=False, show_all=False, now=None):
    """The text of `xskproxy stats`: a summary, then one table per section of stats.json.

    meanings: header_meanings(), which orders the counters as the header does and, with
    `explain`, gives each its meaning beside it; show_all: counters at zero too."""
    now = time.time() if now is None else now
    header_order = list(meanings or ())
    meanings = meanings if explain else None
    out = []
    sync = snapshot.get("sync") or {}
    if sync.get("consecutive_failures"):
        out.append(f"PUBLISH FAILING: {sync['consecutive_failures']} attempts in a row, the tables in use are "
                   f"stale; last error: {sync.get('last_error')}")
    source = snapshot.get("source") or {}
    out.append(f"node {snapshot.get('node', '?')}: generation {snapshot.get('generation', 0)} published "
               f"{_ago(snapshot.get('published_at'), now)}; up {snapshot.get('uptime_seconds', 0):.0f} s")
    out.append(f"source {source.get('kind', '?')}: last known good {source.get('staleness_seconds', 0):.1f} s ago"
               + (f", error: {source['error']}" if source.get("error") else ""))
    if sync:
        out.append(f"publishing: {sync.get('publishes', 0)} published, {sync.get('unchanged', 0)} unchanged, "
                   f"{sync.get('failures', 0)} failed ({sync.get('consecutive_failures', 0)} in a row), "
                   f"translator resets {sync.get('translator_resets', 0)}, last sync "
                   f"{1000 * (sync.get('last_sync_seconds') or 0):.1f} ms")
    translate = snapshot.get("translate") or {}
    if translate:
        out.append("tables: " + ", ".join(f"{k.replace('_', ' ')} {_number(v)}" for k, v in translate.items()))

    steering = snapshot.get("steering") or {}
    order = [n for n in header_order if n in steering] or list(steering)
    for title, names in (("steering decisions (XDP program on both interfaces; packets)",
                          [n for n in order if not n.startswith("FAST_")]),
                         ("kernel fast path (tc program; packets)", [n for n in order if n.startswith("FAST_")])):
        rows, hidden = _rows(names, [steering], show_all)
        out += [""] + _table(title, ["packets"], rows, meanings, hidden=hidden)

    fast = snapshot.get("fast_path")
    if fast is not None:
        out.append("")
        if not fast.get("enabled"):
            out.append("fast path summary: off (flowOffload false): every packet of a steered flow goes "
                       "through AF_XDP")
        else:
            out.append(f"fast path summary: on, {'live' if fast.get('live') else 'NOT LIVE (stale heartbeat: the tc program passes everything to the kernel)'}; "
                       f"{_number(fast.get('entries', 0))} of {_number(fast.get('capacity', 0))} flow entries in use "
                       f"(one per direction of an offloaded flow)")

    queues = snapshot.get("queues") or {}
    qnames = sorted(queues, key=lambda q: int(q) if str(q).isdigit() else str(q))
    pipelines = [queues[q].get("pipeline", {}) for q in qnames]
    columns = [f"q{q}" for q in qnames]
    names = _ordered({n for p in pipelines for n in p}, header_order)
    if show_all and header_order:
        names = [n for n in header_order if n.startswith(("XSKP_DROP_", "XSKP_CNT_"))
                 and n not in ("XSKP_DROP_NONE", "XSKP_DROP_REASON_MAX", "XSKP_COUNTER_MAX")]
    rows, hidden = _rows(names, pipelines, show_all)
    if len(columns) > 1:
        columns.append("total")
        rows = [(n, v + [sum(v)]) for n, v in rows]
    out += [""] + _table("pipeline per queue (frames; XSKP_DROP_*: drop reasons, XSKP_CNT_*: outcomes"
                         + ("" if show_all else "; the agent lists the non-zero ones") + ")",
                         columns, rows, meanings, hidden=hidden)

    for section, title, key in (("worker", "worker loops per queue and interface (events)", _worker_key),
                                ("sockets", "AF_XDP sockets per queue and interface (kernel XDP_STATISTICS)",
                                 lambda n: n)):
        cells = [(f"q{q}/{iface}", values) for q in qnames
                 for iface, values in (queues[q].get(section) or {}).items()]
        names = []
        for _, values in cells:
            names += [n for n in values if n not in names]
        rows, hidden = _rows(names, [values for _, values in cells], show_all)
        out += [""] + _table(title, [c for c, _ in cells], rows, meanings, key=key, hidden=hidden)

    out.append("")
    for q in qnames:
        flows = queues[q].get("flows") or {}
        error = queues[q].get("error")
        out.append(f"queue {q}: flows in use " + (", ".join(f"{k} {_number(v)}" for k, v in flows.items()) or "-")
                   + (f"; WORKER ERROR: {error}" if error else ""))
    known = {"node", "generation", "published_at", "uptime_seconds", "source", "sync", "translate",
             "steering", "fast_path", "queues"}
    for section, values in snapshot.items():                 # sections this view does not know yet
        if section not in known:
            out.append(f"{section}: {json.dumps(values, sort_keys=True)}")
    return "\n".join(out)


def render_meanings(meanings):
    """Every counter `xskproxy stats` shows, with its meaning from the header (no agent needed)."""
    header_order = list(meanings)
    groups = (("steering decisions (XDP program)", lambda n: n.startswith("STEER_") and n in meanings
               and not n.startswith(("STEER_ROLE_", "STEER_MAP_")) and n != "STEER_COUNTER_MAX"),
              ("kernel fast path (tc program)", lambda n: n.startswith("FAST_")),
              ("pipeline: drop reasons", lambda n: n.startswith("XSKP_DROP_") and n not in
               ("XSKP_DROP_NONE", "XSKP_DROP_REASON_MAX")),
              ("pipeline: outcomes", lambda n: n.startswith("XSKP_CNT_") and n != "XSKP_COUNTER_MAX"),
              ("worker loops (XSKP_WC_*, named in lower case without the prefix)", lambda n: n.startswith("XSKP_WC_")
               and n != "XSKP_WC_MAX"),
              ("AF_XDP sockets", lambda n: n.startswith("xskp_socket_stats.")))
    out = []
    for title, belongs in groups:
        names = [n for n in header_order if belongs(n)]
        shown = [n.split(".", 1)[1] if n.startswith("xskp_socket_stats.") else
                 n[len("XSKP_WC_"):].lower() if n.startswith("XSKP_WC_") else n for n in names]
        width = max((len(n) for n in shown), default=0)
        out += [title] + [f"  {s.ljust(width)}  {meanings.get(n) or '?'}" for s, n in zip(shown, names)] + [""]
    return "\n".join(out).rstrip() + "\n"


def cmd_stats(args):
    if args.explain and not args.json and not os.path.exists(os.path.join(args.state_dir, "stats.json")):
        print(render_meanings(header_meanings()), end="")
        return 0
    snapshot = _read_json(args.state_dir, "stats.json")
    if args.json:
        print(json.dumps(snapshot, indent=2, sort_keys=True))
        return 0
    try:
        meanings = header_meanings()
    except OSError:                 # an install without the header: JSON order, no meanings
        meanings = None
    print(render_stats(snapshot, meanings, explain=args.explain, show_all=args.all))
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
    from control.config import ConfigError, load_config, with_node_name
    try:
        config = with_node_name(load_config(args.config))
    except ConfigError as e:
        raise SystemExit(f"xskproxy: {args.config}: {e}")
    code = agent.run(config)
    # Stopped: detached or handed over, files flushed. The interpreter's teardown is skipped: after
    # a cold numba compile, freeing the compiler's modules made a SIGTERM exit take 1.6 s, not
    # 0.4 s (the agent's own stop: 0.11 s), time that a handover and kubelet wait for.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_demo(args):
    from control import demo
    return demo.main()


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
