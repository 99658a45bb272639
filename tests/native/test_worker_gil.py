"""The packet worker keeps forwarding while another thread of its process holds the GIL for
seconds (root): what the agent's control thread does inside a C parser or a long translation.
The worker's njit loop must not need the GIL between batches, only when it is handed new state."""
import subprocess
import sys
import time

import pytest

from xsk_test_support import (LAB_PREFIX, OFFLOADS_OFF, REPO, UDP_SINK, UDP_SOURCE, _read_line,
                              forwarder_argv, needs_native, needs_root, udp_exchange)

pytestmark = [needs_root, needs_native]

# `python -m dataplane.forwarder`, plus a thread that, on a line from stdin, holds the GIL in one
# C call (sum over a range never gives it up) for the seconds the line says.
FORWARDER_WITH_GIL_HOLDER = r"""
import sys, threading, time
from dataplane import forwarder

def hold_the_gil():
    seconds = float(sys.stdin.readline())
    probe = 2_000_000
    started = time.monotonic(); sum(range(probe)); per_item = (time.monotonic() - started) / probe
    print(f"holding {time.monotonic()}", flush=True)
    sum(range(int(seconds / per_item)))
    print(f"released {time.monotonic()}", flush=True)

threading.Thread(target=hold_the_gil, daemon=True).start()
sys.exit(forwarder.main(sys.argv[1:]))
"""
DATAGRAMS = 8000        # ~1.6 s at the source's pace: four times what the rx and fill rings hold
HOLD_SECONDS = 5.0


def test_the_worker_forwards_while_another_thread_holds_the_gil():
    """Datagrams client -> Pod through the forwarder while its process's other thread holds the
    GIL: all of them arrive (a worker that must take the GIL between batches stalls, its rx ring
    fills, and the rest are lost)."""
    from lab import Lab, forwarder_lab
    with Lab(LAB_PREFIX) as lab:
        topo = forwarder_lab(lab, ip_forward=False, client_features=OFFLOADS_OFF, pod_features=OFFLOADS_OFF)
        argv = forwarder_argv(topo)
        proc = lab.popen(topo.node, [sys.executable, "-c", FORWARDER_WITH_GIL_HOLDER, *argv[3:]],
                         cwd=REPO, stdin=subprocess.PIPE)
        ready = _read_line(proc, 120)
        assert ready.startswith("forwarder: ready"), (ready, lab.stop(proc).stderr)
        assert udp_exchange(lab, topo.client, topo.pods, topo.pod_if.ip, 200, port=5001) >= 190

        proc.stdin.write(f"{HOLD_SECONDS}\n")
        proc.stdin.flush()
        holding = _read_line(proc, 30)
        assert holding.startswith("holding"), holding
        dropped_before = lab.link_stats(topo.pods, "eth0")["rx_dropped"]
        sink = lab.popen(topo.pods, [sys.executable, "-c", UDP_SINK, "5002", str(DATAGRAMS), str(HOLD_SECONDS)])
        assert _read_line(sink, 10) == "listening"
        lab.run(topo.client, [sys.executable, "-c", UDP_SOURCE, topo.pod_if.ip, "5002", str(DATAGRAMS)])
        sent_by = time.monotonic()
        released = _read_line(proc, 30)
        received = int(_read_line(sink, HOLD_SECONDS + 5) or -1)
        dropped = lab.link_stats(topo.pods, "eth0")["rx_dropped"] - dropped_before
        lab.stop(proc)
    assert released.startswith("released"), released
    assert sent_by < float(released.split()[1]), "the GIL was released before the last datagram was sent"
    # the Pod's veth may drop on a full per-CPU backlog (counted there), never the worker
    assert received + dropped >= DATAGRAMS and received >= 0.9 * DATAGRAMS, (received, dropped)
