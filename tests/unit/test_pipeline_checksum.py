"""Checksum helpers of the pipeline against a plain RFC 1071 reference: incremental (RFC 1624)
updates equal recomputation, including the 0x0000/0xffff corner RFC 1624 section 3 is about."""
import struct

import numpy as np

from dataplane import _checksum as c


def reference_checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff


def test_rfc1071_example_sum():
    """RFC 1071 section 3's example words sum to 0xddf2 (its checksum is ~0xddf2)."""
    data = np.frombuffer(bytes.fromhex("0001f203f4f5f6f7"), np.uint8)
    assert c.csum_fold(c.csum_sum_bytes(data, 0, 8, 0)) == 0xddf2


def test_incremental_update_equals_recomputation():
    """Changing a 32-bit and a 16-bit field and applying their diffs gives the recomputed sum."""
    rng = np.random.default_rng(7)
    for _ in range(2000):
        data = bytearray(rng.integers(0, 256, 40, dtype=np.uint8).tobytes())
        data[10:12] = b"\0\0"
        data[10:12] = struct.pack("!H", reference_checksum(bytes(data)))
        old32, old16 = struct.unpack("!I", data[12:16])[0], struct.unpack("!H", data[20:22])[0]
        new32, new16 = int(rng.integers(0, 2**32)), int(rng.integers(0, 2**16))
        diff = c.csum_diff32(old32, new32) + c.csum_diff16(old16, new16)
        updated = c.csum_apply(struct.unpack("!H", data[10:12])[0], diff)
        data[12:16] = struct.pack("!I", new32)
        data[20:22] = struct.pack("!H", new16)
        data[10:12] = b"\0\0"
        expected = reference_checksum(bytes(data))
        assert updated == expected or {updated, expected} == {0, 0xffff}


def test_ipv4_header_checksum_matches_reference():
    """ipv4_header_checksum ignores the stored field and equals the reference over the header."""
    header = bytearray(bytes.fromhex("450000730000400040110000c0a80001c0a800c7"))
    umem = np.frombuffer(bytes(header), np.uint8).copy()
    umem[10:12] = [0x12, 0x34]
    assert c.ipv4_header_checksum(umem, 0, 20) == reference_checksum(bytes(header)) == 0xb861


def test_l4_checksum_full_matches_reference():
    """The full TCP/UDP checksum equals the reference over pseudo-header + segment."""
    rng = np.random.default_rng(3)
    seg = bytearray(rng.integers(0, 256, 33, dtype=np.uint8).tobytes())
    seg[6:8] = b"\0\0"
    src, dst = 0x0a000001, 0xc0a80102
    pseudo = struct.pack("!IIBBH", src, dst, 0, 17, len(seg))
    umem = np.frombuffer(bytes(seg), np.uint8).copy()
    umem[6:8] = [0xab, 0xcd]
    assert c.l4_checksum_full(umem, 0, len(seg), src, dst, 17, 6) == reference_checksum(pseudo + bytes(seg))
