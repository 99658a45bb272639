"""Maglev ring: balance, disruption on backend removal, determinism, and the fast build against a
plain reference implementation of the paper's population loop (Eisenbud et al., NSDI 2016, Alg. 1)."""
import numpy as np
import pytest

from dataplane import maglev
from dataplane.maglev import (
    RING_SIZES, backend_hash_key, backend_hash_keys_v4, build_maglev_ring, build_maglev_rings,
    is_prime, maglev_ring_size,
)


def ipv4_keys(n, first=0x0A000000, port=8080):
    """Keys of n backends 10.x.y.z:port, as the translator makes them (host-order numbers)."""
    addrs = np.arange(n, dtype=np.uint32) + np.uint32(first)
    ports = np.full(n, port, dtype=np.uint16)
    return backend_hash_keys_v4(addrs, ports)


def reference_ring(keys, ring_size):
    """Algorithm 1 of the Maglev paper in plain Python, backends in sorted-key order."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = [int(k) for k in keys[order]]
    offsets = [maglev._mix64_scalar(k ^ int(maglev._OFFSET_SEED)) % ring_size for k in sorted_keys]
    skips = [maglev._mix64_scalar(k ^ int(maglev._SKIP_SEED)) % (ring_size - 1) + 1
             for k in sorted_keys]
    next_index = [0] * len(keys)
    ring = [-1] * ring_size
    filled = 0
    while True:
        for i in range(len(keys)):
            slot = (offsets[i] + next_index[i] * skips[i]) % ring_size
            while ring[slot] >= 0:
                next_index[i] += 1
                slot = (offsets[i] + next_index[i] * skips[i]) % ring_size
            ring[slot] = i
            next_index[i] += 1
            filled += 1
            if filled == ring_size:
                return order[np.array(ring)]


@pytest.mark.parametrize("n", [1, 2, 7, 100, 1000])
def test_every_backend_holds_its_share_within_one_percent(n):
    """Each of n equal backends holds between 99% and 101% of M/n slots."""
    ring = build_maglev_ring(ipv4_keys(n))
    counts = np.bincount(ring, minlength=n)
    ideal = ring.size / n
    assert counts.min() >= 0.99 * ideal and counts.max() <= 1.01 * ideal


def test_ring_size_is_a_prime_with_100_slots_per_backend():
    """Every ring size is a prime of at least 100 slots per backend, and at most ~1.42x that."""
    assert all(is_prime(size) for size in RING_SIZES)
    for n in (1, 10, 11, 1000, 12345, 100000):
        size = maglev_ring_size(n)
        assert is_prime(size) and size >= 100 * n
        assert size <= max(1021, 1.42 * 100 * n)


def test_ring_size_stays_when_one_backend_comes_or_goes():
    """A Service keeps its ring size across a change of one backend (else every flow would move)."""
    for n in (10, 100, 999, 5000):
        size = maglev_ring_size(n)
        assert maglev_ring_size(n - 1, previous=size) == size
        if 100 * (n + 1) <= size:
            assert maglev_ring_size(n + 1, previous=size) == size
    # ... but a Service that shrank 10x gives its memory back.
    assert maglev_ring_size(10, previous=maglev_ring_size(1000)) == maglev_ring_size(10)


@pytest.mark.parametrize("n,tolerance", [(10, 1.5), (100, 3.0)])
def test_removing_one_of_n_backends_moves_about_one_nth_of_flows(n, tolerance):
    """Removing one of n backends moves its own flows (1/n) and few others: at most tolerance/n."""
    keys = ipv4_keys(n)
    size = maglev_ring_size(n)
    before = build_maglev_ring(keys)
    rng = np.random.default_rng(7)
    flow_hashes = rng.integers(0, 1 << 62, size=200_000)
    for removed in (0, n // 2, n - 1):
        keep = np.flatnonzero(np.arange(n) != removed)
        after = keep[build_maglev_ring(keys[keep], ring_size=maglev_ring_size(n - 1, previous=size))]
        moved = np.mean(before[flow_hashes % size] != after[flow_hashes % size])
        assert 0.9 / n <= moved <= tolerance / n, (removed, moved * n)
        assert not (after == removed).any()


def test_same_backends_give_the_same_ring_in_any_order():
    """The ring depends only on the backends' addresses and ports: not on input order or call."""
    keys = ipv4_keys(300)
    first = build_maglev_ring(keys)
    perm = np.random.default_rng(3).permutation(300)
    shuffled = build_maglev_ring(keys[perm])
    assert np.array_equal(first, build_maglev_ring(keys))
    assert np.array_equal(perm[shuffled], first)


def test_fast_build_equals_the_papers_algorithm():
    """Probing plus the free-list scan at the end gives exactly the ring of Algorithm 1."""
    for n, size in ((1, 1021), (3, 1021), (10, 1447), (37, 4093), (64, 8191)):
        keys = ipv4_keys(n, first=0x0A010000 + 17 * n)
        assert np.array_equal(build_maglev_ring(keys, ring_size=size), reference_ring(keys, size))


def test_weights_scale_the_share_and_zero_weight_gets_nothing():
    """A backend of weight 2 holds twice the slots of a weight-1 one; weight 0 holds none."""
    keys = ipv4_keys(4)
    ring = build_maglev_ring(keys, weights=[1, 2, 1, 0])
    counts = np.bincount(ring, minlength=4)
    assert counts[3] == 0
    assert abs(counts[1] / counts[0] - 2) < 0.02 and abs(counts[2] / counts[0] - 1) < 0.02


def test_no_backend_gives_an_empty_ring_and_duplicates_are_refused():
    """An empty backend list gives a 0-slot ring; the same address:port twice is an error."""
    assert build_maglev_ring(np.empty(0, dtype=np.uint64)).size == 0
    keys = ipv4_keys(3)
    with pytest.raises(ValueError, match="unique"):
        build_maglev_ring(np.concatenate([keys, keys[:1]]))
    with pytest.raises(ValueError, match="ring_size"):
        build_maglev_ring(keys, ring_size=1000)


def test_many_rings_at_once_equal_one_at_a_time():
    """build_maglev_rings (one call, keys in any order, slots holding the given values) gives each
    ring exactly as build_maglev_ring, back to back; a key twice within a ring is refused."""
    rng = np.random.default_rng(7)
    counts = [1, 50, 3, 120, 2, 50]
    rings = [rng.permutation(ipv4_keys(n, first=0x0A000000 + 4096 * i)) for i, n in enumerate(counts)]
    values = [rng.integers(1, 1 << 32, n, dtype=np.uint32) for n in counts]
    sizes = [maglev_ring_size(n) for n in counts]
    sizes[1] = maglev_ring_size(50, previous=maglev_ring_size(200))     # a kept, larger size
    starts = np.concatenate([[0], np.cumsum(counts)])
    slots, ring_starts = build_maglev_rings(np.concatenate(rings), starts, sizes, np.concatenate(values))
    assert slots.size == sum(sizes) and list(ring_starts) == list(np.concatenate([[0], np.cumsum(sizes)[:-1]]))
    for keys, vals, size, start in zip(rings, values, sizes, ring_starts):
        assert np.array_equal(slots[start:start + size], vals[build_maglev_ring(keys, ring_size=size)])
    with pytest.raises(ValueError, match="unique"):
        build_maglev_rings(np.concatenate([rings[1], rings[1][:1]]), [0, 51], [sizes[1]],
                           np.ones(51, np.uint32))
    with pytest.raises(ValueError, match="ring_sizes"):
        build_maglev_rings(rings[1], [0, 50], [1000], values[1])
    with pytest.raises(ValueError, match="key_starts"):                 # a ring without keys
        build_maglev_rings(rings[1], [0, 0, 50], [1021, 5791], values[1])


def test_backend_keys_name_address_and_port():
    """Keys differ by address and by port, IPv4 keys match the vectorised form, IPv6 works."""
    assert backend_hash_key("10.0.0.1", 80) != backend_hash_key("10.0.0.1", 81)
    assert backend_hash_key("10.0.0.1", 80) != backend_hash_key("10.0.0.2", 80)
    vectorised = ipv4_keys(1, first=0x0A000001, port=80)[0]
    assert backend_hash_key("10.0.0.1", 80) == int(vectorised)
    v6 = backend_hash_key("fd00::1", 80)
    assert v6 == backend_hash_key("fd00::1", 80) and v6 != backend_hash_key("fd00::2", 80)
    assert v6 >= 1 << 63 and backend_hash_key("255.255.255.255", 65535) < 1 << 48
