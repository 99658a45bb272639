"""Lab clients that measure continuity: run inside a namespace, print one JSON line at the end.

  python -m lab.clients connect-loop ADDRESS PORT SECONDS   fresh HTTP GETs back to back
  python -m lab.clients echo-stream ADDRESS PORT SECONDS    one long-lived TCP echo connection

connect-loop reports every attempt's (start, ok); echo-stream sends a numbered line every 20 ms
on one connection and reports the replies' arrival times, the largest gap between two replies
and whether the connection was reset or closed. Neither asserts anything: the tests do.
"""
import json
import socket
import sys
import time


def connect_loop(address, port, seconds, timeout=0.5):
    attempts = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        start = time.monotonic() - t0
        ok = False
        try:
            with socket.create_connection((address, port), timeout=timeout) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                reply = b""
                while b"pod=" not in reply and (data := s.recv(4096)):
                    reply += data
                ok = b"pod=" in reply
        except OSError:
            pass
        attempts.append((round(start, 4), ok))
        if not ok:
            time.sleep(0.02)
    return {"attempts": attempts}


def echo_stream(address, port, seconds, interval=0.02):
    """One connection; every interval a numbered line; the echo server answers each line."""
    s = socket.create_connection((address, port), timeout=5)
    s.settimeout(interval)
    t0 = time.monotonic()
    arrivals, pending, sent, error = [], b"", 0, None
    while time.monotonic() - t0 < seconds:
        try:
            s.sendall(b"%d\n" % sent)
            sent += 1
        except OSError as e:
            error = f"send: {type(e).__name__}: {e}"
            break
        try:
            data = s.recv(65536)
            if not data:
                error = "closed by peer"
                break
            pending += data
            while b"\n" in pending:
                _, pending = pending.split(b"\n", 1)
                arrivals.append(time.monotonic() - t0)
        except socket.timeout:
            pass
        except OSError as e:
            error = f"recv: {type(e).__name__}: {e}"
            break
    s.close()
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return {"sent": sent, "received": len(arrivals), "max_gap": round(max(gaps, default=0.0), 4),
            "error": error}


def main(argv):
    kind, address, port, seconds = argv[0], argv[1], int(argv[2]), float(argv[3])
    result = (connect_loop if kind == "connect-loop" else echo_stream)(address, port, seconds)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
