"""SNAT soak: rounds of `ab` through the two paths that SNAT to the node address, printing each
round's failures and the agent's SNAT figures (issue 13 item 2: SNAT ports ran out).

  python -m lab.snat_soak                 50 rounds of ab -n 10000 -c 20 on both targets
  python -m lab.snat_soak --rounds 5 --requests 2000

Targets, both through node0's agent, run side by side in each round:
  hairpin   a Pod to a ClusterIP whose only backend is that Pod (hairpin SNAT, 10.96.0.40)
  nodeport  the external client to node0's NodePort 30080 (externalTrafficPolicy Cluster: the
            remote backends see node0's address)
The lab's prefix is "xsn"; it is torn down at the end, on failure and on Ctrl-C too. Exit 1 when
a request failed or XSKP_DROP_SNAT_EXHAUSTED moved.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from lab import scenarios
from lab.netns import Lab

WATCHED = ("XSKP_DROP_SNAT_EXHAUSTED", "XSKP_DROP_CT_FULL", "XSKP_CNT_SNAT", "XSKP_CNT_HAIRPIN",
           "XSKP_CNT_CT_REUSED", "XSKP_CNT_CT_EVICTED")
_FIELDS = {"complete": r"Complete requests:\s+(\d+)", "failed": r"Failed requests:\s+(\d+)",
           "connect_errors": r"\(Connect: (\d+)", "receive_errors": r"Receive: (\d+)",
           "length_errors": r"Length: (\d+)", "exceptions": r"Exceptions: (\d+)",
           "non2xx": r"Non-2xx responses:\s+(\d+)", "rps": r"Requests per second:\s+([\d.]+)",
           "connect_max_ms": r"Connect:\s+\d+\s+[\d.]+\s+[\d.]+\s+\d+\s+(\d+)",
           "longest_ms": r"100%\s+(\d+)"}


def pipeline_counters(sl, node):
    """The node's agent's pipeline counters summed over its queues (stats.json)."""
    stats = sl.agent_stats(node) or {}
    total = {}
    for queue in stats.get("queues", {}).values():
        for name, value in queue.get("pipeline", {}).items():
            total[name] = total.get(name, 0) + value
    return total


def start_ab(sl, ns, url, requests, concurrency):
    return sl.lab.popen(ns, ["ab", "-q", "-r", "-s", "10", "-n", str(requests), "-c",
                             str(concurrency), url],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def ab_result(proc, timeout):
    """{complete, failed, non2xx, rps, connect_max_ms, longest_ms, rc} of a finished ab."""
    out, _ = proc.communicate(timeout=timeout)
    result = {"rc": proc.returncode}
    for key, pattern in _FIELDS.items():
        m = re.search(pattern, out or "")
        result[key] = float(m.group(1)) if m else None
    if result["complete"] is None:
        result["error"] = (out or "").strip().splitlines()[-1:] or ["no output"]
    return result


def soak(sl, rounds, requests, concurrency, report=print):
    node0 = sl.cluster.nodes[0]
    # a fixed-size body: ab counts a body whose length differs from the first one as failed
    targets = {"hairpin": (sl.cluster.pods[0].ns, "http://10.96.0.40/bytes/64"),
               "nodeport": (sl.cluster.client, f"http://{node0.ip}:30080/bytes/64")}
    before = pipeline_counters(sl, node0)
    totals = {name: {"failed": 0, "complete": 0, "bad_rounds": 0} for name in targets}
    for r in range(1, rounds + 1):
        procs = {name: start_ab(sl, ns, url, requests, concurrency)
                 for name, (ns, url) in targets.items()}
        results = {name: ab_result(proc, timeout=600) for name, proc in procs.items()}
        time.sleep(1.2)                                      # stats.json is rewritten every second
        now = pipeline_counters(sl, node0)
        delta = {k: now.get(k, 0) - before.get(k, 0) for k in WATCHED}
        parts = []
        for name, res in results.items():
            failed = (int(res["failed"] or 0) + int(res["non2xx"] or 0)
                      + (requests - int(res["complete"] or 0)))
            totals[name]["failed"] += failed
            totals[name]["complete"] += int(res["complete"] or 0)
            totals[name]["bad_rounds"] += bool(failed or res["rc"])
            parts.append(f"{name}: complete={int(res['complete'] or 0)} failed={failed} "
                         f"rps={res['rps']} connect_max_ms={res['connect_max_ms']} "
                         f"longest_ms={res['longest_ms']} rc={res['rc']}"
                         + (f" error={res['error']}" if "error" in res else ""))
        report(f"round {r}/{rounds} | " + " | ".join(parts) + " | agent node0: "
               + " ".join(f"{k.replace('XSKP_', '')}={v}" for k, v in delta.items()))
    after = pipeline_counters(sl, node0)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in WATCHED}
    report("total: " + " | ".join(f"{name}: complete={t['complete']} failed={t['failed']} "
                                  f"rounds with failures={t['bad_rounds']}"
                                  for name, t in totals.items())
           + " | agent node0: " + " ".join(f"{k.replace('XSKP_', '')}={v}" for k, v in delta.items()))
    return totals, delta


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("lab.snat_soak needs root (network namespaces, XDP, AF_XDP)")
    workdir = tempfile.mkdtemp(prefix="xskproxy-snat-soak-")
    try:
        with Lab("xsnsoak") as lab:
            sl = scenarios.ServiceLab(lab, workdir=workdir)
            sl.start_agents()
            totals, delta = soak(sl, args.rounds, args.requests, args.concurrency,
                                 report=lambda line: print(line, flush=True))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    bad = any(t["failed"] for t in totals.values()) or delta["XSKP_DROP_SNAT_EXHAUSTED"]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
