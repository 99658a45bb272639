"""Runs the path x workload matrix on one lab, interleaving paths across runs, and writes the report.

`python -m bench.run [--quick]`. Never asserts a speed: what it measured goes to bench/results/.
"""
import argparse
import os
import platform
import statistics
import sys
import time

from bench import report
from bench.measure import GATEWAYS, QUICK_WORKLOADS, WORKLOADS, BenchLab, unavailable_reason
from bench.paths import all_paths

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# FULL: every path on the veth lab, (f) with the agent's default and, at the smallest N only, with
# flowOffload false (UDP established and TCP bulk); the Service paths' TCP bulk also on the bridge-gateway
# lab (the Pod-to-Pod rows there only when asked for: --paths hi)
FULL = dict(service_counts=(10, 1000, 10000), runs=3, seconds=3.0, tcp_seconds=2, warmup=0.5, workloads=WORKLOADS,
            latency_seconds=5, rr_seconds=3, agent_flow_offload=(None, False), gateways=GATEWAYS, bridge_paths="bcf")
QUICK = dict(service_counts=(10,), runs=1, seconds=1.0, tcp_seconds=1, warmup=0.3, workloads=QUICK_WORKLOADS,
             latency_seconds=1, rr_seconds=1, agent_flow_offload=(None,), gateways=GATEWAYS, bridge_paths="bcfhi")
# request/response figures kept per sample next to the headline `rate` (sockperf, wrk)
LATENCY_KEYS = ("p50_us", "p99_us", "p999_us", "avg_us")


def _summary(all_samples):
    """Medians/min/max over the clean samples (other processes < 5% of either core) when there are
    any, else over all samples, flagged `under_load`."""
    clean = [s for s in all_samples if s.get("clean")]
    samples = clean or all_samples

    def stats(key, sub=None):
        values = [s[key].get(sub) if sub else s.get(key) for s in samples]
        values = [v for v in values if v is not None]
        if not values:
            return None
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}
    errors = [s["error"] for s in samples if s.get("error")]
    return {"rate": stats("rate"), "pps": stats("pps"), "offered_pps": stats("offered_pps"),
            **{key: stats(key) for key in LATENCY_KEYS}, "forwarded": stats("forwarded"),
            "gbit_s": stats("gbit_s"), "retransmits": stats("retransmits"), "errors": errors,
            "path_ms_per_gb": stats("path_cpu", "ms_per_gb"), "path_own_ms_per_gb": stats("path_cpu", "own_ms_per_gb"),
            "path_ns_per_packet": stats("path_cpu", "ns_per_packet"),
            "path_cpu_utilisation": stats("path_cpu", "utilisation"),
            "path_own_ns_per_packet": stats("path_cpu", "own_ns_per_packet"),
            "path_cpu_user_share": stats("path_cpu", "user_share"),
            "path_cpu_softirq_share": stats("path_cpu", "softirq_share"),
            "generator_ns_per_packet": stats("generator_cpu", "ns_per_packet"),
            "generator_cpu_utilisation": stats("generator_cpu", "utilisation"),
            "runs": len(all_samples), "clean_runs": len(clean),
            "under_load": bool(all_samples) and not clean and all_samples[0].get("clean") is not None,
            "samples": all_samples}


def machine_description():
    with open("/proc/loadavg") as f:
        loadavg = f.read().split()[:3]
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "loadavg_at_start": loadavg,
            "python": platform.python_version()}


def row_workloads(row, workloads, service_counts):
    """The workloads of `workloads` the row carries (Path.carries: Pod-to-Pod ones on Pod-to-Pod rows only,
    TCP bulk only on the bridge lab). Established TCP connections (iperf3, sockperf, wrk) skip the NAT
    rules: rows per Service count get them at the smallest N only; new flows and new connections (UDP,
    ab) at every N."""
    workloads = [w for w in workloads if row.carries(w)]
    if row.per_service_count and row.services != min(service_counts):
        return [w for w in workloads if w.every_service_count]
    return workloads


def select_rows(service_counts, agent_flow_offload, gateways, workloads, only=None, bridge_paths="bcf"):
    """[(gateway, rows)] of the labs that have rows: every path of all_paths() for each gateway, kept when
    its key is in `only` (or, without `only`, on the bridge lab in `bridge_paths`) and it carries one of
    `workloads`."""
    def wanted(row):
        keys = only or (bridge_paths if row.gateway == "bridge" else None)
        return bool((not keys or row.key in keys) and row_workloads(row, workloads, service_counts))
    labs = [(gateway, [r for r in all_paths(service_counts, agent_flow_offload, gateway) if wanted(r)])
            for gateway in gateways]
    return [(gateway, rows) for gateway, rows in labs if rows]


def measurement_seconds(workload, seconds, tcp_seconds, latency_seconds, rr_seconds):
    """How long one measurement of `workload` runs."""
    if workload.tool == "sockperf":
        return latency_seconds
    if workload.request_response:
        return rr_seconds
    return tcp_seconds if workload.proto == "tcp" else seconds


def describe_sample(workload, m):
    """One log line's worth of what a measurement saw."""
    cpu = m["path_cpu"]
    if workload.tool == "sockperf":
        what = (f"round trip p50 {m.get('p50_us') or 0:.1f} us, p99 {m.get('p99_us') or 0:.1f} us "
                f"({m['forwarded']} round trips")
    elif workload.request_response:
        what = f"{m.get('rate') or 0:8.0f} {workload.unit} ({m['forwarded']} completed"
    elif workload.proto == "udp":
        what = f"{m['pps'] / 1e3:8.1f} kpps forwarded (offered {m['offered_pps'] / 1e3:.0f} k"
    else:
        what = f"{m['gbit_s']:6.2f} Gbit/s ({m['retransmits']} retransmits"
    what += f", {m['error']}" if m.get("error") else ""
    own = cpu.get("own_ns_per_packet")
    what += f", own {own:.0f} ns/{'pkt' if workload.proto == 'udp' else 'transaction'}" if own else ""
    what += "" if m.get("clean", True) else f", noise {m['noise_share'] * 100:.0f}%"
    return (f"{what}, path core {cpu['utilisation'] * 100:.0f}% busy: "
            f"user {cpu['user_share'] * 100:.0f}%, softirq {cpu['softirq_share'] * 100:.0f}%)")


def counter_delta(before, after):
    """after - before per counter name, leaving out counters that did not move."""
    if before is None or after is None:
        return None
    return {name: after[name] - before.get(name, 0) for name in sorted(after) if after[name] != before.get(name, 0)}


def run_matrix(service_counts, runs, seconds, warmup, tcp_seconds=2, workloads=WORKLOADS, only=None,
               out_dir=RESULTS_DIR, quick=False, rx_mode="rps", lab_prefix="xlb", log=print,
               latency_seconds=5, rr_seconds=3, agent_flow_offload=(None,), only_workloads=None,
               gateways=("veth",), bridge_paths="bcf"):
    """Measure every path row on every workload `runs` times, A B .. B A interleaved; write the report.

    `only`: path keys to keep (e.g. "abg"); `only_workloads`: workload keys to keep; `lab_prefix`: the
    namespaces' name prefix; `agent_flow_offload`: one (f) row set per agent flowOffload setting (None:
    the agent's default; the first setting at every N, the others at the smallest N); `gateways`: the
    labs, one after the other ("veth": gw0 a veth to the Pod; "bridge": gw0 a Linux bridge, its rows
    TCP only); `bridge_paths`: the path keys the bridge lab runs when `only` does not say.
    Returns the results dict (also in latest.json)."""
    started = time.time()
    workloads = [w for w in workloads if not only_workloads or w.key in only_workloads]
    labs = select_rows(service_counts, agent_flow_offload, gateways, workloads, only, bridge_paths)
    results = {"meta": {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                        "quick": quick, "runs": runs, "seconds_per_measurement": seconds,
                        "tcp_seconds_per_measurement": tcp_seconds,
                        "latency_seconds_per_measurement": latency_seconds,
                        "request_response_seconds_per_measurement": rr_seconds,
                        "warmup_seconds": warmup, "service_counts": list(service_counts),
                        "gateways": [gateway for gateway, _ in labs],
                        "generator_cpu": 0, "path_cpu": 1, "rx_mode": rx_mode, **machine_description()},
               "workloads": [{"key": w.key, "name": w.name, "unit": w.unit, "tool": w.tool,
                              "request_response": w.request_response, "pod_to_pod": w.pod_to_pod}
                             for w in workloads],
               "rows": []}
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(f"benchmark cannot run: {reason}")
    for gateway, rows in labs:
        lab_started = time.monotonic()
        log(f"lab with a {gateway} gateway: {len(rows)} rows")
        results["rows"] += run_lab(rows, gateway, service_counts, runs, seconds, warmup, tcp_seconds, workloads,
                                   rx_mode, lab_prefix, log, latency_seconds, rr_seconds)
        results["meta"][f"{gateway}_lab_seconds"] = time.monotonic() - lab_started
    results["meta"]["duration_seconds"] = time.time() - started
    results["batch_call"] = report.batch_call_cost()
    results["pod_to_pod"] = report.pod_to_pod_comparison(results)
    report.write_all(results, out_dir)
    return results


def run_lab(rows, gateway, service_counts, runs, seconds, warmup, tcp_seconds, workloads, rx_mode, lab_prefix,
            log, latency_seconds, rr_seconds):
    """Every row of one lab (BenchLab with `gateway`) `runs` times, interleaved; returns their result rows."""
    samples = {r.row_id: {w.key: [] for w in workloads} for r in rows}
    errors = {}
    unsupported = {r.row_id: {w.key: r.unsupported(w) for w in row_workloads(r, workloads, service_counts)
                              if r.unsupported(w)} for r in rows}
    with BenchLab(prefix=lab_prefix, gen_cpu=0, path_cpu=1, rx_mode=rx_mode, gateway=gateway) as bench:
        unavailable = {r.row_id: r.unavailable(bench) for r in rows}
        for row in rows:
            if unavailable[row.row_id]:
                log(f"skip {row.label}: {unavailable[row.row_id]}")
        for run in range(runs):
            for row in (rows if run % 2 == 0 else list(reversed(rows))):
                if unavailable[row.row_id] or row.row_id in errors:
                    continue
                log(f"run {run + 1}/{runs}: {row.label}")
                bench.set_ip_forward(row.kernel_forwards)
                bench.flush_conntrack()
                try:
                    setup_started = time.monotonic()
                    row.setup(bench)
                    row.attach = bench.attach_modes()
                    log(f"  set up in {time.monotonic() - setup_started:.1f} s; "
                        f"attached: {describe_attach(row.attach)}")
                    bench.pin_rx()
                    for workload in row_workloads(row, workloads, service_counts):
                        if workload.key in unsupported[row.row_id]:
                            if run == 0:
                                log(f"  {workload.key}: not supported: {unsupported[row.row_id][workload.key]}")
                            continue
                        dst_ip, dst_port = row.target(bench, workload.proto)
                        if warmup and workload.proto == "udp":
                            bench.generate(dst_ip, dst_port, workload, warmup)
                        if workload.new_flows:
                            bench.flush_conntrack()
                        counters0 = row.path_counters(bench, newer_than=time.time())
                        duration = measurement_seconds(workload, seconds, tcp_seconds, latency_seconds, rr_seconds)
                        m = bench.measure(dst_ip, dst_port, workload, duration, row.worker_pid())
                        m["path_counters"] = counter_delta(counters0, row.path_counters(bench, newer_than=time.time()))
                        samples[row.row_id][workload.key].append(m)
                        log(f"  {workload.key}: {describe_sample(workload, m)}")
                        if m["path_counters"] is not None:
                            log("    counters: " + " ".join(f"{k}={v}" for k, v in m["path_counters"].items()))
                except Exception as e:  # a broken path is reported, the others still run
                    errors[row.row_id] = f"{type(e).__name__}: {e}"
                    log(f"  error: {errors[row.row_id]}")
                finally:
                    row.teardown(bench)
                    bench.flush_conntrack()
                    bench.start_sink()
    return [{**row.describe(), "unavailable": unavailable.get(row.row_id), "error": errors.get(row.row_id),
             "unsupported": unsupported[row.row_id],
             "workloads": [w.key for w in row_workloads(row, workloads, service_counts)],
             "cells": {w.key: _summary(samples[row.row_id][w.key]) for w in workloads
                       if samples[row.row_id][w.key]}}
            for row in rows]


def describe_attach(attach):
    """One line for the log: 'XDP skb on tr0, gw0; tc on tr0, gw0', or 'nothing'."""
    return report.attach_text(attach) or "nothing"


def main(argv=None):
    parser = argparse.ArgumentParser(description="xskproxy forwarding benchmark: kernel paths vs AF_XDP paths")
    parser.add_argument("--quick", action="store_true", help="one short run, N=10 only (what make test runs)")
    parser.add_argument("--runs", type=int)
    parser.add_argument("--seconds", type=float, help="seconds per measurement")
    parser.add_argument("--latency-seconds", type=float, help="seconds per sockperf ping-pong measurement")
    parser.add_argument("--rr-seconds", type=float, help="seconds per wrk / ab measurement")
    parser.add_argument("--workloads", help="comma-separated workload keys to run (default: all)")
    parser.add_argument("--flow-offload",
                        help="comma-separated agent flowOffload settings, one (f) row set each, the first at "
                             "every N, the others at the smallest N: default (left out of the config), true, "
                             "false (default: default,false; --quick: default)")
    parser.add_argument("--gateways", help="comma-separated labs: veth (gw0 a veth to the Pod), bridge (gw0 a Linux "
                                           "bridge, TCP rows only) (default: both; --quick: both)")
    parser.add_argument("--services", help="comma-separated Service counts for (b) and (c)")
    parser.add_argument("--paths", help="path keys to run, e.g. abg (default: all)")
    parser.add_argument("--rx-mode", choices=BenchLab.RX_MODES, default="rps",
                        help="rps: transport NAPI on the generator core, RPS to the path core (default); "
                             "napi: transport NAPI threaded on the path core")
    parser.add_argument("--lab-prefix", default="xlb", help="name prefix of the lab's namespaces (default xlb)")
    parser.add_argument("--out", default=RESULTS_DIR)
    args = parser.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.runs:
        cfg["runs"] = args.runs
    if args.seconds:
        cfg["seconds"] = args.seconds
    if args.latency_seconds:
        cfg["latency_seconds"] = args.latency_seconds
    if args.rr_seconds:
        cfg["rr_seconds"] = args.rr_seconds
    if args.gateways:
        for word in args.gateways.split(","):
            if word not in GATEWAYS:
                parser.error(f"--gateways: {word!r} is not one of {', '.join(GATEWAYS)}")
        cfg["gateways"] = tuple(args.gateways.split(","))
    if args.services:
        cfg["service_counts"] = tuple(int(n) for n in args.services.split(","))
    settings = {"default": None, "true": True, "false": False}
    if args.flow_offload:
        flow_offload = []
        for word in args.flow_offload.split(","):
            if word not in settings:
                parser.error(f"--flow-offload: {word!r} is not one of {', '.join(settings)}")
            flow_offload.append(settings[word])
        cfg["agent_flow_offload"] = tuple(flow_offload)
    results = run_matrix(**cfg, only=args.paths, out_dir=args.out, quick=args.quick, rx_mode=args.rx_mode,
                         lab_prefix=args.lab_prefix,
                         only_workloads=args.workloads.split(",") if args.workloads else None)
    print(report.markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
