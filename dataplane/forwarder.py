"""The worker loop: one numba nogil loop per queue pair moving frames between the transport and
gateway AF_XDP sockets of one shared UMEM, calling pyxdp's batch functions directly; plus the
first per-batch step (an L2 forwarder) and `python -m dataplane.forwarder`.

The loop never raises and never allocates per packet: it counts (worker counters, per
interface, enum xskp_worker_counter) and recycles. It needs the GIL only when it returns to
Python, which it does when asked (Worker.set_state, Worker.stop set a flag it reads every
pass): a control thread holding the GIL for seconds does not stop the packets.

Per-batch step contract (the full pipeline, dataplane/pipeline.py, takes the same shape):
    process_batch(umem, addrs, lens, n, ingress_iface, state, counters, verdicts_out, now)
reads and rewrites frames umem[addrs[i]:addrs[i] + lens[i]] in place (it may move addrs[i]
into the frame's headroom and change lens[i]), counts into counters (uint64[XSKP_COUNTER_SLOTS]),
and writes one enum xskp_verdict per frame. The loop picks the step from the type of `state`:
(macs,) runs process_batch_l2, (ServiceTables, FlowTables) runs dataplane/pipeline.py.

Offloads: the forwarder does not touch interface offloads. On veth, TCP senders need checksum
offload and segmentation off (ethtool -K IF tx off tso off gso off) or their frames arrive with a
partial checksum (the L2 step forwards it as is; the pipeline completes it) or as GSO frames
larger than a UMEM chunk (lost). The tests switch them off on the client and the Pod.
"""
import argparse
import errno
import json
import os
import signal
import sys
import threading
from collections import namedtuple

import llvmlite.binding as llvm
import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from dataplane import abi
from dataplane._jit import packet_njit
from dataplane import xsk
from dataplane.pipeline import process_batch as _pipeline_process_batch
from dataplane._fastpath import fast_path_step as _fast_path_step, grant_upcall_credit as _grant_upcall_credit

# ---- pyxdp's hot-path functions, as numba sees them ----------------------------------------
# Declared by symbol name (resolved to pyxdp's addresses by bind_native()), so that numba can
# cache the compiled loop: cffi function objects embed addresses and disable numba's cache.
# Handles are uint64 (struct pointers); arrays are passed as data pointers (array_data_ptr).
_u64, _u32, _i32, _ptr = types.uint64, types.uint32, types.int32, types.voidptr
xskp_fill = types.ExternalFunction("xskp_fill", _u32(_u64, _ptr, _u32))
xskp_fill_free = types.ExternalFunction("xskp_fill_free", _u32(_u64, _u32))
xskp_rx = types.ExternalFunction("xskp_rx", _u32(_u64, _ptr, _ptr, _u32))
xskp_tx = types.ExternalFunction("xskp_tx", _u32(_u64, _ptr, _ptr, _u32))
xskp_complete = types.ExternalFunction("xskp_complete", _u32(_u64, _ptr, _u32))
xskp_rx_room = types.ExternalFunction("xskp_rx_room", _u32(_u64))
xskp_kick_tx = types.ExternalFunction("xskp_kick_tx", _i32(_u64))
xskp_wakeup_rx = types.ExternalFunction("xskp_wakeup_rx", _i32(_u64))
xskp_poll_rx = types.ExternalFunction("xskp_poll_rx", _i32(_u64, _u64, _i32, _i32))
xskp_now_ns = types.ExternalFunction("xskp_now_ns", _u64())
xskp_batch_probe = types.ExternalFunction("xskp_batch_probe", _u32(_ptr, _u32))
_HOT_PATH_SYMBOLS = ("xskp_fill", "xskp_fill_free", "xskp_rx", "xskp_tx", "xskp_complete", "xskp_rx_room",
                     "xskp_kick_tx", "xskp_wakeup_rx", "xskp_poll_rx", "xskp_now_ns",
                     "xskp_batch_probe")
_native_bound = False


def bind_native():
    """Load pyxdp and make its hot-path symbols known to numba (also registers the cffi module
    with numba, for code that prefers calling pyxdp.lib.* from njit). Returns the module."""
    global _native_bound
    px = xsk.pyxdp_module()
    if not _native_bound:
        from numba.core.typing import cffi_utils
        cffi_utils.register_module(px)
        for name in _HOT_PATH_SYMBOLS:
            llvm.add_symbol(name, int(px.ffi.cast("uintptr_t", px.ffi.addressof(px.lib, name))))
        _native_bound = True
    return px


@intrinsic
def array_data_ptr(typingctx, array):
    """The data pointer of a C-contiguous array, as a void * argument for pyxdp functions."""
    def codegen(context, builder, signature, args):
        data = context.make_array(array)(context, builder, args[0]).data
        return builder.bitcast(data, cgutils.voidptr_t)
    return types.voidptr(array), codegen


# ---- constants from the header --------------------------------------------------------------
IFACE_TRANSPORT = abi.lib.XSKP_IFACE_TRANSPORT
IFACE_GATEWAY = abi.lib.XSKP_IFACE_GATEWAY
IFACE_MAX = abi.lib.XSKP_IFACE_MAX
BATCH = abi.lib.XSKP_BATCH_MAX
_V_DROP = abi.lib.XSKP_VERDICT_DROP
_V_TX_TRANSPORT = abi.lib.XSKP_VERDICT_TX_TRANSPORT
_V_TX_GATEWAY = abi.lib.XSKP_VERDICT_TX_GATEWAY
_WC_RX = abi.lib.XSKP_WC_RX_FRAMES
_WC_TX = abi.lib.XSKP_WC_TX_FRAMES
_WC_COMPLETED = abi.lib.XSKP_WC_TX_COMPLETED
_WC_DROPPED = abi.lib.XSKP_WC_DROPPED
_WC_TX_RING_FULL = abi.lib.XSKP_WC_TX_RING_FULL
_WC_KICKS = abi.lib.XSKP_WC_TX_KICKS
_WC_KICK_ERRORS = abi.lib.XSKP_WC_TX_KICK_ERRORS
_WC_FILL_SHORT = abi.lib.XSKP_WC_FILL_SHORT
_WC_RX_WAKEUPS = abi.lib.XSKP_WC_RX_WAKEUPS
_WC_EMPTY_POLLS = abi.lib.XSKP_WC_EMPTY_POLLS
_WC_IDLE_SLEEPS = abi.lib.XSKP_WC_IDLE_SLEEPS
_WC_NO_ROOM = abi.lib.XSKP_WC_NO_ROOM
_DROP_TRUNCATED = abi.lib.XSKP_DROP_TRUNCATED
_DROP_TTL_EXCEEDED = abi.lib.XSKP_DROP_TTL_EXCEEDED
_DROP_UNSUPPORTED = abi.lib.XSKP_DROP_UNSUPPORTED
_CNT_TX_TRANSPORT = abi.lib.XSKP_CNT_TX_TRANSPORT
_CNT_TX_GATEWAY = abi.lib.XSKP_CNT_TX_GATEWAY
WORKER_COUNTER_NAMES = sorted(abi.enum_members("XSKP_WC_").keys() - {"XSKP_WC_MAX"},
                              key=lambda name: getattr(abi.lib, name))
_EAGAIN_RESULT = -errno.EAGAIN
_KICK_MAX_RETRIES = abi.lib.XSKP_KICK_MAX_RETRIES
IDLE_SPIN_NS = 200_000  # keep polling the rings this long after the last frame, then sleep
IDLE_POLL_MS = 100       # longest poll() sleep of an idle worker (10 wakes a second: the sweep
                         # catches up by time); asking it to return wakes it at once (LC_WAKE_FD)
UNTIL_ASKED = 1 << 62    # a worker's slice: until its loop_control asks it to return
# loop_control[]: a worker's words shared between Python and its loop
LC_RETURN = 0            # set by Python: return at the end of this pass (new state, stop)
LC_PASS_AT = 1           # set by the loop: xskp_now_ns() of its latest pass (a sign of life)
LC_WAKE_FD = 2           # set by Python: an eventfd that wakes the loop's idle poll(), or -1


# ---- the first per-batch step: an L2 forwarder ---------------------------------------------
def make_l2_state(transport_peer_mac, transport_own_mac, gateway_peer_mac, gateway_own_mac):
    """State of process_batch_l2: per egress interface, [destination MAC | source MAC]."""
    macs = np.zeros((IFACE_MAX, 12), np.uint8)
    for iface, peer, own in ((IFACE_TRANSPORT, transport_peer_mac, transport_own_mac),
                             (IFACE_GATEWAY, gateway_peer_mac, gateway_own_mac)):
        macs[iface, :6] = np.frombuffer(bytes.fromhex(peer.replace(":", "")), np.uint8)
        macs[iface, 6:] = np.frombuffer(bytes.fromhex(own.replace(":", "")), np.uint8)
    return (macs,)


def make_pipeline_counters():
    return np.zeros(abi.lib.XSKP_COUNTER_SLOTS, np.uint64)


@packet_njit
def process_batch_l2(umem, addrs, lens, n, ingress_iface, state, counters, verdicts_out, now):
    """Forward every IPv4 frame to the other interface: MACs from state[0][egress] (destination
    then source), TTL - 1 with an incremental header-checksum update (RFC 1624). Drops (and
    counts) truncated frames, non-IPv4 frames and expiring TTLs. Reads/writes the frames."""
    nexthop_macs = state[0]
    egress = IFACE_GATEWAY if ingress_iface == IFACE_TRANSPORT else IFACE_TRANSPORT
    for i in range(n):
        a = addrs[i]
        if lens[i] < 34:
            counters[_DROP_TRUNCATED] += 1
            verdicts_out[i] = _V_DROP
            continue
        if umem[a + 12] != 0x08 or umem[a + 13] != 0x00:
            counters[_DROP_UNSUPPORTED] += 1
            verdicts_out[i] = _V_DROP
            continue
        ttl = umem[a + 22]
        if ttl <= 1:
            counters[_DROP_TTL_EXCEEDED] += 1
            verdicts_out[i] = _V_DROP
            continue
        umem[a + 22] = ttl - 1
        # the TTL is the high byte of its 16-bit word, which drops by 0x0100: the checksum rises
        check = ((np.uint32(umem[a + 24]) << 8) | umem[a + 25]) + 0x0100
        check = (check & 0xffff) + (check >> 16)
        umem[a + 24] = (check >> 8) & 0xff
        umem[a + 25] = check & 0xff
        for b in range(12):
            umem[a + b] = nexthop_macs[egress, b]
        if egress == IFACE_TRANSPORT:
            verdicts_out[i] = _V_TX_TRANSPORT
            counters[_CNT_TX_TRANSPORT] += 1
        else:
            verdicts_out[i] = _V_TX_GATEWAY
            counters[_CNT_TX_GATEWAY] += 1


# ---- the worker loop ------------------------------------------------------------------------
WorkerBuffers = namedtuple(
    "WorkerBuffers",
    "socks free_frames free_count outstanding kick_pending last_active rx_addrs rx_lens tx_addrs "
    "tx_lens tx_counts verdicts comp_addrs worker_counters loop_control credit_slots")
# njit code gets tuple(WorkerBuffers) and indexes it with these positions: under `python -m`
# this module is __main__, and a namedtuple type of __main__ makes numba miss its disk cache.
(_B_SOCKS, _B_FREE_FRAMES, _B_FREE_COUNT, _B_OUTSTANDING, _B_KICK_PENDING, _B_LAST_ACTIVE, _B_RX_ADDRS,
 _B_RX_LENS, _B_TX_ADDRS, _B_TX_LENS, _B_TX_COUNTS, _B_VERDICTS, _B_COMP_ADDRS,
 _B_WORKER_COUNTERS, _B_LOOP_CONTROL, _B_CREDIT_SLOTS) = range(16)


def make_worker_buffers(umem, sockets):
    """Scratch and bookkeeping of one worker; every UMEM frame starts on the free stack.

    sockets: [transport socket or None, gateway socket or None] (XskSocket)."""
    free = umem.chunk_addresses()
    socks = np.array([s.handle if s is not None else 0 for s in sockets], np.uint64)
    return WorkerBuffers(
        socks=socks, free_frames=free, free_count=np.array([len(free)], np.int64),
        outstanding=np.zeros(IFACE_MAX, np.int64), kick_pending=np.zeros(IFACE_MAX, np.uint8),
        last_active=np.zeros(2, np.uint64),     # the last pass with frames, and the gap before it
        rx_addrs=np.zeros(BATCH, np.uint64), rx_lens=np.zeros(BATCH, np.uint32),
        tx_addrs=np.zeros((IFACE_MAX, BATCH), np.uint64), tx_lens=np.zeros((IFACE_MAX, BATCH), np.uint32),
        tx_counts=np.zeros(IFACE_MAX, np.int64), verdicts=np.zeros(BATCH, np.int32),
        comp_addrs=np.zeros(BATCH, np.uint64),
        worker_counters=np.zeros((IFACE_MAX, abi.lib.XSKP_WC_MAX), np.uint64),
        loop_control=np.array([0, 0, np.uint64(2**64 - 1)], np.uint64),   # LC_WAKE_FD -1: none
        credit_slots=np.full(IFACE_MAX, -1, np.int64))   # XSKMAP slot per socket (Worker.start)


@packet_njit
def process_batch_pipeline(umem, addrs, lens, n, ingress_iface, state, counters, verdicts_out, now):
    """The full pipeline (dataplane/pipeline.py) in this loop's shape: state is
    (ServiceTables, FlowTables). Reads/writes as pipeline.process_batch."""
    _pipeline_process_batch(umem, addrs, lens, n, ingress_iface, state[0], state[1], counters,
                            verdicts_out, now)


def _is_pipeline_state(state):
    """The numba type of (ServiceTables, FlowTables), the full pipeline's state."""
    return isinstance(state, types.BaseTuple) and len(state) == 2 and all(
        isinstance(part, types.BaseTuple) for part in state)


def process_batch(umem, addrs, lens, n, ingress_iface, state, counters, verdicts_out, now):
    """The per-batch step for `state`, chosen when numba compiles the caller: state (macs,) is
    the L2 forwarder, state (ServiceTables, FlowTables) the full pipeline. (A type-dispatched
    overload, not an argument or a closure, so that numba caches each compiled loop.)"""
    raise TypeError("process_batch is callable from njit code only")


@overload(process_batch, jit_options={"nogil": True, "_nrt": False})
def _process_batch_for_state(umem, addrs, lens, n, ingress_iface, state, counters, verdicts_out, now):
    if isinstance(state, types.BaseTuple) and len(state) == 1 and isinstance(state[0], types.Array):
        def l2(umem, addrs, lens, n, ingress_iface, state, counters, verdicts_out, now):
            process_batch_l2(umem, addrs, lens, n, ingress_iface, state, counters, verdicts_out, now)
        return l2
    if _is_pipeline_state(state):
        def pipeline(umem, addrs, lens, n, ingress_iface, state, counters, verdicts_out, now):
            process_batch_pipeline(umem, addrs, lens, n, ingress_iface, state, counters, verdicts_out, now)
        return pipeline
    raise TypeError(f"worker state {state}: expected (macs,) or (ServiceTables, FlowTables)")


def housekeeping(state, counters, now):
    """Per-pass work besides frames, chosen like process_batch: for the full pipeline, the kernel
    fast path's sweep (dataplane/_fastpath.py); nothing for the L2 forwarder."""
    raise TypeError("housekeeping is callable from njit code only")


@overload(housekeeping, jit_options={"nogil": True, "_nrt": False})
def _housekeeping_for_state(state, counters, now):
    if _is_pipeline_state(state):
        def pipeline(state, counters, now):
            _fast_path_step(state[0], state[1], now, counters)
        return pipeline

    def nothing(state, counters, now):
        pass
    return nothing


def idle_spin_ns(state, last_gap):
    """How long the loop polls its rings after the last frame before it sleeps in poll(), chosen
    like process_batch. Every frame comes here (the L2 forwarder, the pipeline without a flow
    table): IDLE_SPIN_NS, so that a sparse flow's frames (one TCP stream's ACKs) do not each pay
    a wakeup. With the kernel fast path only first packets come (a connection's SYN), on a core
    the kernel's softirq work shares: twice the last gap between frames when that is below
    IDLE_SPIN_NS (a busy stream of SYNs is caught spinning), else none (at 1,000 connections/s
    a 200 us spin after each SYN tripled the worker's CPU: 72 to 215 ms/s)."""
    raise TypeError("idle_spin_ns is callable from njit code only")


@overload(idle_spin_ns, jit_options={"nogil": True, "_nrt": False})
def _idle_spin_ns_for_state(state, last_gap):
    if _is_pipeline_state(state):
        def pipeline(state, last_gap):
            if state[1].flows.shape[0] == 0:
                return np.uint64(IDLE_SPIN_NS)
            if last_gap >= np.uint64(IDLE_SPIN_NS):
                return np.uint64(0)
            return min(np.uint64(2) * last_gap, np.uint64(IDLE_SPIN_NS))
        return pipeline

    def every_frame(state, last_gap):
        return np.uint64(IDLE_SPIN_NS)
    return every_frame


def grant_credit(state, slot, room):
    """After a pass, upcall admission's credit for the socket at XSKMAP `slot`: `room` frames
    (dataplane/_fastpath.py grant_upcall_credit); nothing for the L2 forwarder."""
    raise TypeError("grant_credit is callable from njit code only")


@overload(grant_credit, jit_options={"nogil": True, "_nrt": False})
def _grant_credit_for_state(state, slot, room):
    if _is_pipeline_state(state):
        def pipeline(state, slot, room):
            _grant_upcall_credit(state[1], slot, room)
        return pipeline

    def nothing(state, slot, room):
        pass
    return nothing


@packet_njit
def _free_frame(free_frames, free_count, addr, frame_mask):
    free_frames[free_count[0]] = addr & frame_mask
    free_count[0] += 1


@packet_njit
def run_slice(umem, frame_mask, buffers, state, counters, slice_ns):
    """Move frames for slice_ns nanoseconds (0: one pass, which also fills the fill rings) or
    until buffers' loop_control[LC_RETURN] is set: complete, receive, process_batch, transmit on
    the egress interface, kick, refill, sleep in poll() when idle. buffers is
    tuple(WorkerBuffers). Reads and writes the UMEM frames, buffers (free stack, worker counters,
    loop_control[LC_PASS_AT]) and counters; returns the frames received."""
    socks, wc, outstanding = buffers[_B_SOCKS], buffers[_B_WORKER_COUNTERS], buffers[_B_OUTSTANDING]
    rx_addrs, rx_lens, verdicts = buffers[_B_RX_ADDRS], buffers[_B_RX_LENS], buffers[_B_VERDICTS]
    tx_addrs, tx_lens, tx_counts = buffers[_B_TX_ADDRS], buffers[_B_TX_LENS], buffers[_B_TX_COUNTS]
    comp, free_frames, free_count = buffers[_B_COMP_ADDRS], buffers[_B_FREE_FRAMES], buffers[_B_FREE_COUNT]
    kick_pending, last_active_ns = buffers[_B_KICK_PENDING], buffers[_B_LAST_ACTIVE]
    loop_control, credit_slots = buffers[_B_LOOP_CONTROL], buffers[_B_CREDIT_SLOTS]
    rx_addrs_ptr, rx_lens_ptr = array_data_ptr(rx_addrs), array_data_ptr(rx_lens)
    comp_ptr = array_data_ptr(comp)
    received = 0
    deadline = xskp_now_ns() + slice_ns
    last_active = last_active_ns[0]  # carried across slices: an idle worker stays asleep
    last_gap = last_active_ns[1]     # between the last two passes that received frames
    while True:  # at least one pass, then until the deadline
        now = xskp_now_ns()
        active = False
        housekeeping(state, counters, now)
        # 1. frames the kernel has sent are free again
        for i in range(IFACE_MAX):
            if socks[i] == 0 or outstanding[i] == 0:
                continue
            done = xskp_complete(socks[i], comp_ptr, BATCH)
            for k in range(done):
                _free_frame(free_frames, free_count, comp[k], frame_mask)
            outstanding[i] -= done
            wc[i, _WC_COMPLETED] += done
        # 2. receive a batch per interface, decide, queue for tx on the egress interface
        for i in range(IFACE_MAX):
            if socks[i] == 0:
                continue
            n = xskp_rx(socks[i], rx_addrs_ptr, rx_lens_ptr, BATCH)
            if n == 0:
                wc[i, _WC_EMPTY_POLLS] += 1
                continue
            active = True
            received += n
            wc[i, _WC_RX] += n
            process_batch(umem, rx_addrs, rx_lens, n, i, state, counters, verdicts, now)
            tx_counts[:] = 0
            for k in range(n):
                v = verdicts[k]
                e = -1
                if v == _V_TX_TRANSPORT:
                    e = IFACE_TRANSPORT
                elif v == _V_TX_GATEWAY:
                    e = IFACE_GATEWAY
                if e < 0 or socks[e] == 0:
                    wc[i, _WC_DROPPED] += 1
                    _free_frame(free_frames, free_count, rx_addrs[k], frame_mask)
                    continue
                tx_addrs[e, tx_counts[e]] = rx_addrs[k]
                tx_lens[e, tx_counts[e]] = rx_lens[k]
                tx_counts[e] += 1
            for e in range(IFACE_MAX):
                queued = tx_counts[e]
                if queued == 0:
                    continue
                sent = xskp_tx(socks[e], array_data_ptr(tx_addrs[e]), array_data_ptr(tx_lens[e]),
                               queued)
                outstanding[e] += sent
                wc[e, _WC_TX] += sent
                if sent > 0:
                    kick_pending[e] = 1
                for k in range(sent, queued):
                    wc[e, _WC_TX_RING_FULL] += 1
                    _free_frame(free_frames, free_count, tx_addrs[e, k], frame_mask)
        # 3. make the kernel take the new tx descriptors (copy mode: sendto until it stops
        #    saying EAGAIN); a kick cut short by the retry limit stays pending for the next pass
        for e in range(IFACE_MAX):
            if socks[e] == 0 or kick_pending[e] == 0:
                continue
            kicks = xskp_kick_tx(socks[e])
            if kicks == _EAGAIN_RESULT:
                wc[e, _WC_KICKS] += _KICK_MAX_RETRIES
                continue
            kick_pending[e] = 0
            if kicks >= 0:
                wc[e, _WC_KICKS] += kicks
            else:
                wc[e, _WC_KICK_ERRORS] += 1
        # 4. refill the fill rings from the free stack
        for i in range(IFACE_MAX):
            if socks[i] == 0:
                continue
            available = free_count[0]
            slots = xskp_fill_free(socks[i], 4 * BATCH)
            if slots > available:
                wc[i, _WC_FILL_SHORT] += 1
                slots = available
            if slots > 0:
                start = available - slots
                filled = xskp_fill(socks[i], array_data_ptr(free_frames[start:]), slots)
                # the first `filled` entries from start went to the kernel: close the gap
                kept = slots - filled
                for k in range(kept):
                    free_frames[start + k] = free_frames[start + filled + k]
                free_count[0] = start + kept
            if xskp_wakeup_rx(socks[i]) == 1:
                wc[i, _WC_RX_WAKEUPS] += 1
            room = xskp_rx_room(socks[i])
            if room == 0:
                wc[i, _WC_NO_ROOM] += 1
            grant_credit(state, credit_slots[i], room)
        # 5. sleep in poll() once nothing has arrived for idle_spin_ns(state) (a shorter spin
        #    makes every frame of a sparse flow, e.g. one TCP stream's ACKs, pay a wakeup; with
        #    the fast path those never come here)
        if active:
            last_gap = np.uint64(now - last_active) if now > last_active else np.uint64(0)
            last_active = now
        elif kick_pending[IFACE_TRANSPORT] != 0 or kick_pending[IFACE_GATEWAY] != 0:
            pass                                   # a kick cut short: retried at the next pass
        elif np.uint64(now - last_active) >= idle_spin_ns(state, last_gap):
            wc[IFACE_TRANSPORT, _WC_IDLE_SLEEPS] += 1  # counted once, on the first row
            xskp_poll_rx(socks[0], socks[1], np.int32(np.int64(loop_control[LC_WAKE_FD])), IDLE_POLL_MS)
        loop_control[LC_PASS_AT] = now
        if now >= deadline or loop_control[LC_RETURN] != 0:
            break
    last_active_ns[0] = last_active
    last_active_ns[1] = last_gap
    return received


# ---- measuring the numba -> pyxdp call cost (for bench/) ------------------------------------
@packet_njit
def _time_batch_calls(sock, addrs, lens, iterations):
    addrs_ptr, lens_ptr = array_data_ptr(addrs), array_data_ptr(lens)
    got = 0
    start = xskp_now_ns()
    if sock == 0:
        for _ in range(iterations):
            got += xskp_batch_probe(addrs_ptr, BATCH)
    else:
        for _ in range(iterations):
            got += xskp_rx(sock, addrs_ptr, lens_ptr, BATCH)
    return xskp_now_ns() - start, got


def measure_batch_call_ns(sock=None, iterations=1_000_000):
    """Nanoseconds per numba -> pyxdp batch call: an empty rx batch on `sock` (an XskSocket whose
    ring is idle), or, without a socket, a call that does nothing (the bare call cost)."""
    bind_native()
    addrs, lens = np.zeros(BATCH, np.uint64), np.zeros(BATCH, np.uint32)
    handle = np.uint64(sock.handle if sock is not None else 0)
    _time_batch_calls(handle, addrs, lens, 1000)  # compile and warm up
    elapsed, _ = _time_batch_calls(handle, addrs, lens, iterations)
    return elapsed / iterations


# ---- one queue pair in a thread -------------------------------------------------------------
class Worker:
    """Serves one queue of the transport and gateway interfaces: a UMEM shared by one socket per
    interface, bound into the steering program, and a thread running the njit loop in slices.

    state: the per-batch step's state tuple; set_state() hands a new one to the next slice."""

    def __init__(self, steering, transport, gateway, queue, state,
                 bind_mode="auto", frame_count=abi.lib.XSKP_UMEM_FRAMES, socket_devices=None):
        """socket_devices: {served interface: device its sockets bind on} where that differs
        (upcall mode: the socket end of the interface's upcall pair)."""
        bind_native()
        socket_devices = socket_devices or {}
        self.queue, self.state = queue, state
        self.counters = make_pipeline_counters()
        self.umem = xsk.Umem(frame_count=frame_count)
        self.sockets = [None, None]
        self._thread, self._stop = None, threading.Event()
        self.error = None
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            for iface, ifname in ((IFACE_TRANSPORT, transport), (IFACE_GATEWAY, gateway)):
                if ifname:
                    self.sockets[iface] = xsk.XskSocket(self.umem, socket_devices.get(ifname, ifname), queue,
                                                        mode=bind_mode, serves=ifname)
            self.buffers = make_worker_buffers(self.umem, self.sockets)
            self.buffers.loop_control[LC_WAKE_FD] = self._wake_fd
            self._buffer_tuple = tuple(self.buffers)
            self.frame_mask = np.uint64(~np.uint64(self.umem.frame_size - 1))
            self.steering = steering
        except BaseException:
            self.umem.close()
            os.close(self._wake_fd)
            raise

    def compile(self):
        """Compile (or load from numba's cache) the loop and fill the fill rings: one pass, before
        the sockets are bound into the steering program (nothing arrives yet)."""
        run_slice(self.umem.frames, self.frame_mask, self._buffer_tuple, self.state, self.counters, 0)

    def start(self):
        """Bind the sockets into the steering program (attach it to both interfaces first) and
        start the loop thread."""
        self.compile()
        for iface, sock in enumerate(self.sockets):
            if sock is not None:
                self.steering.bind_socket(sock)
                self.buffers.credit_slots[iface] = self.steering.xsk_index(sock)
        self._thread = threading.Thread(target=self._run, name=f"xskp-worker-q{self.queue}", daemon=True)
        self._thread.start()

    def _run(self):
        try:
            while not self._stop.is_set():
                self._next_slice()
                run_slice(self.umem.frames, self.frame_mask, self._buffer_tuple, self.state,
                          self.counters, UNTIL_ASKED)
        except BaseException as exc:  # surfaced by stop()/the runner, never silently lost
            self.error = exc

    def _next_slice(self):
        """Between two slices, in the loop's thread: take what was asked for (cleared first, so
        that a request arriving meanwhile makes the next slice return too)."""
        self.buffers.loop_control[LC_RETURN] = 0

    def ask_to_return(self):
        """Make the loop return to Python after its current pass (an idle one wakes at once)."""
        self.buffers.loop_control[LC_RETURN] = 1
        try:
            os.eventfd_write(self._wake_fd, 1)
        except OSError:
            pass                               # closed (stopped), or the counter is full: awake anyway

    def set_state(self, state):
        self.state = state
        self.ask_to_return()

    def last_pass_at(self):
        """time.monotonic() of the loop's latest pass (0.0 before the first)."""
        return int(self.buffers.loop_control[LC_PASS_AT]) / 1e9

    def stop(self):
        self._stop.set()
        self.ask_to_return()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def worker_counters(self):
        """{interface name: {counter name: value}} of the loop (enum xskp_worker_counter)."""
        out = {}
        for iface, sock in enumerate(self.sockets):
            if sock is not None:
                row = self.buffers.worker_counters[iface]
                out[sock.serves] = {name[len("XSKP_WC_"):].lower(): int(row[getattr(abi.lib, name)])
                                    for name in WORKER_COUNTER_NAMES}
        return out

    def socket_statistics(self):
        return {sock.serves: sock.statistics() for sock in self.sockets if sock is not None}

    def close(self):
        self.stop()
        for sock in self.sockets:
            if sock is not None and sock.handle:
                try:
                    self.steering.unbind_socket(sock)
                except (OSError, ValueError):
                    pass  # the program may be gone already; closing the socket clears it anyway
        self.umem.close()
        wake_fd, self._wake_fd = self._wake_fd, -1     # a late ask_to_return finds -1 (EBADF),
        if wake_fd >= 0:                                # never a number reused by another file
            os.close(wake_fd)


# ---- python -m dataplane.forwarder ----------------------------------------------------------
def _parse_prefix(text):
    cidr, _, role = text.partition("@")
    roles = [role] if role else ["transport", "gateway"]
    for r in roles:
        if r not in xsk.ROLES:
            raise ValueError(f"--steer-prefix: {text!r}: role {r!r} is not one of transport, gateway")
    return cidr, roles


def _parse_port(text):
    spec, _, addr = text.partition("@")
    proto, _, port = spec.partition(":")
    if proto not in ("tcp", "udp", "sctp") or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--steer-port: {text!r} is not tcp|udp|sctp:PORT[@ADDRESS]")
    return proto, int(port), addr or None


def _own_mac(ifname):
    with open(f"/sys/class/net/{ifname}/address") as f:
        return f.read().strip()


def _own_ipv4_addresses(ifname):
    """IPv4 addresses of ifname (SIOCGIFADDR gives only the first; enough for the forwarder lab)."""
    import fcntl
    import socket
    import struct
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        packed = fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", ifname.encode()[:15]))
        return [socket.inet_ntoa(packed[20:24])]
    except OSError:
        return []
    finally:
        sock.close()


def _parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m dataplane.forwarder",
                                description="Forward between two interfaces through AF_XDP (L2: MAC rewrite, TTL-1).")
    p.add_argument("--transport", required=True, help="uplink interface (role transport)")
    p.add_argument("--gateway", required=True, help="interface towards the Pods (role gateway)")
    p.add_argument("--queue", type=int, action="append", default=[],
                   help="queue to serve (repeat for several: one worker thread each; default 0)")
    p.add_argument("--transport-peer-mac", required=True, help="next hop's MAC for frames leaving on --transport")
    p.add_argument("--gateway-peer-mac", required=True, help="next hop's MAC for frames leaving on --gateway")
    p.add_argument("--steer-prefix", action="append", default=[], metavar="CIDR[@transport|@gateway]",
                   help="steer packets to CIDR arriving on interfaces of that role (default both)")
    p.add_argument("--steer-port", action="append", default=[], metavar="PROTO:PORT[@ADDRESS]",
                   help="steer packets to ADDRESS:PORT (default: the transport's address) on both interfaces")
    p.add_argument("--attach-mode", choices=sorted(xsk.ATTACH_MODES), default="auto")
    p.add_argument("--bind-mode", choices=sorted(xsk.BIND_MODES), default="auto")
    p.add_argument("--stats-file", help="write counters as JSON here every --stats-interval seconds")
    p.add_argument("--stats-interval", type=float, default=0.5)
    return p.parse_args(argv)


def _summed(dicts):
    total = {}
    for d in dicts:
        for ifname, counters in d.items():
            into = total.setdefault(ifname, {})
            for name, value in counters.items():
                into[name] = into.get(name, 0) + value
    return total


def _stats(steering, workers):
    """Counters of every worker summed per interface, per queue, and the steering program's."""
    pipeline_names = sorted((abi.enum_members("XSKP_DROP_").keys() | abi.enum_members("XSKP_CNT_").keys())
                            - {"XSKP_DROP_REASON_MAX"})
    return {"worker": _summed(w.worker_counters() for w in workers),
            "sockets": _summed(w.socket_statistics() for w in workers),
            "queues": {str(w.queue): w.worker_counters() for w in workers},
            "steering": steering.counters(),
            "pipeline": {name: sum(int(w.counters[getattr(abi.lib, name)]) for w in workers)
                         for name in pipeline_names}}


def _write_stats(path, stats):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(stats, f)
    os.replace(tmp, path)


def main(argv=None):
    """Attach, fill the steering maps, forward until SIGTERM/SIGINT, detach. Exit 0 on a clean
    stop; 1 with one line `forwarder: error: ...` on stderr when setting up fails."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    steering, workers = None, []
    try:
        args = _parse_args(argv)
        queues = sorted(set(args.queue)) or [0]
        prefixes = [_parse_prefix(p) for p in args.steer_prefix]
        ports = [_parse_port(p) for p in args.steer_port]
        for ifname in (args.transport, args.gateway):
            xsk.ifindex_of(ifname)
        bind_native()
        steering = xsk.SteeringProgram()
        state = make_l2_state(args.transport_peer_mac, _own_mac(args.transport),
                              args.gateway_peer_mac, _own_mac(args.gateway))
        for queue in queues:
            workers.append(Worker(steering, args.transport, args.gateway, queue, state,
                                  bind_mode=args.bind_mode))
        workers[0].compile()
        modes = {ifname: steering.attach(ifname, role, args.attach_mode)
                 for ifname, role in ((args.transport, "transport"), (args.gateway, "gateway"))}
        for cidr, roles in prefixes:
            steering.add_prefix(cidr, roles)
        for proto, port, addr in ports:
            for address in [addr] if addr else _own_ipv4_addresses(args.transport):
                steering.add_frontend(address, port, proto, ["transport", "gateway"])
        for worker in workers:
            worker.start()
        socket_modes = {s.ifname: s.mode_name for s in workers[0].sockets}
        print("forwarder: ready " + " ".join(f"{name}=xdp:{modes[name]},socket:{socket_modes[name]}"
                                             for name in modes)
              + f" queues={','.join(map(str, queues))}", flush=True)
        while not stop.wait(args.stats_interval):
            for worker in workers:
                if worker.error is not None:
                    raise worker.error
            if args.stats_file:
                _write_stats(args.stats_file, _stats(steering, workers))
        for worker in workers:
            worker.stop()
        stats = _stats(steering, workers)
        if args.stats_file:
            _write_stats(args.stats_file, stats)
        print(json.dumps(stats), flush=True)
        return 0
    except (OSError, ValueError, xsk.NativeMissingError) as exc:
        message = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        print(f"forwarder: error: {message}", file=sys.stderr, flush=True)
        return 1
    finally:
        for worker in workers:
            worker.close()
        if steering is not None:
            steering.close()


if __name__ == "__main__":
    # run the imported module's main, so that numba compiles and caches dataplane.forwarder's
    # functions (not a second copy living in __main__)
    from dataplane.forwarder import main as _main
    sys.exit(_main())
