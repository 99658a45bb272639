"""How long an idle worker polls its rings before it sleeps (dataplane/forwarder.py idle_spin_ns):
the full spin when every frame comes to it, and with the kernel fast path only while the frames
that do come (first packets) arrive closer together than the spin."""
import numpy as np
from numba import njit

import fixtures_pipeline as fx
from dataplane import tables
from dataplane.forwarder import IDLE_SPIN_NS, idle_spin_ns


@njit(cache=False)
def spin_for(state, last_gap):
    return idle_spin_ns(state, np.uint64(last_gap))


def pipeline_state(flow_capacity):
    st, ft = fx.make_topology()
    if flow_capacity:
        ft = tables.with_fast_path(ft, np.zeros(flow_capacity, tables.FLOW_V4_DTYPE),
                                   np.zeros(1, tables.FAST_CONFIG_DTYPE), (11, 12), owner=0)
    return (st, ft)


def test_every_frame_through_userspace_keeps_the_full_spin():
    assert spin_for(pipeline_state(0), 10**9) == IDLE_SPIN_NS


def test_with_the_fast_path_sparse_first_packets_sleep_at_once_and_a_busy_stream_is_spun_for():
    state = pipeline_state(64)
    assert spin_for(state, 1_000_000) == 0                 # 1,000 SYNs a second: no spin
    assert spin_for(state, IDLE_SPIN_NS) == 0
    assert spin_for(state, 58_000) == 116_000              # ~17,000 a second: caught spinning
    assert spin_for(state, 150_000) == IDLE_SPIN_NS        # never beyond the full spin
