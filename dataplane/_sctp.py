"""SCTP for the pipeline (RFC 9260): the CRC32c checksum, the chunk walk and the association
states conntrack keeps. Pure njit helpers over a UMEM uint8 array; callers check that the
12-byte common header lies inside the packet; nothing raises, nothing allocates.

CRC32c (Castagnoli, reflected polynomial 0x82F63B78, initial value and final XOR 0xffffffff) is
computed a byte at a time from CRC32C_TABLE, over the SCTP packet with its checksum field read
as zero; the field holds the result least significant byte first (RFC 9260 appendix A, as
Linux's sctp_compute_cksum stores it). SCTP has no pseudo-header: rewriting IP addresses leaves
the CRC valid; rewriting a port means computing it again, over the whole packet.
"""
import numpy as np
from dataplane._jit import packet_njit

from dataplane import abi
from dataplane._checksum import load16, load32

L = abi.lib
CRC32C_POLY_REFLECTED = 0x82F63B78

# chunk types (RFC 9260 3.2); CHUNK_* are their bits in a packet's chunk set (types below 64)
CHUNK_DATA_TYPE = 0
CHUNK_INIT_TYPE = 1
CHUNK_INIT_ACK_TYPE = 2
CHUNK_ABORT_TYPE = 6
CHUNK_SHUTDOWN_TYPE = 7
CHUNK_SHUTDOWN_ACK_TYPE = 8
CHUNK_COOKIE_ECHO_TYPE = 10
CHUNK_COOKIE_ACK_TYPE = 11
CHUNK_SHUTDOWN_COMPLETE_TYPE = 14
CHUNK_INIT = 1 << CHUNK_INIT_TYPE
CHUNK_INIT_ACK = 1 << CHUNK_INIT_ACK_TYPE
CHUNK_ABORT = 1 << CHUNK_ABORT_TYPE
CHUNK_SHUTDOWN = 1 << CHUNK_SHUTDOWN_TYPE
CHUNK_SHUTDOWN_ACK = 1 << CHUNK_SHUTDOWN_ACK_TYPE
CHUNK_COOKIE_ECHO = 1 << CHUNK_COOKIE_ECHO_TYPE
CHUNK_COOKIE_ACK = 1 << CHUNK_COOKIE_ACK_TYPE
CHUNK_SHUTDOWN_COMPLETE = 1 << CHUNK_SHUTDOWN_COMPLETE_TYPE
# chunks that must be alone in their packet / must come first (RFC 9260 6.10, as nf_conntrack)
_CHUNKS_ALONE = CHUNK_INIT | CHUNK_INIT_ACK | CHUNK_SHUTDOWN_COMPLETE
_CHUNKS_FIRST = _CHUNKS_ALONE | CHUNK_COOKIE_ECHO | CHUNK_COOKIE_ACK
INIT_CHUNK_MIN_LEN = 20          # chunk header + initiate tag, a_rwnd, streams, initial TSN

COMMON_HEADER_LEN = 12           # ports, verification tag, checksum
CHECKSUM_OFFSET = 8

DROP_SCTP_BAD_CHUNK = L.XSKP_DROP_SCTP_BAD_CHUNK
DROP_SCTP_BAD_CRC = L.XSKP_DROP_SCTP_BAD_CRC
DROP_SCTP_INVALID = L.XSKP_DROP_SCTP_INVALID
CNT_CSUM_COMPLETED = L.XSKP_CNT_CSUM_COMPLETED
ST_ESTABLISHED = L.XSKP_CT_ESTABLISHED
ST_COOKIE_WAIT = L.XSKP_CT_SCTP_COOKIE_WAIT
ST_COOKIE_ECHOED = L.XSKP_CT_SCTP_COOKIE_ECHOED
ST_SHUTDOWN = L.XSKP_CT_SCTP_SHUTDOWN
ST_CLOSED = L.XSKP_CT_SCTP_CLOSED


def _crc32c_table():
    """CRC32c of each byte value (the reflected, byte-at-a-time table)."""
    table = np.zeros(256, np.uint32)
    for value in range(256):
        crc = value
        for _ in range(8):
            crc = (crc >> 1) ^ (CRC32C_POLY_REFLECTED if crc & 1 else 0)
        table[value] = crc
    return table


CRC32C_TABLE = _crc32c_table()


@packet_njit(inline="always")
def crc32c_update(crc, umem, start, end):
    """The running (not yet complemented) CRC32c crc advanced over the bytes [start, end)."""
    for i in range(start, end):
        crc = np.int64(CRC32C_TABLE[(crc ^ np.int64(umem[i])) & 0xff]) ^ (crc >> 8)
    return crc


@packet_njit
def crc32c_bytes(umem, start, end):
    """CRC32c of the bytes [start, end) (the check value of b"123456789" is 0xE3069283)."""
    return crc32c_update(np.int64(0xffffffff), umem, start, end) ^ 0xffffffff


@packet_njit
def sctp_checksum(umem, l4, end):
    """CRC32c of the SCTP packet [l4, end) with its checksum field counted as zero."""
    crc = crc32c_update(np.int64(0xffffffff), umem, l4, l4 + CHECKSUM_OFFSET)
    for _ in range(4):
        crc = np.int64(CRC32C_TABLE[crc & 0xff]) ^ (crc >> 8)
    crc = crc32c_update(crc, umem, l4 + COMMON_HEADER_LEN, end)
    return crc ^ 0xffffffff


@packet_njit(inline="always")
def load_checksum(umem, l4):
    """The checksum field's value (least significant byte first)."""
    o = l4 + CHECKSUM_OFFSET
    return (np.int64(umem[o]) | (np.int64(umem[o + 1]) << 8) | (np.int64(umem[o + 2]) << 16)
            | (np.int64(umem[o + 3]) << 24))


@packet_njit(inline="always")
def store_checksum(umem, l4, crc):
    o = l4 + CHECKSUM_OFFSET
    umem[o] = crc & 0xff
    umem[o + 1] = (crc >> 8) & 0xff
    umem[o + 2] = (crc >> 16) & 0xff
    umem[o + 3] = (crc >> 24) & 0xff


@packet_njit(inline="always")
def verify_checksum(umem, l4, end, counters):
    """True when the packet's CRC32c verifies. A field of 0 that does not is a partial checksum
    (a local sender's SCTP CRC offload, NETIF_F_SCTP_CRC on veth, leaves it 0 for the device):
    it is completed here and counted under XSKP_CNT_CSUM_COMPLETED."""
    crc = sctp_checksum(umem, l4, end)
    field = load_checksum(umem, l4)
    if field == crc:
        return True
    if field != 0:
        return False
    store_checksum(umem, l4, crc)
    counters[CNT_CSUM_COMPLETED] += 1
    return True


@packet_njit
def parse_chunks(umem, l4, end):
    """Walk the chunks of the SCTP packet [l4, end): (drop reason or 0, chunk set), the chunk set
    having bit t for each chunk of type t < 64. Refused (XSKP_DROP_SCTP_BAD_CHUNK) as
    nf_conntrack refuses them: no chunk, a chunk length below 4 or past the end, an INIT,
    INIT_ACK or SHUTDOWN_COMPLETE not alone, a COOKIE_ECHO or COOKIE_ACK not first, an INIT or
    INIT_ACK too short for its fixed fields. Then XSKP_DROP_SCTP_INVALID for an INIT whose
    verification tag is not 0 (RFC 9260 8.5.1 A)."""
    chunks = np.int64(0)
    o = l4 + COMMON_HEADER_LEN
    count = 0
    while o < end:
        if o + 4 > end:
            return DROP_SCTP_BAD_CHUNK, chunks
        chunk_type = np.int64(umem[o])
        length = load16(umem, o + 2)
        if length < 4 or o + length > end:
            return DROP_SCTP_BAD_CHUNK, chunks
        bit = np.int64(1) << chunk_type if chunk_type < 64 else np.int64(0)
        if count != 0 and ((bit & _CHUNKS_FIRST) != 0 or (chunks & _CHUNKS_ALONE) != 0):
            return DROP_SCTP_BAD_CHUNK, chunks
        if (bit & (CHUNK_INIT | CHUNK_INIT_ACK)) != 0 and length < INIT_CHUNK_MIN_LEN:
            return DROP_SCTP_BAD_CHUNK, chunks
        chunks |= bit
        count += 1
        o += (length + 3) & ~3
    if count == 0:
        return DROP_SCTP_BAD_CHUNK, chunks
    if (chunks & CHUNK_INIT) != 0 and load32(umem, l4 + 4) != 0:
        return DROP_SCTP_INVALID, chunks
    return 0, chunks


@packet_njit(inline="always")
def opens_association(chunks):
    """The packet may open a new flow: its only chunk is an INIT (a first packet with any other
    chunk is one nf_conntrack marks INVALID, or one no NAT could resume)."""
    return chunks == CHUNK_INIT


@packet_njit(inline="always")
def closing_or_closed(state):
    """An SCTP flow in a state where a new INIT on its tuple starts a new association."""
    return state == ST_SHUTDOWN or state == ST_CLOSED


@packet_njit
def next_state(state, chunks, is_reply):
    """The state of an SCTP flow in state after a packet with this chunk set, in the original
    direction or the reply one (nf_conntrack_proto_sctp.c's transitions, SHUTDOWN_SENT,
    SHUTDOWN_RECD and SHUTDOWN_ACK_SENT being one closing state): ABORT or SHUTDOWN_COMPLETE
    closes; SHUTDOWN or SHUTDOWN_ACK starts closing; COOKIE_ECHO after INIT, then COOKIE_ACK
    in reply, establish. A closed flow stays closed."""
    if state == ST_CLOSED:
        return state
    if (chunks & (CHUNK_ABORT | CHUNK_SHUTDOWN_COMPLETE)) != 0:
        return ST_CLOSED
    if (chunks & (CHUNK_SHUTDOWN | CHUNK_SHUTDOWN_ACK)) != 0:
        return ST_SHUTDOWN
    if state == ST_COOKIE_WAIT and not is_reply and (chunks & CHUNK_COOKIE_ECHO) != 0:
        return ST_COOKIE_ECHOED
    if state == ST_COOKIE_ECHOED and is_reply and (chunks & CHUNK_COOKIE_ACK) != 0:
        return ST_ESTABLISHED
    return state
