"""The worker's side of upcall admission (root: a real UMEM): it tells the tc program when it
passes, when it sleeps in poll() and when it leaves its loop, so that tc sheds new flows only
while the worker is awake but starved, never while it waits for the GIL (a publish) or idles."""
import time

import numpy as np

from xsk_test_support import needs_native, needs_root

pytestmark = [needs_root, needs_native]


def _tables():
    from dataplane import tables
    st = tables.make_service_tables(4, 4, 4, 16, 4, 4, 4)
    ft = tables.make_flow_tables(1 << 12, 1 << 10, flow_capacity=1 << 10)
    return st, ft


def test_a_worker_leaving_its_loop_is_marked_asleep_and_a_pass_marks_it_awake():
    from dataplane import forwarder, xsk
    from dataplane._fastpath import mark_worker_pass
    forwarder.bind_native()
    st, ft = _tables()
    config = ft.fast_config
    config[0]["worker_asleep"], config[0]["worker_pass_ns"] = 0, 1
    with xsk.Umem(frame_count=64, ring_size=32) as umem:
        buffers = forwarder.make_worker_buffers(umem, [None, None])
        mask = np.uint64(~np.uint64(umem.frame_size - 1))
        counters = forwarder.make_pipeline_counters()
        forwarder.run_slice(umem.frames, mask, tuple(buffers), (st, ft), counters, 0)   # compiles
        config[0]["worker_asleep"] = 0
        buffers.last_active[0] = time.monotonic_ns()   # busy: the pass does not end in poll()
        forwarder.run_slice(umem.frames, mask, tuple(buffers), (st, ft), counters, 0)
    assert config[0]["worker_asleep"] == 1            # returned to Python: not starved
    now = time.monotonic_ns()
    mark_worker_pass(ft, now, False)
    assert (config[0]["worker_asleep"], config[0]["worker_pass_ns"]) == (0, now)
    mark_worker_pass(ft, now + 1000, False)            # within XSKP_PASS_MARK_NS: not rewritten
    assert config[0]["worker_pass_ns"] == now
