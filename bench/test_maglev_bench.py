"""Maglev ring build time for 10, 1,000 and 100,000 backends (pytest-benchmark), off the hot path.

Reports the ring size and the worst backend's share next to the time. Run alone on a quiet
machine when the numbers are meant to be quoted: `pytest bench/test_maglev_bench.py`.
"""
import numpy as np
import pytest

from dataplane.maglev import backend_hash_keys_v4, build_maglev_ring, maglev_ring_size

pytest.importorskip("pytest_benchmark")


@pytest.mark.parametrize("backends", [10, 1_000, 100_000])
def test_maglev_build_time(benchmark, backends):
    """Building the ring for `backends` backends takes (and each holds 99..101% of its share)."""
    addrs = np.arange(backends, dtype=np.uint32) + np.uint32(0x0A000000)
    ports = np.full(backends, 8080, dtype=np.uint16)
    keys = backend_hash_keys_v4(addrs, ports)
    build_maglev_ring(keys[:2])  # compile (or load from numba's cache) outside the timing
    rounds = 3 if backends >= 100_000 else 20
    ring = benchmark.pedantic(build_maglev_ring, args=(keys,), rounds=rounds, iterations=1)
    counts = np.bincount(ring, minlength=backends)
    share = counts / (ring.size / backends)
    benchmark.extra_info.update(ring_size=int(ring.size), ring_mbytes=ring.nbytes / 2**20,
                                share_min=float(share.min()), share_max=float(share.max()))
    assert ring.size == maglev_ring_size(backends)
    assert share.min() >= 0.99 and share.max() <= 1.01
