"""Run one lab scenario many times and say which runs failed and why (flaky-scenario hunting).

  python -m lab.repeat endpoint_churn 30             one ServiceLab, the scenario 30 times in it
  python -m lab.repeat endpoint_churn 10 --fresh     a new lab (namespaces, agents) for every run
  python -m lab.repeat endpoint_churn 30 --capture   also tcpdump every Pod's eth0 (needs tcpdump;
                                                     kept only for failed runs; costs CPU, which
                                                     itself makes timing-sensitive runs fail more)

Scenarios are those of lab/scenarios.py and lab/lifecycle.py, by function name. Every lab has a
prefix starting "xch" and is torn down at the end, on failure and on Ctrl-C too. A failed run
keeps, under --keep-dir, the agents' log lines written during that run, their stats.json and the
captures; one line per run is printed as it ends, then a summary. Nothing here fixes timing: a
run takes as long as the scenario does (endpoint_churn: about 20 s, plus ~15 s per fresh lab).
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

from lab import lifecycle, scenarios
from lab.netns import Lab

SCENARIOS = {s.__name__: s for s in list(scenarios.SCENARIOS) + list(lifecycle.SCENARIOS)}


def _log_sizes(sl):
    sizes = {}
    for node in sl.cluster.nodes:
        path = os.path.join(sl.workdir, f"{node.name}.log")
        sizes[node.name] = os.path.getsize(path) if os.path.exists(path) else 0
    return sizes


def _start_captures(sl):
    """tcpdump on the Pod side (a Pod's eth0 sees what xskproxy sent it, unlike the node's
    served interfaces) of every Pod; returns [(proc, pcap path)]."""
    captures = []
    for pod in sl.cluster.pods:
        path = os.path.join(sl.workdir, f"capture-{pod.name}.pcap")
        proc = sl.lab.popen(pod.ns, ["tcpdump", "-i", pod.iface.name, "-n", "-s", "128", "-U", "-w", path,
                                     "tcp"])
        captures.append((proc, path))
    time.sleep(0.5)                  # tcpdump is listening before the scenario's first packet
    return captures


def _keep_failure(sl, run, sizes, captures, keep_dir):
    """Copy what explains a failed run into keep_dir/run-N; returns that directory."""
    target = os.path.join(keep_dir, f"run-{run:02d}")
    os.makedirs(target, exist_ok=True)
    for node in sl.cluster.nodes:
        path = os.path.join(sl.workdir, f"{node.name}.log")
        if os.path.exists(path):
            with open(path, "rb") as f:
                f.seek(sizes.get(node.name, 0))
                with open(os.path.join(target, f"{node.name}.log"), "wb") as out:
                    out.write(f.read())
        if os.path.exists(sl.stats_path(node)):
            shutil.copy(sl.stats_path(node), os.path.join(target, f"stats-{node.name}.json"))
    for _, path in captures:
        if os.path.exists(path):
            shutil.copy(path, target)
    return target


def run_once(sl, scenario, run, keep_dir, capture):
    """One run of `scenario` in `sl`: (Result, seconds, directory kept or None)."""
    sizes = _log_sizes(sl)
    captures = _start_captures(sl) if capture else []
    started, started_wall = time.monotonic(), time.time()
    try:
        result = scenario(sl)
    except Exception as e:                      # a crashed run is a failed run, with its reason
        result = scenarios.Result(scenario.__name__, False, f"error: {type(e).__name__}: {e}")
    seconds = time.monotonic() - started
    for proc, _ in captures:
        sl.lab.stop(proc)
    if not result.ok:          # the scenario's times count from (within ms of) this moment
        result.detail += f" (t=0 at {_clock(started_wall)})"
    kept = None if result.ok else _keep_failure(sl, run, sizes, captures, keep_dir)
    for _, path in captures:
        if os.path.exists(path):
            os.unlink(path)
    return result, seconds, kept


def _clock(wall):
    """HH:MM:SS.mmm UTC, as the agents' logs write their times."""
    return time.strftime("%H:%M:%S", time.gmtime(wall)) + f".{int(wall * 1000) % 1000:03d}"


def _ensure_agents(sl):
    """Every node's agent running (a scenario that failed half-way may have left one stopped)."""
    for node in sl.cluster.nodes:
        proc = sl.agents.get(node.name)
        if proc is None or proc.poll() is not None:
            sl.agents.pop(node.name, None)
            sl.start_agent(node)


def _new_lab(workdir):
    lab = Lab("xch")
    lab.__enter__()
    try:
        sl = scenarios.ServiceLab(lab, workdir=workdir)
        sl.start_agents()
    except BaseException:
        lab.__exit__(None, None, None)
        raise
    return lab, sl


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lab.repeat", description=__doc__.split("\n")[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("runs", type=int)
    parser.add_argument("--fresh", action="store_true", help="a new lab for every run (default: one lab)")
    parser.add_argument("--capture", action="store_true", help="tcpdump every Pod's eth0 during each run")
    parser.add_argument("--keep-dir", default=None, help="where failed runs' logs go (default: a new temp dir)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("lab.repeat: needs root (network namespaces, XDP, AF_XDP)")
        return 2
    scenario = SCENARIOS[args.scenario]
    keep_dir = args.keep_dir or tempfile.mkdtemp(prefix=f"xskproxy-repeat-{args.scenario}-")
    workdir = tempfile.mkdtemp(prefix="xskproxy-repeat-lab-")
    print(f"{args.scenario} x{args.runs} in {'a fresh lab each run' if args.fresh else 'one lab'}; "
          f"failed runs kept in {keep_dir}", flush=True)
    outcomes = []
    lab = sl = None
    try:
        for run in range(1, args.runs + 1):
            if lab is None:
                if args.fresh:
                    workdir = tempfile.mkdtemp(prefix="xskproxy-repeat-lab-")
                lab, sl = _new_lab(workdir)
            else:
                _ensure_agents(sl)
            result, seconds, kept = run_once(sl, scenario, run, keep_dir, args.capture)
            outcomes.append((run, result, kept))
            when = time.strftime("%H:%M:%S", time.gmtime())
            print(f"run {run:2d}/{args.runs} {when}Z {'PASS' if result.ok else 'FAIL'} {seconds:5.1f}s  "
                  f"{result.detail}" + (f"  [kept {kept}]" if kept else ""), flush=True)
            if args.fresh:
                lab.__exit__(None, None, None)
                shutil.rmtree(workdir, ignore_errors=True)
                lab = sl = None
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    finally:
        if lab is not None:
            lab.__exit__(None, None, None)
        shutil.rmtree(workdir, ignore_errors=True)
    failed = [(run, result) for run, result, _ in outcomes if not result.ok]
    print(f"\n{args.scenario}: {len(outcomes) - len(failed)}/{len(outcomes)} passed")
    for run, result in failed:
        print(f"  run {run}: {result.detail}")
    if not failed and os.path.isdir(keep_dir) and not os.listdir(keep_dir):
        os.rmdir(keep_dir)
    return 0 if outcomes and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
