"""Shared pieces of the pyxdp/forwarder tests: skip marks, entering a lab namespace from this
thread, starting `python -m dataplane.forwarder` in a lab and reading what it reports."""
import ctypes
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAB_PREFIX = "xa"
# TCP through AF_XDP on veth: the senders' checksum offload and segmentation stay off, or frames
# arrive with a partial checksum or as 64 KB GSO frames a 4 KB UMEM chunk cannot hold (FINDINGS).
# The forwarder does not manage offloads yet (issue 4 decides); these tests switch them off.
OFFLOADS_OFF = dict(tx=False, tso=False, gso=False)
# Positive pings send up to 3 echoes: the per-CPU backlog that veth feeds is shared with every
# namespace on the machine, and another run flooding the same CPU can drop a single frame.
CLONE_NEWNET = 0x40000000


def native_missing_reason():
    try:
        import pyxdp  # noqa: F401
    except ImportError as exc:
        return f"pyxdp is not built ({exc}): run `make build`"
    from dataplane import xsk
    try:
        xsk.bpf_object_path()
    except xsk.NativeMissingError as exc:
        return str(exc)
    return None


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="AF_XDP, XDP and network namespaces need root")
needs_native = pytest.mark.skipif(native_missing_reason() is not None,
                                  reason=native_missing_reason() or "")

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def in_netns(ns):
    """Run the body with this thread inside lab namespace `ns` (sockets, netlink, XDP attach);
    the thread returns to its own namespace afterwards, also on failure."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


def xdp_program_id(lab, ns, ifname):
    """Id of the XDP program attached to ifname in ns, 0 when none."""
    info = json.loads(lab.ip(ns, ["-j", "link", "show", "dev", ifname]))[0]
    xdp = info.get("xdp") or {}
    if "prog" in xdp:
        return xdp["prog"].get("id", 0)
    attached = xdp.get("attached") or []
    return attached[0].get("prog", {}).get("id", 0) if attached else 0


def forwarder_argv(topo, *extra):
    """The forwarder between the lab's transport and gateway, steering the Pod network on the
    transport and the client network on the gateway (but never the node's own addresses)."""
    return [sys.executable, "-m", "dataplane.forwarder",
            "--transport", "tr0", "--gateway", "gw0",
            "--transport-peer-mac", topo.client_if.mac, "--gateway-peer-mac", topo.pod_if.mac,
            "--steer-prefix", f"{topo.pod_if.network}@transport",
            "--steer-prefix", f"{topo.gateway.ip}/32@transport",
            "--steer-prefix", f"{topo.client_if.network}@gateway",
            "--steer-prefix", f"{topo.transport.ip}/32@gateway", *extra]


class ForwarderProcess:
    """A running `python -m dataplane.forwarder` in the lab's node namespace."""

    def __init__(self, lab, topo, stats_file, *extra, ready_timeout=120):
        self.lab, self.stats_file = lab, stats_file
        self.proc = lab.popen(topo.node, forwarder_argv(topo, "--stats-file", stats_file,
                                                        "--stats-interval", "0.2", *extra), cwd=REPO)
        self.ready_line = _read_line(self.proc, ready_timeout)
        if not self.ready_line.startswith("forwarder: ready"):
            result = lab.stop(self.proc)
            raise AssertionError(f"forwarder did not start: {self.ready_line!r} {result.stderr}")

    @property
    def pid(self):
        return self.proc.pid

    def stats(self, settle=0.5):
        """The counters it last wrote (waits `settle` seconds for a fresh write first)."""
        time.sleep(settle)
        with open(self.stats_file) as f:
            return json.load(f)

    def stop(self):
        """SIGTERM, wait; returns (exit code, final stats from stdout, stderr)."""
        result = self.lab.stop(self.proc, timeout=10)
        lines = (result.stdout or "").strip().splitlines()
        final = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None
        return result.returncode, final, result.stderr


def _read_line(proc, timeout):
    box = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0].strip() if box else ""


UDP_SINK = r"""
import socket, sys, time
port, want, timeout = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", port))
s.settimeout(0.2)
print("listening", flush=True)
got, deadline = 0, time.monotonic() + timeout
while got < want and time.monotonic() < deadline:
    try:
        s.recv(2048)
        got += 1
    except socket.timeout:
        pass
print(got, flush=True)
"""

UDP_SOURCE = r"""
import socket, sys, time
address, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(count):
    s.sendto(b"xskproxy-%06d" % i, (address, port))
    if i % 50 == 49:
        time.sleep(0.01)
"""


def udp_exchange(lab, src_ns, dst_ns, dst_ip, count, port=5001, timeout=10.0):
    """Send `count` datagrams from src_ns to dst_ip:port; returns how many the sink in dst_ns got."""
    sink = lab.popen(dst_ns, [sys.executable, "-c", UDP_SINK, str(port), str(count), str(timeout)])
    assert _read_line(sink, 10) == "listening"
    lab.run(src_ns, [sys.executable, "-c", UDP_SOURCE, dst_ip, str(port), str(count)])
    out = _read_line(sink, timeout + 5)
    lab.stop(sink)
    return int(out) if out.isdigit() else -1


def iperf3_tcp(lab, client_ns, server_ns, server_ip, seconds=2):
    """One iperf3 TCP run; returns (bytes received, retransmits)."""
    server = lab.popen(server_ns, ["iperf3", "-s", "-1"])
    time.sleep(0.3)
    try:
        proc = lab.run(client_ns, ["iperf3", "-c", server_ip, "-t", str(seconds), "-J"], check=False,
                       timeout=seconds + 20)
    except subprocess.TimeoutExpired:
        return 0, None
    finally:
        lab.stop(server)
    try:
        end = json.loads(proc.stdout)["end"]
    except (ValueError, KeyError):
        return 0, None
    return end["sum_received"]["bytes"], end["sum_sent"].get("retransmits")
