"""pyxdp and the steering program on a veth lab, driven from this process (root): sockets
receive steered frames into the UMEM view, two sockets share one UMEM, unsteered or unbound
traffic goes to the kernel, and failures name what was attempted."""
import errno
import sys
import time

import numpy as np
import pytest

from xsk_test_support import (LAB_PREFIX, OFFLOADS_OFF, in_netns, needs_native, needs_root,
                              xdp_program_id, _read_line, UDP_SINK)

pytestmark = [needs_native]


@pytest.fixture(scope="module")
def topo():
    from lab import Lab, forwarder_lab
    with Lab(LAB_PREFIX) as lab:
        yield forwarder_lab(lab, ip_forward=True, client_features=OFFLOADS_OFF, pod_features=OFFLOADS_OFF)


def _arrays(px, n=64):
    addrs, lens = np.zeros(n, np.uint64), np.zeros(n, np.uint32)
    return addrs, lens, px.ffi.from_buffer("uint64_t[]", addrs), px.ffi.from_buffer("uint32_t[]", lens)


def _receive(px, sock, want, timeout=3.0):
    addrs, lens, addrs_c, lens_c = _arrays(px)
    frames, deadline = [], time.monotonic() + timeout
    while len(frames) < want and time.monotonic() < deadline:
        n = px.lib.xskp_rx(sock.handle, addrs_c, lens_c, 64)
        frames += [(int(addrs[i]), int(lens[i])) for i in range(n)]
        if not n:
            time.sleep(0.005)
    return frames


def _fill(px, umem, sock, frames):
    addrs = umem.chunk_addresses()[frames]
    return px.lib.xskp_fill(sock.handle, px.ffi.from_buffer("uint64_t[]", addrs), len(addrs))


@needs_root
def test_socket_receives_steered_frames_into_the_umem_view(topo):
    """UDP to a steered prefix lands in the socket's rx ring, readable in place in the UMEM array;
    the copy-mode fallback is reported and the counters account for every frame."""
    from dataplane import xsk
    lab = topo.lab
    with in_netns(topo.node):
        px = xsk.pyxdp_module()
        with xsk.Umem(frame_count=256, ring_size=128) as umem, xsk.SteeringProgram() as steering:
            sock = xsk.XskSocket(umem, "tr0", 0, mode="auto")
            assert not sock.zerocopy and sock.mode_name == "copy"  # veth: zero-copy is EOPNOTSUPP
            assert steering.attach("tr0", "transport") in ("native", "skb")
            steering.bind_socket(sock)
            steering.add_prefix(topo.pod_if.network, "transport")
            assert _fill(px, umem, sock, slice(0, 128)) == 128
            lab.run(topo.client, [sys.executable, "-c",
                                  "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                                  f"for i in range(5): s.sendto(b'umem-view-%d' % i, ('{topo.pod_if.ip}', 7))"])
            frames = _receive(px, sock, 5)
            payloads = sorted(bytes(umem.frames[a + 42:a + length]) for a, length in frames)
            assert payloads == [b"umem-view-%d" % i for i in range(5)]
            assert all(a % umem.frame_size == umem.headroom + 256 for a, _ in frames)  # + XDP_PACKET_HEADROOM
            assert sock.statistics()["rx_dropped"] == 0
            assert steering.counters()["STEER_REDIRECT_PREFIX"] == 5
            assert xdp_program_id(lab, topo.node, "tr0") != 0
        assert xdp_program_id(lab, topo.node, "tr0") == 0  # close() detached it


@needs_root
def test_two_sockets_share_one_umem_and_forward_without_copy(topo):
    """A frame received on the transport socket is rewritten in place and sent by the gateway
    socket from the same UMEM chunk; the completion ring returns that chunk."""
    from dataplane import xsk
    lab = topo.lab
    sink = lab.popen(topo.pods, [sys.executable, "-c", UDP_SINK, "5002", "1", "10"])
    assert _read_line(sink, 10) == "listening"
    with in_netns(topo.node):
        px = xsk.pyxdp_module()
        with xsk.Umem(frame_count=256, ring_size=64) as umem, xsk.SteeringProgram() as steering:
            transport = xsk.XskSocket(umem, "tr0", 0)
            gateway = xsk.XskSocket(umem, "gw0", 0)
            steering.attach("tr0", "transport")
            steering.attach("gw0", "gateway")
            steering.bind_socket(transport)
            steering.bind_socket(gateway)
            steering.add_prefix(f"{topo.pod_if.ip}/32", "transport")
            _fill(px, umem, transport, slice(0, 32))
            _fill(px, umem, gateway, slice(32, 64))
            lab.run(topo.client, [sys.executable, "-c",
                                  "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                                  f".sendto(b'shared-umem', ('{topo.pod_if.ip}', 5002))"])
            [(addr, length)] = _receive(px, transport, 1)
            frame = umem.frames[addr:addr + length]
            frame[0:6] = np.frombuffer(bytes.fromhex(topo.pod_if.mac.replace(":", "")), np.uint8)
            frame[6:12] = np.frombuffer(bytes.fromhex(topo.gateway.mac.replace(":", "")), np.uint8)
            addrs, lens, addrs_c, lens_c = _arrays(px, 1)
            addrs[0], lens[0] = addr, length
            assert px.lib.xskp_tx(gateway.handle, addrs_c, lens_c, 1) == 1
            assert px.lib.xskp_kick_tx(gateway.handle) >= 1
            deadline = time.monotonic() + 2
            while px.lib.xskp_complete(gateway.handle, addrs_c, 1) == 0 and time.monotonic() < deadline:
                time.sleep(0.005)
            assert int(addrs[0]) == addr
    assert _read_line(sink, 10) == "1"
    lab.stop(sink)


@needs_root
def test_unsteered_and_unbound_traffic_goes_to_the_kernel(topo):
    """With the program attached: a ping to the node is not matched, and a steered ping with no
    socket bound falls back to XDP_PASS; both are answered by the kernel and counted."""
    from dataplane import xsk
    lab = topo.lab
    with in_netns(topo.node):
        with xsk.SteeringProgram() as steering:
            steering.attach("tr0", "transport")
            steering.add_prefix(topo.pod_if.network, "transport")
            assert lab.ping(topo.client, topo.transport.ip, count=3, timeout=1.0)
            assert lab.ping(topo.client, topo.pod_if.ip, count=3, timeout=1.0)  # ip_forward=1: the kernel forwards it
            counters = steering.counters()
    assert counters["STEER_PASS_NO_MATCH"] >= 1
    assert counters["STEER_REDIRECT_PREFIX"] >= 1
    assert counters["STEER_REDIRECT_FAILED"] == counters["STEER_REDIRECT_PREFIX"]
    assert xdp_program_id(lab, topo.node, "tr0") == 0


@needs_root
def test_binding_a_taken_queue_names_interface_and_queue(topo):
    """A second socket on a bound queue fails with EBUSY, saying which interface and queue."""
    from dataplane import xsk
    with in_netns(topo.node):
        with xsk.Umem(frame_count=64, ring_size=32) as first, xsk.Umem(frame_count=64, ring_size=32) as second:
            xsk.XskSocket(first, "gw0", 0)
            with pytest.raises(OSError) as raised:
                xsk.XskSocket(second, "gw0", 0, busy_retry_seconds=0.1)
            # the UMEM survives a failed first bind: it can still bind another queue-free socket
            xsk.XskSocket(second, "tr0", 0)
    assert raised.value.errno == errno.EBUSY
    assert "gw0 queue 0" in str(raised.value)


@needs_root
def test_missing_interface_is_reported_by_name(topo):
    """Asking for an interface that does not exist raises ENODEV naming it."""
    from dataplane import xsk
    with in_netns(topo.node):
        with xsk.Umem(frame_count=64, ring_size=32) as umem:
            with pytest.raises(OSError) as raised:
                xsk.XskSocket(umem, "nosuch0", 0)
    assert raised.value.errno == errno.ENODEV and "nosuch0" in str(raised.value)


def test_one_numba_to_pyxdp_batch_call_costs_nanoseconds():
    """A numba -> pyxdp call (no socket: the bare call) costs well under a microsecond."""
    from dataplane import forwarder
    cost = forwarder.measure_batch_call_ns(iterations=200_000)
    assert 0 < cost < 200


FOREIGN_XDP_PROGRAM = """
#include <linux/bpf.h>
__attribute__((section("xdp"), used)) int someone_elses(struct xdp_md *ctx) { return XDP_PASS; }
char _license[] __attribute__((section("license"), used)) = "GPL";
"""


@needs_root
def test_a_foreign_xdp_program_is_never_replaced(topo, tmp_path):
    """Another XDP program on the interface makes attach fail with EBUSY; it stays attached."""
    import subprocess
    from dataplane import xsk
    source, obj = tmp_path / "foreign.c", tmp_path / "foreign.o"
    source.write_text(FOREIGN_XDP_PROGRAM)
    multiarch = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True).stdout.strip()
    subprocess.run(["clang", "-O2", "-target", "bpf", f"-I/usr/include/{multiarch}", "-c", str(source),
                    "-o", str(obj)], check=True)
    lab = topo.lab
    lab.ip(topo.node, ["link", "set", "dev", "gw0", "xdpgeneric", "obj", str(obj), "sec", "xdp"])
    try:
        foreign_id = xdp_program_id(lab, topo.node, "gw0")
        assert foreign_id != 0
        with in_netns(topo.node):
            with xsk.SteeringProgram() as steering:
                with pytest.raises(OSError) as raised:
                    steering.attach("gw0", "gateway")
        assert raised.value.errno == errno.EBUSY and "gw0" in str(raised.value)
        assert xdp_program_id(lab, topo.node, "gw0") == foreign_id
    finally:
        lab.ip(topo.node, ["link", "set", "dev", "gw0", "xdpgeneric", "off"])


def test_njit_code_can_also_call_pyxdp_through_cffi():
    """After bind_native(), nopython code may call pyxdp.lib functions the cffi way too (handles
    as uint64, arrays through ffi.from_buffer); the worker loop uses cacheable declarations."""
    from numba import njit
    from dataplane import forwarder
    px = forwarder.bind_native()
    ffi, probe = px.ffi, px.lib.xskp_batch_probe

    @njit(nogil=True)
    def call_through_cffi(addrs):
        return probe(ffi.from_buffer(addrs), len(addrs))

    assert call_through_cffi(np.zeros(7, np.uint64)) == 7


def test_an_idle_poll_wakes_on_its_eventfd_and_drains_it():
    """The worker's idle poll() also waits on an eventfd that asking the loop to return writes:
    a written eventfd ends the poll at once (else 10 s here), and is drained so that the next
    poll sleeps again (then 0 ms: nothing ready)."""
    import os
    import pyxdp as px
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        os.eventfd_write(fd, 1)
        assert px.lib.xskp_poll_rx(0, 0, fd, 10_000) == 1
        assert px.lib.xskp_poll_rx(0, 0, fd, 0) == 0
        with pytest.raises(BlockingIOError):
            os.eventfd_read(fd)
        assert px.lib.xskp_poll_rx(0, 0, -1, 0) == 0
    finally:
        os.close(fd)
