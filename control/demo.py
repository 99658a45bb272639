"""`xskproxy demo` (what `make demo` runs): a two-node lab, one agent per node, every Service
scenario with real clients, the agents' lifetime scenarios (lab/lifecycle.py), then cross-node
throughput through xskproxy and through the kernel.

Everything it builds lives in network namespaces with a per-run prefix and is torn down at the
end, on failure and on Ctrl-C too.
"""
import json
import os
import shutil
import sys
import tempfile
import time

from lab import lifecycle, scenarios
from lab.netns import Lab

IPERF_SECONDS = 3


def say(text):
    print(text, flush=True)


def iperf_gbits(sl, client_pod, server_pod, seconds=IPERF_SECONDS):
    """TCP throughput (Gbit/s) from client_pod to server_pod, one stream, or None on failure."""
    server = sl.lab.popen(server_pod.ns, ["iperf3", "-s", "-1", "-p", "5301"])
    time.sleep(0.3)
    try:
        proc = sl.lab.run(client_pod.ns, ["iperf3", "-c", server_pod.iface.ip, "-p", "5301", "-t", str(seconds),
                                          "-J"], check=False, timeout=seconds + 20)
        if proc.returncode != 0:
            return None
        end = json.loads(proc.stdout)["end"]
        return end["sum_received"]["bits_per_second"] / 1e9
    finally:
        sl.lab.stop(server)


def main():
    """Every scenario runs, whatever the ones before it did: a failed row never hides the rows
    after it (run_scenarios restarts an agent a failed scenario left stopped)."""
    if os.geteuid() != 0:
        say("xskproxy demo: needs root (network namespaces, XDP, AF_XDP): run it as root")
        return 1
    workdir = tempfile.mkdtemp(prefix="xskproxy-demo-")
    say("xskproxy demo: building a two-node noEncap lab in network namespaces "
        "(2 nodes x 2 Pods, an external client, kube-proxy-style iptables rules as the fail-open path)")
    ok = False
    try:
        with Lab("xdemo") as lab:
            sl = scenarios.ServiceLab(lab, workdir=workdir)
            say(f"  manifests: {sl.manifest_dir}/lab.yaml; agent logs and state: {workdir}")
            say("starting one `xskproxy run` per node (first start compiles the numba kernels; later starts use the cache)")
            started = time.monotonic()
            sl.start_agents()
            say(f"  agents up in {time.monotonic() - started:.1f}s")
            say("running the Service scenarios with curl and UDP clients:")
            results = scenarios.run_scenarios(sl, scenarios.SCENARIOS, report=say)
            say("the agents' lifetime: netfilter bypass, kill -9, restart (handover), endpoint churn "
                "under load, proxyLoadBalancerIPs=false (about a minute):")
            results += scenarios.run_scenarios(sl, lifecycle.SCENARIOS, report=say)
            passed = sum(r.ok for r in results)

            say("cross-node Pod-to-Pod TCP (iperf3, one stream) through xskproxy, then through the kernel:")
            a, b = sl.cluster.nodes[0].pods[0], sl.cluster.nodes[1].pods[0]
            through_xsk = iperf_gbits(sl, a, b)
            for node in sl.cluster.nodes:
                if node.name in sl.agents:          # a failed scenario may have left one stopped
                    sl.stop_agent(node)
            through_kernel = iperf_gbits(sl, a, b)
            fmt = lambda v: f"{v:.2f} Gbit/s" if v is not None else "failed"
            say(f"  xskproxy: {fmt(through_xsk)}   kernel (routing + netfilter): {fmt(through_kernel)}")
            if through_xsk and through_kernel:
                say(f"  ratio xskproxy/kernel: {through_xsk / through_kernel:.2f} "
                    "(the tc fast path routes Pod-CIDR traffic past netfilter; bench/README.md has the full comparison)")
            say("")
            say("| scenario | result |")
            say("|---|---|")
            for r in results:
                say(f"| {r.name} | {'PASS' if r.ok else 'FAIL'} |")
            say(f"\n{passed}/{len(results)} scenarios passed; tearing the lab down")
            ok = passed == len(results)
    finally:
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            say(f"agent logs and manifests kept in {workdir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
