"""Lab clients that measure continuity: run inside a namespace, print one JSON line at the end.

  python -m lab.clients connect-loop ADDRESS PORT SECONDS   fresh HTTP GETs back to back
  python -m lab.clients echo-stream ADDRESS PORT SECONDS    one long-lived TCP echo connection

connect-loop reports every attempt's (start, pod that answered or None), start counted from t0
(CLOCK_MONOTONIC, the same in every namespace and process); echo-stream sends a
numbered line every 20 ms on one connection and reports its local port, how many replies came,
the largest gap between two replies and whether the connection was reset or closed. Neither
asserts anything: the tests do.
"""
import json
import socket
import sys
import time


def connect_loop(address, port, seconds, timeout=0.25):
    attempts = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        start = time.monotonic() - t0
        pod = None
        try:
            with socket.create_connection((address, port), timeout=timeout) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                reply = b""
                while b"\n" not in reply.partition(b"pod=")[2] and (data := s.recv(4096)):
                    reply += data
                if b"pod=" in reply:
                    pod = reply.partition(b"pod=")[2].split()[0].decode()
        except OSError:
            pass
        attempts.append((round(start, 4), pod))
        if pod is None:
            time.sleep(0.02)
    return {"attempts": attempts, "t0": t0}


def echo_stream(address, port, seconds, interval=0.02):
    """One connection; every interval a numbered line; the echo server answers each line."""
    s = socket.create_connection((address, port), timeout=5)
    local_port = s.getsockname()[1]
    t0 = time.monotonic()
    arrivals, pending, sent, error, next_send = [], b"", 0, None, 0.0
    while (now := time.monotonic() - t0) < seconds:
        if now >= next_send:
            try:
                s.sendall(b"%d\n" % sent)
                sent += 1
            except OSError as e:
                error = f"send: {type(e).__name__}: {e}"
                break
            next_send = now + interval
        s.settimeout(max(0.001, next_send - now))
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
    return {"local_port": local_port, "sent": sent, "received": len(arrivals),
            "max_gap": round(max(gaps, default=0.0), 4), "error": error}


def main(argv):
    kind, address, port, seconds = argv[0], argv[1], int(argv[2]), float(argv[3])
    result = (connect_loop if kind == "connect-loop" else echo_stream)(address, port, seconds)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
