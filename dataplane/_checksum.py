"""Big-endian field access and Internet checksums (RFC 1071 sums, RFC 1624 incremental updates)
on a UMEM uint8 array, for the pipeline. Pure njit helpers: callers check bounds, nothing raises.

Values are host-order int64 numbers; a checksum is the 16-bit value as read big-endian from the
frame. A "diff" is an unfolded one's-complement sum of (~old + new) 16-bit words (RFC 1624,
eqn. 3: HC' = ~(~HC + ~m + m')), so several field changes fold into one checksum update.
"""
import numpy as np
from dataplane._jit import packet_njit


@packet_njit(inline="always")
def load16(umem, off):
    return (np.int64(umem[off]) << 8) | np.int64(umem[off + 1])


@packet_njit(inline="always")
def load32(umem, off):
    return ((np.int64(umem[off]) << 24) | (np.int64(umem[off + 1]) << 16)
            | (np.int64(umem[off + 2]) << 8) | np.int64(umem[off + 3]))


@packet_njit(inline="always")
def store16(umem, off, value):
    umem[off] = (value >> 8) & 0xff
    umem[off + 1] = value & 0xff


@packet_njit(inline="always")
def store32(umem, off, value):
    umem[off] = (value >> 24) & 0xff
    umem[off + 1] = (value >> 16) & 0xff
    umem[off + 2] = (value >> 8) & 0xff
    umem[off + 3] = value & 0xff


@packet_njit(inline="always")
def csum_fold(s):
    """Fold an unfolded one's-complement sum (int64 >= 0) to 16 bits (not complemented)."""
    s = (s & 0xffff) + (s >> 16)
    s = (s & 0xffff) + (s >> 16)
    s = (s & 0xffff) + (s >> 16)
    return s


@packet_njit(inline="always")
def csum_diff16(old, new):
    return (~np.int64(old) & 0xffff) + (np.int64(new) & 0xffff)


@packet_njit(inline="always")
def csum_diff32(old, new):
    old = np.int64(old)
    new = np.int64(new)
    return ((~(old >> 16) & 0xffff) + (~old & 0xffff)
            + ((new >> 16) & 0xffff) + (new & 0xffff))


@packet_njit(inline="always")
def csum_apply(check, diff):
    """The checksum field value after changes summed in diff (RFC 1624 eqn. 3)."""
    return ~csum_fold((~np.int64(check) & 0xffff) + diff) & 0xffff


@packet_njit(inline="always")
def pseudo_diff_apply(partial_sum, diff):
    """A partial (offload) checksum field holds the folded pseudo-header sum, not complemented:
    it moves with the pseudo-header fields the other way round from a full checksum."""
    return csum_fold(np.int64(partial_sum) + diff)


@packet_njit
def csum_sum_bytes(umem, start, end, initial):
    """Unfolded one's-complement sum of the bytes [start, end) as big-endian words (an odd
    trailing byte is padded with zero), plus initial."""
    s = np.int64(initial)
    i = start
    while i + 1 < end:
        s += (np.int64(umem[i]) << 8) | np.int64(umem[i + 1])
        i += 2
    if i < end:
        s += np.int64(umem[i]) << 8
    return s


@packet_njit
def ipv4_header_checksum(umem, l3, header_len):
    """The IPv4 header checksum value for the header at l3 (its own field counted as 0)."""
    s = csum_sum_bytes(umem, l3, l3 + header_len, 0) - load16(umem, l3 + 10)
    # subtracting the field's value keeps the sum non-negative: it was added once above
    return ~csum_fold(s) & 0xffff


@packet_njit(inline="always")
def pseudo_header_sum(src_addr, dst_addr, proto, l4_len):
    """Unfolded sum of the IPv4 pseudo-header (addresses, protocol, L4 length)."""
    return (((src_addr >> 16) & 0xffff) + (src_addr & 0xffff)
            + ((dst_addr >> 16) & 0xffff) + (dst_addr & 0xffff) + proto + l4_len)


@packet_njit
def l4_checksum_full(umem, l4, l4_len, src_addr, dst_addr, proto, csum_field):
    """The full TCP/UDP checksum of the segment [l4, l4 + l4_len) (field at csum_field counted
    as 0). UDP callers map a result of 0 to 0xffff."""
    s = csum_sum_bytes(umem, l4, l4 + l4_len, pseudo_header_sum(src_addr, dst_addr, proto, l4_len))
    s -= load16(umem, csum_field)
    return ~csum_fold(s) & 0xffff
