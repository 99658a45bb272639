"""Maglev consistent hashing: builds a Service's lookup ring from its backends, off the hot path.

The pipeline only indexes the ring (`ring[flow_hash % ring_size]`); nothing here runs per packet.
Never depends on backend ids or input order: the same backends give the same ring on every node.

Table size. A ring has `maglev_ring_size(n)` slots, taken from a ladder of primes just below
the powers of sqrt(2) (1021, 1447, 2039, 2887, ..., 11863279, ...): the smallest rung >= 100 n.
- Balance: with equal weights the population below hands out slots round-robin, so every backend
  holds floor(M/n) or ceil(M/n) slots; M >= 100 n keeps each within 1/100 = 1% of the ideal M/n.
- Disruption: flows index the ring by `hash % M`, so M must not change when one backend comes or
  goes, or every flow moves. The ladder keeps M fixed while n varies within a factor of sqrt(2), and
  `previous=` keeps the current size on shrinking as long as it stays within 8x of what is needed.
  With M fixed and M >> n, removing one of n backends moves its own ~M/n slots and a small
  fraction of the others (measured in tests/unit/test_maglev.py: close to 1/n of all flows).
- Memory: 4 bytes per slot, 400..570 bytes per backend: 100,000 backends take 47 MB, 5,000
  Services of 50 endpoints take 116 MB. A fixed floor of 65,537 (Katran's default) would cost
  1.3 GB at that scale for no gain in balance, so the floor is small (1021: the 1% bound for up
  to 10 backends).
- A prime size makes every skip in 1..M-1 a full permutation of the slots.
"""
import ipaddress
import struct

import numpy as np
from numba import njit

RING_SLOTS_PER_BACKEND = 100     # M >= 100 n: each backend within 1% of its ideal share
RING_SIZE_MIN = 1021             # smallest ring, a prime: 1% balance up to 10 backends
_OFFSET_SEED = np.uint64(0x9E3779B97F4A7C15)
_SKIP_SEED = np.uint64(0xC2B2AE3D27D4EB4F)


def is_prime(n):
    """Deterministic Miller-Rabin, exact for every n < 3.3e24."""
    if n < 2:
        return False
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
    for p in small:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in small:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def next_prime(n):
    """The smallest prime >= n."""
    n = max(n, 2)
    while not is_prime(n):
        n += 1
    return n


def _largest_prime_below(n):
    n -= 1
    while not is_prime(n):
        n -= 1
    return n


# The ring sizes: the largest prime below each power of sqrt(2) from 2^10 to 2^31.
RING_SIZES = tuple(_largest_prime_below(int(round(2 ** (k / 2)))) for k in range(20, 63))
_RING_SIZE_SET = frozenset(RING_SIZES)
RING_SIZE_KEEP_FACTOR = 8        # a shrinking Service keeps its size while <= 8x what it needs


def maglev_ring_size(backend_count, previous=0):
    """Slots of the ring for `backend_count` backends: the smallest rung of RING_SIZES holding
    100 slots per backend, or `previous` (the Service's current size) while it still holds 100
    per backend and is no more than 8x that, so that a change of one backend keeps the size."""
    needed = max(RING_SLOTS_PER_BACKEND * backend_count, RING_SIZE_MIN)
    if previous and needed <= previous <= RING_SIZE_KEEP_FACTOR * needed and (
            previous in _RING_SIZE_SET or is_prime(previous)):
        return previous
    for size in RING_SIZES:
        if size >= needed:
            return size
    raise ValueError(f"backend_count: {backend_count} backends need a ring larger than "
                     f"{RING_SIZES[-1]} slots")


def backend_hash_key(addr, port):
    """A 64-bit key naming a backend by address and port (never by id), the same on every node.

    IPv4: the address and port packed exactly (addr << 16 | port). IPv6: the two halves of the
    address folded with the port through the same mixer the ring uses.
    """
    ip = ipaddress.ip_address(addr)
    if ip.version == 4:
        return (int(ip) << 16) | (port & 0xFFFF)
    hi, lo = struct.unpack("!QQ", ip.packed)
    mixed = _mix64_scalar(hi ^ 0x6A09E667F3BCC908) ^ _mix64_scalar(lo ^ (port << 1) ^ 1)
    return mixed | (1 << 63)  # never collides with an IPv4 key (those fit in 48 bits)


def backend_hash_keys_v4(addrs, ports):
    """Vectorised backend_hash_key for IPv4: addresses and ports as host-order numbers (as the
    pipeline's backends table holds them: 10.0.0.1 is 0x0a000001) -> uint64 keys."""
    addrs = np.asarray(addrs, dtype=np.uint32).astype(np.uint64)
    ports = np.asarray(ports, dtype=np.uint16).astype(np.uint64)
    return (addrs << np.uint64(16)) | ports


def _mix64_scalar(x):
    """splitmix64's finaliser on a Python int (used for IPv6 keys)."""
    mask = (1 << 64) - 1
    x &= mask
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    return x ^ (x >> 31)


@njit(cache=True, nogil=True)
def _mix64(x):
    """splitmix64's finaliser: a bijective 64-bit mixer."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit(cache=True, nogil=True)
def _mod_inverse(a, m):
    """a^-1 mod m for a prime m (Fermat), with products below 2^62."""
    result = np.int64(1)
    base = a % m
    e = m - 2
    while e > 0:
        if e & 1:
            result = result * base % m
        base = base * base % m
        e >>= 1
    return result


@njit(cache=True, nogil=True)
def _populate_ring(keys, credit_per_round, ring_size, offset_seed, skip_seed, sparse_below):
    """Maglev's population loop. Reads keys (uint64, sorted, unique) and credit_per_round
    (float64 in (0, 1], 1 for the heaviest backend); returns int32 slots holding indices into keys.

    Each backend walks its own permutation of the slots (offset + j * skip mod M) and, on its
    turn, takes the next slot still free. Occupancy is a bitmap so that the probes of a large
    ring stay in cache. Once fewer than `sparse_below` slots are free, probing would cost ~M/free
    tries per slot; instead each turn scans the free list for the slot that comes first in the
    backend's permutation (smallest j = (slot - offset) * skip^-1 mod M). Every slot before the
    backend's current position is occupied, so that is exactly the slot probing would find:
    the ring is the same either way, only faster (tests/unit/test_maglev.py checks it).
    """
    n = keys.shape[0]
    m = np.int64(ring_size)
    ring = np.empty(ring_size, dtype=np.int32)
    occupied = np.zeros((ring_size + 63) // 64, dtype=np.uint64)
    offset = np.empty(n, dtype=np.int64)
    position = np.empty(n, dtype=np.int64)
    skip = np.empty(n, dtype=np.int64)
    credit = np.zeros(n, dtype=np.float64)
    for i in range(n):
        offset[i] = np.int64(_mix64(keys[i] ^ offset_seed) % np.uint64(m))
        skip[i] = np.int64(_mix64(keys[i] ^ skip_seed) % np.uint64(m - 1)) + 1
        position[i] = offset[i]
    filled = 0
    # Dense phase: probe.
    while filled < ring_size and ring_size - filled >= sparse_below:
        for i in range(n):
            credit[i] += credit_per_round[i]
            while credit[i] >= 1.0 and ring_size - filled >= sparse_below:
                credit[i] -= 1.0
                pos = position[i]
                step = skip[i]
                while occupied[pos >> 6] & (np.uint64(1) << np.uint64(pos & 63)):
                    pos += step
                    if pos >= m:
                        pos -= m
                occupied[pos >> 6] |= np.uint64(1) << np.uint64(pos & 63)
                ring[pos] = i
                pos += step
                if pos >= m:
                    pos -= m
                position[i] = pos
                filled += 1
            if ring_size - filled < sparse_below:
                # Finish this backend's turn and the round in the sparse phase: stop here with
                # the credit left as it is, and resume at backend i (its turn may be unfinished).
                return _populate_sparse(ring, occupied, offset, skip, credit, credit_per_round,
                                        ring_size - filled, i)
    return ring


@njit(cache=True, nogil=True)
def _populate_sparse(ring, occupied, offset, skip, credit, credit_per_round, free_count, resume_at):
    """The end of _populate_ring once few slots are free: scan the free list on each turn.
    Resumes the round-robin at backend `resume_at`, whose current turn may hold credit left."""
    n = offset.shape[0]
    m = np.int64(ring.shape[0])
    free = np.empty(free_count, dtype=np.int64)
    k = 0
    for pos in range(m):
        if not occupied[pos >> 6] & (np.uint64(1) << np.uint64(pos & 63)):
            free[k] = pos
            k += 1
    inverse = np.empty(n, dtype=np.int64)
    for i in range(n):
        inverse[i] = _mod_inverse(skip[i], m)
    scale = 1.0 / m
    remaining = free_count
    i = resume_at
    first_turn = True
    while remaining > 0:
        if not first_turn:
            credit[i] += credit_per_round[i]
        first_turn = False
        start, inv = offset[i], inverse[i]
        inv_scaled = inv * scale
        while credit[i] >= 1.0 and remaining > 0:
            credit[i] -= 1.0
            best_index = 0
            best_rank = m
            for f in range(remaining):
                # rank = (free - start) * inv mod m without a division: the quotient estimated in
                # floating point is off by at most one (products < 2^62, 53-bit mantissa), fixed below
                d = free[f] - start
                if d < 0:
                    d += m
                rank = d * inv - np.int64(d * inv_scaled) * m
                if rank < 0:
                    rank += m
                elif rank >= m:
                    rank -= m
                if rank < best_rank:
                    best_rank = rank
                    best_index = f
            ring[free[best_index]] = i
            remaining -= 1
            free[best_index] = free[remaining]
        i += 1
        if i == n:
            i = 0
    return ring


@njit(cache=True, nogil=True)
def _sparse_threshold(ring_size):
    """Free slots below which scanning the free list beats probing: a probe costs about one
    cache miss, a scanned slot two multiplies and a float quotient estimate; they break even
    near sqrt(M) (measured: 2 sqrt(M) is no faster, 4 sqrt(M) slower)."""
    return max(1, int(ring_size ** 0.5))


def build_maglev_ring(keys, weights=None, ring_size=None):
    """The Maglev ring over backends named by `keys` (backend_hash_key values, unique).

    Returns an int32 array of ring_size slots (default maglev_ring_size(len(keys))), each an
    index into `keys` in the caller's order; empty when there are no backends (or no weight).
    The result depends only on the set of (key, weight) pairs, not on their order.
    `weights`: optional non-negative numbers; a backend of weight 0 gets no slot.
    """
    keys = np.asarray(keys, dtype=np.uint64)
    n = keys.shape[0]
    if weights is None:
        weights = np.ones(n, dtype=np.float64)
    else:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (n,) or (weights < 0).any() or not np.isfinite(weights).all():
            raise ValueError(f"weights: need {n} finite non-negative numbers, got {weights!r}")
    keep = np.flatnonzero(weights > 0)
    if keep.size == 0:
        return np.empty(0, dtype=np.int32)
    order = keep[np.argsort(keys[keep], kind="stable")]
    sorted_keys = np.ascontiguousarray(keys[order])
    if sorted_keys.size > 1 and (sorted_keys[1:] == sorted_keys[:-1]).any():
        raise ValueError("keys: backends must be unique (the same address:port appears twice)")
    if ring_size is None:
        ring_size = maglev_ring_size(n)
    elif ring_size < 3 or (ring_size not in _RING_SIZE_SET and not is_prime(ring_size)):
        raise ValueError(f"ring_size: {ring_size!r} is not a prime >= 3 (every skip must "
                         "permute all slots)")
    credit = weights[order] / weights[order].max()
    slots = _populate_ring(sorted_keys, np.ascontiguousarray(credit), int(ring_size),
                           _OFFSET_SEED, _SKIP_SEED, _sparse_threshold(int(ring_size)))
    return order.astype(np.int32)[slots]


@njit(cache=True, nogil=True)
def _build_rings(keys, key_starts, ring_sizes, values, out, out_starts, offset_seed, skip_seed):
    """Many equal-weight rings in one call, without the GIL: ring j is built over
    keys[key_starts[j]:key_starts[j + 1]] (unique) and its slots hold the matching `values`,
    written to out[out_starts[j]:out_starts[j] + ring_sizes[j]]."""
    for j in range(ring_sizes.shape[0]):
        lo, hi = key_starts[j], key_starts[j + 1]
        order = np.argsort(keys[lo:hi], kind="mergesort")
        sorted_keys = keys[lo:hi][order]
        for k in range(1, hi - lo):
            if sorted_keys[k] == sorted_keys[k - 1]:
                raise ValueError("keys: backends must be unique within a ring")
        size = ring_sizes[j]
        slots = _populate_ring(sorted_keys, np.ones(hi - lo, dtype=np.float64), size, offset_seed,
                               skip_seed, _sparse_threshold(size))
        ring_values = values[lo:hi][order]
        base = out_starts[j]
        for s in range(size):
            out[base + s] = ring_values[slots[s]]


def build_maglev_rings(keys, key_starts, ring_sizes, values):
    """Equal-weight Maglev rings for many Services at once (the same rings build_maglev_ring
    gives, one call instead of one per Service, and the GIL is released while they are built).

    keys: uint64 backend_hash_key values, ring after ring; key_starts: len(ring_sizes) + 1 offsets
    into keys; ring_sizes: each ring's size (a prime, e.g. maglev_ring_size); values: one uint32
    per key, what the ring's slots hold (the pipeline's backend ids). Returns (slots, starts):
    the rings back to back in one uint32 array and where each begins."""
    keys = np.ascontiguousarray(keys, dtype=np.uint64)
    values = np.ascontiguousarray(values, dtype=np.uint32)
    ring_sizes = np.ascontiguousarray(ring_sizes, dtype=np.int64)
    key_starts = np.ascontiguousarray(key_starts, dtype=np.int64)
    if (key_starts.shape != (ring_sizes.size + 1,) or (np.diff(key_starts) < 1).any()
            or key_starts[0] < 0 or key_starts[-1] > keys.size or values.size != keys.size):
        raise ValueError("key_starts: need len(ring_sizes) + 1 increasing offsets into keys (one "
                         "value per key), every ring one key or more")
    odd = ring_sizes[~np.isin(ring_sizes, RING_SIZES)]
    if any(size < 3 or not is_prime(int(size)) for size in odd):
        raise ValueError(f"ring_sizes: {odd.tolist()[:5]} include a size that is not a prime >= 3")
    out_starts = np.zeros(ring_sizes.size, dtype=np.int64)
    np.cumsum(ring_sizes[:-1], out=out_starts[1:])
    out = np.empty(int(ring_sizes.sum()), dtype=np.uint32)
    _build_rings(keys, key_starts, ring_sizes, values, out, out_starts, _OFFSET_SEED, _SKIP_SEED)
    return out, out_starts
