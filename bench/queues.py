"""Issue 15's comparison: the agent with 1 and with 2 workers (`queues`) on a lab whose veths have 2
queues, in upcall mode (tc spreads flows over the workers), under the same offered load: new flows
(64 B UDP, every packet a new flow, 65,536 sources) and TCP 4 streams. `python -m bench.queues`;
writes bench/results/queues.{json,md}. Never asserts a speed.

On this 2-core machine the generator (and iperf3) run on CPU 0, the agent may use both CPUs in
both rows (so the rows differ only in the worker count): a second worker then shares CPU 0 with
the generator, which the per-CPU busy columns show next to the rates."""
import argparse
import json
import os
import statistics
import sys
import time

from bench.measure import TCP_WORKLOADS, UDP_NEW_FLOWS, BenchLab, unavailable_reason
from bench.paths import XskproxyAgent

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
WORKLOADS = (UDP_NEW_FLOWS, TCP_WORKLOADS[1])
LAB_QUEUES = 2
SERVICES = 10


class AgentWithWorkers(XskproxyAgent):
    """(f) with `queues: workers`, free to run on every CPU."""

    def __init__(self, workers):
        super().__init__(SERVICES)
        self.workers = workers
        self.extra_config = {"queues": workers}
        self.cpus = "0-1"

    @property
    def label_extra(self):
        return f", {self.workers} worker{'s' if self.workers > 1 else ''}"

    @property
    def id_extra(self):
        return f"-w{self.workers}"


def _cell(samples):
    rates = [m["rate"] for m in samples if m.get("rate") is not None]
    if not rates:
        return None
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "runs": len(rates),
            "offered_pps": statistics.median([m.get("offered_pps", 0.0) for m in samples]),
            "gen_busy": statistics.median([m["generator_cpu"]["utilisation"] for m in samples]),
            "path_busy": statistics.median([m["path_cpu"]["utilisation"] for m in samples]),
            "path_counters": samples[-1].get("path_counters")}


def run(runs=3, seconds=3.0, tcp_seconds=2.0, log=print):
    """Both rows `runs` times, interleaved; returns {row label: {workload key: cell}}."""
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(f"benchmark cannot run: {reason}")
    rows = [AgentWithWorkers(1), AgentWithWorkers(2)]
    samples = {r.label: {w.key: [] for w in WORKLOADS} for r in rows}
    with BenchLab(prefix="xlq", queues=LAB_QUEUES) as bench:
        for n in range(runs):
            for row in (rows if n % 2 == 0 else list(reversed(rows))):
                log(f"run {n + 1}/{runs}: {row.label}")
                bench.set_ip_forward(row.kernel_forwards)
                bench.flush_conntrack()
                try:
                    row.setup(bench)
                    for workload in WORKLOADS:
                        dst_ip, dst_port = row.target(bench, workload.proto)
                        bench.flush_conntrack()
                        counters0 = row.path_counters(bench, newer_than=time.time())
                        duration = tcp_seconds if workload.proto == "tcp" else seconds
                        m = bench.measure(dst_ip, dst_port, workload, duration, row.worker_pid())
                        counters1 = row.path_counters(bench, newer_than=time.time())
                        m["path_counters"] = ({k: v - (counters0 or {}).get(k, 0) for k, v in counters1.items()
                                               if v != (counters0 or {}).get(k, 0)} if counters1 else None)
                        samples[row.label][workload.key].append(m)
                        log(f"  {workload.key}: {m['rate']:.3g}")
                finally:
                    row.teardown(bench)
                    bench.flush_conntrack()
                    bench.start_sink()
    return {label: {key: _cell(s) for key, s in cells.items()} for label, cells in samples.items()}


def markdown(results):
    lines = [f"Agent with 1 and 2 workers, lab veths with {LAB_QUEUES} queues (upcall mode), medians "
             "[min-max]; CPU 0 runs the generator (and iperf3), the agent may use both CPUs; `busy` = "
             "CPU 0 / CPU 1 utilisation.", "",
             "| row | new flows/s (64 B UDP) | offered | busy | TCP 4 streams Gbit/s | busy |", "|---|---|---|---|---|---|"]
    for label, cells in results.items():
        new, tcp = cells.get(UDP_NEW_FLOWS.key), cells.get(TCP_WORKLOADS[1].key)
        fmt = lambda c, scale, unit: (f"{c['median'] / scale:.3g}{unit} [{c['min'] / scale:.3g}-{c['max'] / scale:.3g}]"
                                      if c else "-")
        busy = lambda c: f"{c['gen_busy']:.0%} / {c['path_busy']:.0%}" if c else "-"
        lines.append(f"| {label} | {fmt(new, 1e3, ' k')} | {new['offered_pps'] / 1e3:.0f} k | {busy(new)} | "
                     f"{fmt(tcp, 1, '')} | {busy(tcp)} |" if new else f"| {label} | - | - | - | {fmt(tcp, 1, '')} | {busy(tcp)} |")
    return "\n".join(lines) + "\n"


def write(results, out_dir=RESULTS_DIR):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "queues.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    with open(os.path.join(out_dir, "queues.md"), "w") as f:
        f.write(markdown(results))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.queues", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--out", default=RESULTS_DIR)
    args = parser.parse_args(argv)
    results = run(args.runs, args.seconds, log=lambda m: print(m, file=sys.stderr, flush=True))
    write(results, args.out)
    print(markdown(results))


if __name__ == "__main__":
    main()
