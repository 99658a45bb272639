"""Crafted SCTP packets over raw IP sockets, for labs on kernels without SCTP sockets: an
association's first two packets (INIT, INIT_ACK) sent and received as bytes, checked by a CRC32c
written here from RFC 9260 appendix A (independent of the dataplane's). Run inside a namespace:

  python -m lab.sctp_peer serve PORT SECONDS
      for SECONDS, answer every INIT to PORT with an INIT_ACK; one JSON line per INIT received
  python -m lab.sctp_peer call ADDRESS PORT SOURCE_PORT SECONDS
      send an INIT to ADDRESS:PORT from SOURCE_PORT (resent each second), wait for the reply from
      ADDRESS:PORT, print what was sent and what came back (one JSON line)

A raw IPPROTO_SCTP socket receives every SCTP packet of the namespace (with its IPv4 header) and,
being open, keeps the kernel from answering them with ICMP protocol unreachable.
"""
import json
import os
import socket
import struct
import sys
import time

IPPROTO_SCTP = 132
CHUNK_INIT, CHUNK_INIT_ACK = 1, 2
CHUNK_NAMES = {0: "DATA", 1: "INIT", 2: "INIT_ACK", 3: "SACK", 4: "HEARTBEAT", 5: "HEARTBEAT_ACK",
               6: "ABORT", 7: "SHUTDOWN", 8: "SHUTDOWN_ACK", 10: "COOKIE_ECHO", 11: "COOKIE_ACK",
               14: "SHUTDOWN_COMPLETE"}


def crc32c(data):
    """CRC32c bit by bit (reflected polynomial 0x82F63B78, all-ones initial value and final XOR)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def packet(sport, dport, tag, chunk_type, init_tag):
    """An SCTP packet holding one INIT or INIT_ACK chunk (no parameters), its CRC32c set."""
    chunk = struct.pack("!BBHIIHHI", chunk_type, 0, 20, init_tag, 65536, 10, 10, 1)
    header = struct.pack("!HHI", sport, dport, tag)
    crc = crc32c(header + bytes(4) + chunk)
    return header + struct.pack("<I", crc) + chunk


def parse(datagram):
    """What an IPv4 datagram carrying SCTP says: addresses, ports, tag, CRC (and whether it
    verifies), the chunk types, the first chunk's initiate tag when it is an INIT(_ACK)."""
    ihl = (datagram[0] & 0xf) * 4
    total = struct.unpack("!H", datagram[2:4])[0]
    sctp = datagram[ihl:total]
    sport, dport, tag = struct.unpack("!HHI", sctp[:8])
    field = struct.unpack("<I", sctp[8:12])[0]
    chunks, init_tag, o = [], None, 12
    while o + 4 <= len(sctp):
        kind, _, length = struct.unpack("!BBH", sctp[o:o + 4])
        chunks.append(CHUNK_NAMES.get(kind, kind))
        if kind in (CHUNK_INIT, CHUNK_INIT_ACK) and o + 8 <= len(sctp):
            init_tag = struct.unpack("!I", sctp[o + 4:o + 8])[0]
        if length < 4:
            break
        o += (length + 3) & ~3
    return {"src": socket.inet_ntoa(datagram[12:16]), "dst": socket.inet_ntoa(datagram[16:20]),
            "ttl": datagram[8], "sport": sport, "dport": dport, "tag": tag, "crc": field,
            "crc_ok": field == crc32c(sctp[:8] + bytes(4) + sctp[12:]), "chunks": chunks,
            "init_tag": init_tag}


def receive(sock, deadline, accept):
    """The first received SCTP packet (parsed) for which accept(parsed) holds, or None."""
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(min(left, 1.0))
        try:
            datagram = sock.recv(65535)
        except socket.timeout:
            continue
        got = parse(datagram)
        if accept(got):
            return got
    return None


def serve(port, seconds):
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_SCTP)
    print(json.dumps({"ready": True}), flush=True)
    deadline = time.monotonic() + seconds
    answered = 0
    while (got := receive(sock, deadline, lambda p: p["dport"] == port and p["chunks"] == ["INIT"])):
        own_tag = int.from_bytes(os.urandom(4), "big") | 1
        sock.sendto(packet(port, got["sport"], got["init_tag"], CHUNK_INIT_ACK, own_tag), (got["src"], 0))
        print(json.dumps({"received": got}), flush=True)
        answered += 1
    return 0 if answered else 1


def call(address, port, source_port, seconds):
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_SCTP)
    init_tag = int.from_bytes(os.urandom(4), "big") | 1
    init = packet(source_port, port, 0, CHUNK_INIT, init_tag)
    deadline = time.monotonic() + seconds
    sent = 0
    got = None
    while got is None and time.monotonic() < deadline:
        sock.sendto(init, (address, 0))
        sent += 1
        got = receive(sock, min(deadline, time.monotonic() + 1.0),
                      lambda p: (p["src"], p["sport"], p["dport"]) == (address, port, source_port))
    report = {"sent": {"init_tag": init_tag, "crc": struct.unpack("<I", init[8:12])[0], "count": sent},
              "reply": got}
    print(json.dumps(report), flush=True)
    return 0 if got else 1


def main(argv):
    if len(argv) == 3 and argv[0] == "serve":
        return serve(int(argv[1]), float(argv[2]))
    if len(argv) == 5 and argv[0] == "call":
        return call(argv[1], int(argv[2]), int(argv[3]), float(argv[4]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
