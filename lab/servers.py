"""Tiny real servers for the lab's Pods: HTTP and UDP echo that say who answered and whom they saw.

Run as `python -m lab.servers http PORT NAME` inside a Pod namespace. Each reply is one line,
`pod=NAME client=IP:PORT`, so tests can check load balancing, affinity and source-IP preservation.
"""
import http.server
import socket
import socketserver
import sys


def serve_http(port, name):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            if self.path.startswith("/bytes/"):
                body = b"x" * min(int(self.path.split("/")[2] or 0), 1 << 30)
            else:
                body = f"pod={name} client={self.client_address[0]}:{self.client_address[1]}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    Server(("0.0.0.0", port), Handler).serve_forever()


def serve_udp_echo(port, name):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    while True:
        data, peer = sock.recvfrom(65535)
        sock.sendto(f"pod={name} client={peer[0]}:{peer[1]} ".encode() + data, peer)


def serve_tcp_echo(port, name):
    """Echoes every byte back: a long-lived connection whose every reply proves it still stands."""
    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            while data := self.request.recv(65536):
                self.request.sendall(data)

    class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
        daemon_threads = True
        allow_reuse_address = True

    Server(("0.0.0.0", port), Handler).serve_forever()


SERVERS = {"http": serve_http, "udp": serve_udp_echo, "tcp-echo": serve_tcp_echo}

if __name__ == "__main__":
    kind, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    SERVERS[kind](port, name)
