"""A loopback stand-in for kube-apiserver: the list/watch/CRUD protocol over HTTP on 127.0.0.1.

It stands in for a real kube-apiserver, which cannot be installed here; it does NOT validate
objects (so tests can inject malformed ones) and has no auth. What it honours: one increasing
resourceVersion across all objects, list with metadata.resourceVersion, watch from a version
(or with synthetic ADDED events when none is given), BOOKMARK events when allowWatchBookmarks,
410 Gone for a compacted version either as an HTTP status or as an in-stream ERROR event,
timeoutSeconds, dropped connections, restarts that lose the watch history. It can also misbehave
on purpose (misbehave(): 410 loops, empty bodies, endless lines, garbage, mid-stream closes,
hangs) and counts the requests it gets (requests). Objects put in from the kubernetes client's
models are serialised with ApiClient().sanitize_for_serialization.
Run as a script (`python tests/kube/apiserver.py --services N --endpoints M`) for benchmarks.
"""
import argparse
import bisect
import copy
import json
import select
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

# resource -> (group/version path prefix, apiVersion, kind, namespaced)
RESOURCES = {
    "services": ("/api/v1", "v1", "Service", True),
    "endpointslices": ("/apis/discovery.k8s.io/v1", "discovery.k8s.io/v1", "EndpointSlice", True),
    "nodes": ("/api/v1", "v1", "Node", False),
    "namespaces": ("/api/v1", "v1", "Namespace", False),
}
KIND_TO_RESOURCE = {kind: res for res, (_, _, kind, _) in RESOURCES.items()}

# What a misbehaving server does with a watch request (FakeApiServer.misbehave)
HOSTILE_WATCHES = {
    "gone_status": "every watch answered HTTP 410, even from the version a list just gave",
    "gone_event": "every watch answered 200 and an in-stream ERROR 410, even from a fresh version",
    "empty_body": "200 and an empty body at once (the chunked stream ends before any event)",
    "endless_line": "200, then one line that never ends, as fast as the client reads (chunked)",
    "endless_line_unchunked": "the same without chunking: a body delimited by the connection's close",
    "garbage": "200, a line that is not JSON, then silence until the client leaves",
    "close_mid_stream": "200, a BOOKMARK at the newest version, half an event, then a reset",
    "hang": "200 and the headers, then nothing until the client leaves",
}
ENDLESS_LINE_LIMIT = 512 << 20     # an endless line stops here (then hangs): a client keeping all
                                   # of it must not take the machine with it


def _to_dict(obj):
    if isinstance(obj, dict):
        return copy.deepcopy(obj)
    from kubernetes.client import ApiClient
    return ApiClient().sanitize_for_serialization(obj)


def status_body(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class Store:
    """The objects and their history; outlives server restarts (it plays etcd)."""

    def __init__(self):
        self.lock = threading.Condition()
        self.rv = 100                          # last resourceVersion handed out
        self.objects = {}                      # (resource, namespace, name) -> dict
        self.item_json = {}                    # same key -> the object as a list item, JSON bytes
        self.history = []                      # (rv, resource, namespace, event type, object dict)
        self.history_rvs = []                  # the rv column of history, for bisect
        self.oldest_rv = self.rv               # a watch from an rv below this gets 410
        self.generation = 0                    # bumped to end every open watch (expire/drop)

    def _record(self, resource, namespace, event_type, obj):
        self.history.append((self.rv, resource, namespace, event_type, obj))
        self.history_rvs.append(self.rv)
        self.lock.notify_all()

    def put(self, obj, resource=None):
        """Create or replace `obj` (a dict or a client model); returns the stored dict."""
        obj = _to_dict(obj)
        resource = resource or KIND_TO_RESOURCE[obj["kind"]]
        _, api_version, kind, namespaced = RESOURCES[resource]
        obj.setdefault("apiVersion", api_version)
        obj.setdefault("kind", kind)
        meta = obj.setdefault("metadata", {})
        if namespaced:
            meta.setdefault("namespace", "default")
        else:
            meta.pop("namespace", None)
        key = (resource, meta.get("namespace", ""), meta["name"])
        with self.lock:
            self.rv += 1
            meta["resourceVersion"] = str(self.rv)
            event_type = "MODIFIED" if key in self.objects else "ADDED"
            if event_type == "ADDED":
                meta.setdefault("uid", f"00000000-0000-0000-0000-{self.rv:012d}")
                meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            self.objects[key] = obj
            # encoded once, as the real server's watch cache does: lists are then a join
            self.item_json[key] = json.dumps({k: v for k, v in obj.items() if k not in ("kind", "apiVersion")},
                                             separators=(",", ":")).encode()
            self._record(resource, key[1], event_type, obj)
        return obj

    def delete(self, resource, namespace, name):
        with self.lock:
            obj = self.objects.pop((resource, namespace or "", name), None)
            self.item_json.pop((resource, namespace or "", name), None)
            if obj is None:
                return None
            self.rv += 1
            obj = dict(obj, metadata=dict(obj["metadata"], resourceVersion=str(self.rv)))
            self._record(resource, namespace or "", "DELETED", obj)
        return obj

    def compact(self):
        """Forget the history: a watch from any earlier resourceVersion now gets 410 Gone."""
        with self.lock:
            self.history.clear()
            self.history_rvs.clear()
            self.oldest_rv = self.rv
            self.lock.notify_all()

    def list_json(self, resource, namespace=None):
        """(resourceVersion, [JSON bytes of each item]) for a list response."""
        with self.lock:
            items = [j for (r, ns, _), j in self.item_json.items()
                     if r == resource and (namespace is None or ns == namespace)]
            return self.rv, items


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "xskproxy-test-apiserver/1"
    disable_nagle_algorithm = True           # as Go's net/http: no 40 ms stall after a header write

    def log_message(self, fmt, *args):       # quiet: tests read state, not access logs
        pass

    # --- plumbing ---
    def _send_json(self, code, body):
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_status(self, code, reason, message):
        self._send_json(code, status_body(code, reason, message))

    def _read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def _route(self):
        """(resource, namespace, name, query) of the request path, or None."""
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        for prefix in ("/api/v1", "/apis/discovery.k8s.io/v1"):
            if url.path.startswith(prefix + "/"):
                parts = url.path[len(prefix) + 1:].strip("/").split("/")
                break
        else:
            return None
        namespace = None
        if len(parts) >= 3 and parts[0] == "namespaces" and parts[2] in RESOURCES:
            namespace, parts = parts[1], parts[2:]
        if not parts or parts[0] not in RESOURCES or RESOURCES[parts[0]][0] != prefix:
            return None
        name = parts[1] if len(parts) > 1 else None
        return parts[0], namespace, name, query

    def _not_found(self):
        self._send_status(404, "NotFound", f"the server could not find the requested resource {self.path}")

    # --- verbs ---
    def do_GET(self):
        route = self._route()
        if route is None:
            return self._not_found()
        resource, namespace, name, query = route
        store = self.server.store
        if name is not None:
            with store.lock:
                obj = store.objects.get((resource, namespace or "", name))
            if obj is None:
                return self._send_status(404, "NotFound", f'{resource} "{name}" not found')
            return self._send_json(200, obj)
        watch = query.get("watch") in ("true", "1")
        self.server.count_request(resource, "watch" if watch else "list")
        if watch:
            hostile = self.server.hostile.get(resource)
            if hostile is not None:
                return self._misbehave(hostile, resource)
            return self._watch(resource, namespace, query)
        rv, items = store.list_json(resource, namespace)
        _, api_version, kind, _ = RESOURCES[resource]
        # list items carry no kind/apiVersion, as the real server's lists
        head = json.dumps({"kind": kind + "List", "apiVersion": api_version,
                           "metadata": {"resourceVersion": str(rv)}}, separators=(",", ":")).encode()
        data = head[:-1] + b',"items":[' + b",".join(items) + b"]}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        route = self._route()
        if route is None or route[2] is not None:
            return self._not_found()
        resource, namespace, _, _ = route
        obj = self._read_body()
        meta = obj.setdefault("metadata", {})
        if namespace:
            meta["namespace"] = namespace
        with self.server.store.lock:
            exists = (resource, meta.get("namespace", "") if RESOURCES[resource][3] else "",
                      meta.get("name")) in self.server.store.objects
        if exists:
            return self._send_status(409, "AlreadyExists", f'{resource} "{meta.get("name")}" already exists')
        self._send_json(201, self.server.store.put(obj, resource))

    def do_PUT(self):
        route = self._route()
        if route is None or route[2] is None:
            return self._not_found()
        resource, namespace, name, _ = route
        obj = self._read_body()
        meta = obj.setdefault("metadata", {})
        meta["name"] = name
        if namespace:
            meta["namespace"] = namespace
        store = self.server.store
        with store.lock:
            current = store.objects.get((resource, namespace or "", name))
            wanted_rv = meta.get("resourceVersion")
            if current is None:
                return self._send_status(404, "NotFound", f'{resource} "{name}" not found')
            if wanted_rv and wanted_rv != current["metadata"]["resourceVersion"]:
                return self._send_status(409, "Conflict", "the object has been modified")
            stored = store.put(obj, resource)
        self._send_json(200, stored)

    def do_DELETE(self):
        route = self._route()
        if route is None or route[2] is None:
            return self._not_found()
        resource, namespace, name, _ = route
        obj = self.server.store.delete(resource, namespace, name)
        if obj is None:
            return self._send_status(404, "NotFound", f'{resource} "{name}" not found')
        self._send_json(200, obj)

    # --- watch ---
    def _chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _event(self, event_type, obj):
        self._chunk(json.dumps({"type": event_type, "object": obj}, separators=(",", ":")).encode() + b"\n")

    def _watch(self, resource, namespace, query):
        server, store = self.server, self.server.store
        _, api_version, kind, _ = RESOURCES[resource]
        timeout = float(query.get("timeoutSeconds") or server.default_watch_timeout)
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        since = query.get("resourceVersion") or ""
        deadline = time.monotonic() + timeout
        with store.lock:
            if since not in ("", "0") and int(since) < store.oldest_rv:
                too_old = f"too old resource version: {since} ({store.oldest_rv})"
                if server.too_old_as == "status":
                    return self._send_status(410, "Expired", too_old)
                initial, start_rv, gone = [], None, too_old
            elif since in ("", "0"):
                start_rv, initial, gone = store.rv, [o for (r, ns, _), o in store.objects.items()
                                                    if r == resource and namespace in (None, ns)], None
            else:
                start_rv, initial, gone = int(since), [], None
            generation = store.generation
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")      # so the client never reuses this socket
        self.end_headers()
        self.close_connection = True
        conn = self.connection
        with server.watch_lock:
            server.watches.add(conn)
        try:
            if gone:
                self._event("ERROR", status_body(410, "Expired", gone))
                self._chunk(b"")
                return
            for obj in initial:
                self._event("ADDED", obj)
            sent_rv = start_rv
            next_bookmark = time.monotonic() + server.bookmark_interval
            while True:
                with store.lock:
                    while True:
                        now = time.monotonic()
                        if store.generation != generation or server.stopping:
                            break
                        if store.oldest_rv > sent_rv and store.rv > sent_rv:
                            break                       # compacted past us while we waited
                        if store.history_rvs and store.history_rvs[-1] > sent_rv:
                            break
                        wake = min(deadline, next_bookmark if bookmarks else deadline)
                        if now >= wake:
                            break
                        store.lock.wait(wake - now)
                    expired = store.generation != generation and server.expire_in_stream
                    if store.generation != generation or server.stopping:
                        events = None
                    elif store.oldest_rv > sent_rv and store.rv > sent_rv:
                        events, expired = None, True
                    else:
                        i = bisect.bisect_right(store.history_rvs, sent_rv)
                        events = [e for e in store.history[i:] if e[1] == resource
                                  and namespace in (None, e[2])]
                        new_rv = store.history_rvs[-1] if store.history_rvs else sent_rv
                    current_rv = store.rv
                if events is None:
                    if expired:
                        self._event("ERROR", status_body(410, "Expired",
                                                         f"too old resource version: {sent_rv} ({current_rv})"))
                        self._chunk(b"")
                    else:                                # dropped: no terminating chunk, just a reset
                        _abort(conn)
                    return
                for rv, _, _, event_type, obj in events:
                    self._event(event_type, obj)
                sent_rv = max(sent_rv, new_rv)
                now = time.monotonic()
                if bookmarks and now >= next_bookmark:
                    self._event("BOOKMARK", {"kind": kind, "apiVersion": api_version,
                                             "metadata": {"resourceVersion": str(max(sent_rv, current_rv))}})
                    sent_rv = max(sent_rv, current_rv)
                    next_bookmark = now + server.bookmark_interval
                if now >= deadline:
                    self._chunk(b"")                     # timeoutSeconds: a clean end of stream
                    return
        except (BrokenPipeError, ConnectionResetError, OSError):
            return
        finally:
            with server.watch_lock:
                server.watches.discard(conn)


    # --- misbehaving watches (HOSTILE_WATCHES) ---
    def _misbehave(self, mode, resource):
        if mode == "gone_status":
            return self._send_status(410, "Expired", "too old resource version: 1 (2)")
        server, conn = self.server, self.connection
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if mode != "endless_line_unchunked":
            self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        with server.watch_lock:
            server.watches.add(conn)
        try:
            if mode == "gone_event":
                self._event("ERROR", status_body(410, "Expired", "too old resource version: 1 (2)"))
                self._chunk(b"")
            elif mode == "empty_body":
                self._chunk(b"")
            elif mode in ("endless_line", "endless_line_unchunked"):
                self._endless_line(chunked=mode == "endless_line")
            elif mode == "garbage":
                self._chunk(b"<html>this is not JSON</html>\n")
                self._hold()
            elif mode == "close_mid_stream":
                _, api_version, kind, _ = RESOURCES[resource]
                self._event("BOOKMARK", {"kind": kind, "apiVersion": api_version,
                                         "metadata": {"resourceVersion": str(server.store.rv)}})
                self._chunk(b'{"type":"ADDED","obj')
                _abort(conn)
            elif mode == "hang":
                self._hold()
            else:
                raise ValueError(mode)
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass
        finally:
            with server.watch_lock:
                server.watches.discard(conn)

    def _endless_line(self, chunked):
        """Write one line that never ends; record how much of it went out before the client left."""
        piece = b"x" * (1 << 20)
        sent = 0
        try:
            start = b'{"type":"ADDED","object":{"metadata":{"name":"'
            self._chunk(start) if chunked else self.wfile.write(start)
            while sent < ENDLESS_LINE_LIMIT and not self.server.stopping:
                if chunked:
                    self._chunk(piece)
                else:
                    self.wfile.write(piece)
                sent += len(piece)
        except OSError:
            with self.server.watch_lock:
                self.server.endless_line_dropped_at.append(sent)
            return
        self._hold()

    def _hold(self):
        """Send nothing until the client closes its end or the server stops."""
        conn = self.connection
        while not self.server.stopping:
            readable, _, _ = select.select([conn], [], [], 0.05)
            if readable and not conn.recv(65536):
                return


def _abort(conn):
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def count_request(self, resource, verb):
        with self.watch_lock:
            self.requests.append((time.monotonic(), resource, verb))


class FakeApiServer:
    """The loopback API server. `store` survives restart(); `url` changes when the port does."""

    def __init__(self, store=None, port=0, bookmark_interval=1.0, too_old_as="event",
                 default_watch_timeout=1800):
        self.store = store or Store()
        self.port = port
        self.bookmark_interval = bookmark_interval
        self.too_old_as = too_old_as             # "event": in-stream ERROR 410, "status": HTTP 410
        self.default_watch_timeout = default_watch_timeout
        self._httpd = None
        self._thread = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        httpd = _Server(("127.0.0.1", self.port), _Handler)
        httpd.store = self.store
        httpd.bookmark_interval = self.bookmark_interval
        httpd.too_old_as = self.too_old_as
        httpd.default_watch_timeout = self.default_watch_timeout
        httpd.expire_in_stream = False
        httpd.stopping = False
        httpd.watches = set()
        httpd.watch_lock = threading.Lock()
        httpd.hostile = {}                       # resource -> HOSTILE_WATCHES mode
        httpd.requests = []                      # (monotonic time, resource, "list" | "watch")
        httpd.endless_line_dropped_at = []
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fake-apiserver-{self.port}", daemon=True)
        self._thread.start()
        return self

    def misbehave(self, mode, resource="services"):
        """Answer every watch of `resource` the hostile way `mode` (one of HOSTILE_WATCHES), or
        normally again with None. Lists are still answered normally."""
        if mode is not None and mode not in HOSTILE_WATCHES:
            raise ValueError(f"misbehave: {mode!r} is not one of {', '.join(HOSTILE_WATCHES)}")
        if mode is None:
            self._httpd.hostile.pop(resource, None)
        else:
            self._httpd.hostile[resource] = mode

    def requests(self, resource=None, verb=None, since=0.0):
        """Monotonic times of the list/watch requests received (of `resource`, `verb`), in order."""
        with self._httpd.watch_lock:
            return [t for t, r, v in self._httpd.requests
                    if t >= since and resource in (None, r) and verb in (None, v)]

    def endless_line_dropped_at(self):
        """Bytes of the endless line each client had been sent when it closed the connection."""
        with self._httpd.watch_lock:
            return list(self._httpd.endless_line_dropped_at)

    def stop(self):
        """Stop serving and reset every open connection, as a killed apiserver would."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.stopping = True
        httpd.shutdown()
        httpd.server_close()
        with self.store.lock:
            self.store.lock.notify_all()
        with httpd.watch_lock:
            for conn in list(httpd.watches):
                _abort(conn)
        self._thread.join(timeout=5)

    def restart(self, new_port=False):
        """Stop and start again (same port unless new_port); the watch history is lost, so
        watches resuming from an old resourceVersion get 410 and must re-list."""
        self.stop()
        self.store.compact()
        if new_port:
            self.port = 0
        return self.start()

    def expire_watches(self):
        """Send an in-stream ERROR 410 to every open watch and forget the history."""
        self._httpd.expire_in_stream = True
        open_now = self._open_watches()
        with self.store.lock:
            self.store.generation += 1
            self.store.compact()
        self._wait_closed(open_now)
        self._httpd.expire_in_stream = False

    def drop_watches(self):
        """Reset every open watch connection without a terminating chunk (history is kept)."""
        open_now = self._open_watches()
        with self.store.lock:
            self.store.generation += 1
            self.store.lock.notify_all()
        self._wait_closed(open_now)

    def watch_count(self):
        with self._httpd.watch_lock:
            return len(self._httpd.watches)

    def _open_watches(self):
        with self._httpd.watch_lock:
            return set(self._httpd.watches)

    def _wait_closed(self, watches, timeout=5):
        """Wait until none of `watches` is open (the clients may have opened new ones meanwhile)."""
        deadline = time.monotonic() + timeout
        while self._open_watches() & watches and time.monotonic() < deadline:
            time.sleep(0.01)

    # conveniences for tests
    def put(self, obj, resource=None):
        return self.store.put(obj, resource)

    def delete(self, kind, namespace, name):
        return self.store.delete(KIND_TO_RESOURCE[kind], namespace, name)

    def kubeconfig_text(self):
        return kubeconfig_text(self.url)

    def __enter__(self):
        return self.start() if self._httpd is None else self

    def __exit__(self, *exc):
        self.stop()


def kubeconfig_text(url):
    """A kubeconfig pointing at `url` with no credentials."""
    return (f"apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n"
            "users:\n- name: fake\n  user: {}\ncontexts:\n- name: fake\n  context:\n"
            "    cluster: fake\n    user: fake\ncurrent-context: fake\n")


# --- synthetic clusters, as dicts (the models are built once per shape, then copied) ---

def synthetic_objects(services, endpoints, nodes=10, endpoints_per_slice=100):
    """Services with ClusterIPs, EndpointSlices with `endpoints` endpoints spread over them, Nodes."""
    out = []
    for n in range(nodes):
        out.append({"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"node-{n}"},
                    "spec": {"podCIDR": f"10.{n // 256 + 128}.{n % 256}.0/24"},
                    "status": {"addresses": [{"type": "InternalIP", "address": f"192.168.{n // 256}.{n % 256 + 1}"}]}})
    per_service = max(1, endpoints // max(1, services))
    ep = 0
    for s in range(services):
        name = f"svc-{s}"
        out.append({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": name, "namespace": "bench"},
                    "spec": {"clusterIP": f"10.96.{s // 256}.{s % 256}", "clusterIPs": [f"10.96.{s // 256}.{s % 256}"],
                             "type": "ClusterIP",
                             "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}})
        count = per_service if s < services - 1 else max(per_service, endpoints - ep)
        for first in range(0, count, endpoints_per_slice):
            eps = []
            for i in range(first, min(count, first + endpoints_per_slice)):
                a = ep + i
                eps.append({"addresses": [f"10.{a >> 16 & 127}.{a >> 8 & 255}.{a & 255}"],
                            "conditions": {"ready": True, "serving": True, "terminating": False},
                            "nodeName": f"node-{a % nodes}"})
            out.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                        "metadata": {"name": f"{name}-{first // endpoints_per_slice}", "namespace": "bench",
                                     "labels": {"kubernetes.io/service-name": name}},
                        "endpoints": eps, "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
        ep += count
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--services", type=int, default=0)
    parser.add_argument("--endpoints", type=int, default=0)
    parser.add_argument("--nodes", type=int, default=10)
    args = parser.parse_args(argv)
    server = FakeApiServer(port=args.port)
    for obj in synthetic_objects(args.services, args.endpoints, args.nodes):
        server.store.put(obj)
    server.start()
    print(server.url, flush=True)              # the parent reads the URL from the first line
    try:
        sys.stdin.read()                        # runs until stdin closes
    finally:
        server.stop()


if __name__ == "__main__":
    main()
