"""Health endpoints as kube-proxy serves them: an HTTP server per Service healthCheckNodePort on the
node addresses (200 with local ready endpoints, else 503) and the node's /healthz and /livez
(200 while the dataplane really forwards). One thread serves every socket without blocking;
nothing a client sends, or withholds, can stall or stop the agent.

Pure parts first (what to answer: local endpoint counts, the addresses to listen on, the HTTP
request head and the answers), then DataplaneProbe (what "healthy" means, read off the agent),
then HealthServers (the sockets).
"""
import errno
import ipaddress
import json
import logging
import selectors
import socket
import threading
import time
from dataclasses import dataclass
from email.utils import formatdate

log = logging.getLogger("xskproxy.health")

REFRESH_SECONDS = 1.0          # how often the serving thread asks the probe about the dataplane
SYNC_TIMEOUT = 30.0            # a cluster change unpublished (or publishing failing) this long: unhealthy
WORKER_STALL_SECONDS = 2.0     # a worker returns every 5 ms; silent this long, it is stuck
CLIENT_TIMEOUT = 5.0           # a client must send its request head and take the answer within this
MAX_CLIENTS = 256              # open client connections; beyond, the oldest one is dropped
MAX_REQUEST_BYTES = 8192       # a request head longer than this is refused (431)
RETRY_SECONDS = 5.0            # a listen that failed (address busy or not yet there) is retried after
LISTEN_BACKLOG = 64


# --- what to serve (pure) ------------------------------------------------------------------

def health_check_services(cluster, node_name, options, skip_reason):
    """{(namespace, name): (healthCheckNodePort, local ready endpoints)} for every Service with a
    healthCheckNodePort that xskproxy proxies (`skip_reason(service, options)` None), counted as
    kube-proxy counts them: distinct addresses of ready endpoints on `node_name` in the
    Service's EndpointSlices (terminating ones do not count: a node with only those fails), slices
    labelled service-proxy-name or headless left out as kube-proxy's selector leaves them."""
    wanted = {key: s.health_check_node_port for key, s in cluster.services.items()
              if s.health_check_node_port and skip_reason(s, options) is None}
    if not wanted:
        return {}
    local = {key: set() for key in wanted}
    for s in cluster.endpoint_slices.values():
        addresses = local.get(s.service_key)
        if (addresses is None or s.address_type not in ("IPv4", "IPv6")
                or s.proxy_ignored_label is not None):      # a slice kube-proxy does not watch
            continue
        for e in s.endpoints:
            if e.ready and e.node_name == node_name:
                addresses.update(e.addresses[:1])
    return {key: (port, len(local[key])) for key, port in wanted.items()}


def node_addresses(network, cluster, node_name, cidrs=()):
    """The node addresses health-check ports listen on, as NodePorts are served: the addresses of
    the node's interfaces (without loopback and link-local), else the Node's InternalIPs; only
    those inside `cidrs` (nodePortAddresses) when it is not empty. Sorted strings."""
    found = [a.address for a in network.addresses] if network is not None else []
    if not found:
        node = cluster.nodes.get(node_name)
        found = list(node.internal_ips()) if node is not None else []
    nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
    out = set()
    for text in found:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        if address.is_loopback or address.is_link_local:
            continue
        if nets and not any(address.version == n.version and address in n for n in nets):
            continue
        out.add(str(address))
    return tuple(sorted(out))


class BadRequest(Exception):
    """A request head that is not HTTP/1.x; `status` is the answer's code."""

    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status


def parse_request_head(data):
    """(method, path) of an HTTP/1.x request whose head is complete in `data` (bytes), None while
    it is not; raises BadRequest when it cannot be one. The query string is dropped."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
    if end < 0:
        if len(data) > MAX_REQUEST_BYTES:
            raise BadRequest(431, "request head too long")
        return None
    if end > MAX_REQUEST_BYTES:
        raise BadRequest(431, "request head too long")
    line = data[:end].split(b"\n", 1)[0].rstrip(b"\r")
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[0].isupper():
        raise BadRequest(400, "not an HTTP request line")
    method, target, version = parts
    if version not in (b"HTTP/1.0", b"HTTP/1.1"):
        raise BadRequest(505 if version.startswith(b"HTTP/") else 400, "not HTTP/1.x")
    if target.startswith((b"http://", b"https://")):          # absolute form: keep the path
        target = b"/" + target.split(b"/", 3)[3] if target.count(b"/") >= 3 else b"/"
    if not target.startswith(b"/"):
        raise BadRequest(400, "the target is not a path")
    try:
        path = target.split(b"?", 1)[0].decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest(400, "the target is not ASCII") from None
    return method.decode("ascii"), path


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 431: "Request Header Fields Too Large",
            503: "Service Unavailable", 505: "HTTP Version Not Supported"}


def http_response(status, body, headers=(), head_only=False, now=None):
    """The bytes of a complete HTTP/1.1 answer that closes the connection."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
             f"Date: {formatdate(now, usegmt=True)}", f"Content-Length: {len(body)}", "Connection: close"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head if head_only else head + body


_JSON_HEADERS = (("Content-Type", "application/json"), ("X-Content-Type-Options", "nosniff"))


def service_health_answer(namespace, name, local_endpoints, proxy_healthy):
    """(status, headers, body) of a healthCheckNodePort, as kube-proxy answers every path and
    method: 200 when the node has local ready endpoints and the proxy is healthy, else 503."""
    status = 200 if local_endpoints > 0 and proxy_healthy else 503
    body = json.dumps({"service": {"namespace": namespace, "name": name},
                       "localEndpoints": local_endpoints, "serviceProxyHealthy": proxy_healthy},
                      indent=2).encode()
    headers = _JSON_HEADERS + (("X-Load-Balancing-Endpoint-Weight", str(local_endpoints)),)
    return status, headers, body


@dataclass(frozen=True)
class NodeHealth:
    """One look at the dataplane: healthy, what is wrong when not, when it was last healthy;
    and whether the Node is eligible (not being deleted), which only /healthz reports."""
    healthy: bool = False
    problems: tuple = ("not checked yet",)
    last_healthy: float = 0.0         # Unix time; 0: never
    node_eligible: bool = True


def _rfc3339(unix):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(unix)) + f".{int(unix % 1 * 1e6):06d}Z"


def node_health_answer(path, health, now):
    """(status, headers, body) for the node health server's `path`: /healthz and /livez as
    kube-proxy's (lastUpdated, currentTime; /healthz also fails while the Node is being deleted,
    nodeEligible false), plus the problems found; 404 elsewhere."""
    if path not in ("/healthz", "/livez"):
        return 404, (("Content-Type", "text/plain; charset=utf-8"),), b"404 page not found\n"
    last = now if health.healthy else health.last_healthy
    body = {"lastUpdated": _rfc3339(last) if last else "", "currentTime": _rfc3339(now)}
    healthy = health.healthy
    if path == "/healthz":
        body["nodeEligible"] = health.node_eligible
        healthy = healthy and health.node_eligible
    body["problems"] = list(health.problems)
    return (200 if healthy else 503), _JSON_HEADERS, json.dumps(body).encode()


# --- what "healthy" means ------------------------------------------------------------------

def xdp_program_ids(ifnames):
    """{interface name: the id of the XDP program the kernel runs there (0: none), or None when
    the interface is gone}, in the calling thread's network namespace (libbpf's query: tens of
    microseconds, where an rtnetlink client in Python took milliseconds every second)."""
    from dataplane import xsk
    out = {}
    for ifname in ifnames:
        try:
            out[ifname] = xsk.attached_program(ifname)[0]
        except OSError as e:
            if e.errno != errno.ENODEV:       # ENODEV: no such interface (xsk.ifindex_of)
                raise
            out[ifname] = None
    return out


class DataplaneProbe:
    """Whether the agent's dataplane forwards what the cluster says, read off the agent and the
    kernel: the steering program attached to both served interfaces (and, by `read_xdp`, still
    the XDP program the kernel runs there, or on the socket end of an interface's upcall pair),
    with flowOffload the tc fast path's heartbeat fresh, every worker thread alive with its sockets bound and running slices, and no cluster change
    left unpublished (nor publishing failing) for longer than `sync_timeout`. Called by the
    health thread about once a second; also keeps the kubeproxy_* pending counts through
    `metrics.check`. read_xdp=None skips the kernel's side."""

    def __init__(self, agent, metrics, sync_timeout=SYNC_TIMEOUT, stall_seconds=WORKER_STALL_SECONDS,
                 read_xdp=xdp_program_ids):
        self.agent = agent
        self.metrics = metrics
        self.sync_timeout = sync_timeout
        self.stall_seconds = stall_seconds
        self.read_xdp = read_xdp
        self.failing_since = None          # monotonic time the current run of failed publishes was seen
        self.last_healthy = 0.0

    def __call__(self, now=None, monotonic_now=None):
        now = time.time() if now is None else now
        monotonic_now = time.monotonic() if monotonic_now is None else monotonic_now
        problems = self.problems(monotonic_now, now)
        if not problems:
            self.last_healthy = now
        return NodeHealth(healthy=not problems, problems=tuple(problems), last_healthy=self.last_healthy,
                          node_eligible=self.node_eligible())

    def node_eligible(self):
        """False while the published state shows this Node being deleted (deletionTimestamp, or
        the cluster autoscaler's ToBeDeletedByClusterAutoscaler taint); true otherwise, also
        before the Node is known (kube-proxy's rule)."""
        sync = self.agent.sync
        published = sync.published if sync is not None else None
        node = published.cluster.nodes.get(self.agent.config.node_name) if published is not None else None
        return node is None or not node.to_be_deleted

    def problems(self, monotonic_now, now):
        agent, cfg = self.agent, self.agent.config
        out = []
        steering = agent.steering
        if steering is None or not agent.steering_ready:
            out.append("the steering program is not loaded")
        else:
            served = (cfg.transport_interface, cfg.gateway_interface)
            for ifname in served:
                entry = steering.ifaces.get(ifname)
                if entry is None or entry[2] is None:
                    out.append(f"the steering program is not attached to {ifname}")
            if not out and self.read_xdp is not None:
                out.extend(self._kernel_problems(steering, served))
            fast_path_live = getattr(agent, "fast_path_live", None)
            if fast_path_live is not None and fast_path_live() is False:
                out.append("the tc fast path's heartbeat has stopped: it executes no flow and "
                           "makes no upcall")
        if not agent.workers:
            out.append("no worker runs")
        for worker in agent.workers:
            q = worker.queue
            thread = getattr(worker, "_thread", None)
            if worker.error is not None:
                out.append(f"queue {q}: the worker failed: {worker.error!r}"[:200])
            elif thread is None or not thread.is_alive():
                out.append(f"queue {q}: the worker is not running")
            else:
                last = worker.last_pass_at()
                if last and monotonic_now - last > self.stall_seconds:
                    out.append(f"queue {q}: the worker's loop has not run for {monotonic_now - last:.1f}s")
            for i, ifname in enumerate((cfg.transport_interface, cfg.gateway_interface)):
                sock = worker.sockets[i] if i < len(worker.sockets) else None
                if ifname and (sock is None or not sock.handle):
                    out.append(f"queue {q}: no socket bound on {ifname}")
        out.extend(self._sync_problems(monotonic_now, now))
        return out

    def _kernel_problems(self, steering, served):
        """The kernel's view: our XDP program still runs where we attached it (an interface in
        upcall mode has it on its pair's socket end). Another program loaded over ours, or a
        deleted upcall pair, stops the redirects while the agent's own bookkeeping looks fine."""
        ours = {i for i in steering.object_ids()["prog"] if i}
        devices = {ifname: steering.upcall_pairs.get(ifname, (None, ifname))[1] for ifname in served}
        try:
            running = self.read_xdp(sorted(set(devices.values())))
        except Exception as e:             # a netlink hiccup is not the dataplane's failure
            log.warning("event=health_xdp_read_failed error=%r", str(e))
            return []
        out = []
        for ifname, device in devices.items():
            where = ifname if device == ifname else f"{device} (upcall pair of {ifname})"
            prog = running.get(device)
            if prog is None:
                out.append(f"{where} is gone")
            elif prog not in ours:
                out.append(f"the XDP program on {where} is not ours (" +
                           (f"program id {prog})" if prog else "none attached)"))
        return out

    def _sync_problems(self, monotonic_now, now):
        agent = self.agent
        sync, source = agent.sync, agent.source
        if sync is None or source is None:
            return ["the sync loop is not running"]
        out = []
        if sync.consecutive_failures:
            if self.failing_since is None:
                self.failing_since = monotonic_now
            if monotonic_now - self.failing_since > self.sync_timeout:
                out.append(f"publishing has failed {sync.consecutive_failures} times in a row for "
                           f"{monotonic_now - self.failing_since:.0f}s: {sync.last_error}"[:300])
        else:
            self.failing_since = None
        has_synced = getattr(source, "has_synced", None)
        if has_synced is None or has_synced():
            published = sync.published
            self.metrics.check(source.snapshot(), published.cluster if published is not None else None,
                               sync.counters.get("notifications"), now, monotonic_now)
            since = self.metrics.out_of_sync_since
            if since is not None and monotonic_now - since > self.sync_timeout:
                out.append(f"cluster changes unpublished for {monotonic_now - since:.0f}s "
                           f"({self.metrics.service_changes_pending} Services, "
                           f"{self.metrics.endpoint_changes_pending} with endpoint changes)")
        return out


# --- the sockets ---------------------------------------------------------------------------

def split_host_port(text):
    """("host", port) of "host:port" or "[v6]:port"."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class _Client:
    __slots__ = ("sock", "target", "deadline", "received", "outgoing")

    def __init__(self, sock, target, deadline):
        self.sock, self.target, self.deadline = sock, target, deadline
        self.received = b""
        self.outgoing = None             # bytes still to send once the answer is made


class HealthServers:
    """Serves the node health endpoint on `healthz_address` ("" or None: none) and each Service's
    healthCheckNodePort on the node addresses, all from one daemon thread with non-blocking
    sockets. set_services() hands in what to serve (at each publish); the probe is asked about
    the dataplane every REFRESH_SECONDS. A listen that fails is logged and retried; a client gets
    CLIENT_TIMEOUT for its request and answer, and at most MAX_CLIENTS are open."""

    def __init__(self, probe, healthz_address=None, refresh=REFRESH_SECONDS):
        self._probe = probe
        self._refresh = refresh
        self._wanted = {}                     # (host, port) -> ("node", None) | ("service", (ns, name))
        if healthz_address:
            self._wanted[split_host_port(healthz_address)] = ("node", None)
        self._node_address = split_host_port(healthz_address) if healthz_address else None
        self._services = {}                   # (ns, name) -> local ready endpoints
        self._listeners = {}                  # (host, port) -> (socket, target)
        self._failed = {}                     # (host, port) -> monotonic time to retry after
        self._clients = {}                    # fileno -> _Client
        self.health = NodeHealth()
        self.answers = {}                     # (endpoint, status) -> count: "healthz", "livez", "service"
        self._lock = threading.Lock()
        self._dirty = True
        self._stop = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = None

    # -- the agent's side --------------------------------------------------------------------
    def start(self):
        self.refresh_health()
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)
        self._thread.start()
        return self

    def set_services(self, services, addresses):
        """Serve `services` {(ns, name): (port, local ready endpoints)} on each of `addresses`;
        ports no longer wanted close, counts of kept ones change in place."""
        wanted = {}
        if self._node_address is not None:
            wanted[self._node_address] = ("node", None)
        for key, (port, _) in sorted(services.items()):
            for address in addresses:
                wanted.setdefault((address, port), ("service", key))
        with self._lock:
            self._services = {key: count for key, (_, count) in services.items()}
            if wanted != self._wanted:
                self._wanted = wanted
                self._dirty = True
        self._wake()

    def bound(self):
        """The (host, port) pairs listened on now."""
        with self._lock:
            return sorted(self._listeners)

    def close(self):
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        for sock, _ in list(self._listeners.values()):
            sock.close()
        self._listeners.clear()
        for client in list(self._clients.values()):
            client.sock.close()
        self._clients.clear()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def refresh_health(self):
        """Ask the probe now; a probe that raises makes the node unhealthy, never the thread die."""
        try:
            self.health = self._probe()
        except Exception as e:
            log.exception("event=health_probe_failed")
            self.health = NodeHealth(False, (f"the health probe failed: {type(e).__name__}: {e}"[:300],),
                                     self.health.last_healthy)

    # -- the thread --------------------------------------------------------------------------
    def _wake(self):
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass                              # full (a wake is pending anyway) or closed

    def _run(self):
        next_refresh = time.monotonic() + self._refresh
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                if now >= next_refresh:
                    self.refresh_health()
                    next_refresh = now + self._refresh
                self._reconcile(now)
                timeout = next_refresh - now
                if self._clients:
                    timeout = min(timeout, min(c.deadline for c in self._clients.values()) - now)
                if self._failed:
                    timeout = min(timeout, min(self._failed.values()) - now)
                for key, events in self._selector.select(max(0.0, timeout)):
                    self._on_event(key, events)
                self._expire(time.monotonic())
            except Exception:
                log.exception("event=health_loop_failed")   # never end the thread; go round again
                time.sleep(0.1)

    def _reconcile(self, now):
        """Open wanted listeners (retrying failed ones when due), close unwanted ones."""
        with self._lock:
            if not self._dirty and not any(t <= now for t in self._failed.values()):
                return
            self._dirty = False
            wanted = dict(self._wanted)
        for address in [a for a in self._listeners if a not in wanted or self._listeners[a][1] != wanted[a]]:
            with self._lock:                  # bound() reads the dict from other threads
                sock, _ = self._listeners.pop(address)
            self._selector.unregister(sock)
            sock.close()
            log.info("event=health_listen_closed address=%s port=%d", *address)
        for address in [a for a in self._failed if a not in wanted]:
            del self._failed[address]
        for address, target in wanted.items():
            if address in self._listeners or self._failed.get(address, 0) > now:
                continue
            try:
                sock = _listen(address)
            except OSError as e:
                if address not in self._failed:
                    log.error("event=health_listen_failed address=%s port=%d target=%s error=%r retry_in=%.0fs",
                              address[0], address[1], _target_name(target), e.strerror or str(e), RETRY_SECONDS)
                self._failed[address] = now + RETRY_SECONDS
                continue
            self._failed.pop(address, None)
            with self._lock:
                self._listeners[address] = (sock, target)
            self._selector.register(sock, selectors.EVENT_READ, ("listener", target))
            log.info("event=health_listening address=%s port=%d target=%s", address[0], address[1],
                     _target_name(target))

    def _on_event(self, key, events):
        if key.data is None:                  # the wake-up socket
            try:
                while self._wake_r.recv(512):
                    pass
            except OSError:
                pass
            return
        kind, payload = key.data
        if kind == "listener":
            self._accept(key.fileobj, payload)
        elif events & selectors.EVENT_WRITE:
            self._send(payload)
        else:
            self._receive(payload)

    def _accept(self, listener, target):
        for _ in range(64):                   # a burst at a time; the rest on the next round
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:              # EMFILE and the like: the listener stays
                log.warning("event=health_accept_failed error=%r", e.strerror or str(e))
                return
            sock.setblocking(False)
            if len(self._clients) >= MAX_CLIENTS:
                self._drop(min(self._clients.values(), key=lambda c: c.deadline))
            client = _Client(sock, target, time.monotonic() + CLIENT_TIMEOUT)
            self._clients[sock.fileno()] = client
            self._selector.register(sock, selectors.EVENT_READ, ("client", client))

    def _receive(self, client):
        try:
            data = client.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        if not data:
            self._drop(client)                # closed before a complete request: nothing to answer
            return
        client.received += data
        try:
            request = parse_request_head(client.received)
        except BadRequest as e:
            self._answer(client, http_response(e.status, f"{e}\n".encode(),
                                               (("Content-Type", "text/plain; charset=utf-8"),)))
            return
        if request is not None:
            self._answer(client, self._response(client.target, *request))

    def _response(self, target, method, path):
        kind, service = target
        health = self.health
        if kind == "node":
            status, headers, body = node_health_answer(path, health, time.time())
            endpoint = path.strip("/") if status != 404 else "other"
        else:
            with self._lock:
                count = self._services.get(service)
            if count is None:                 # closing: kube-proxy answers a closed check with 503
                count = 0
            status, headers, body = service_health_answer(service[0], service[1], count, health.healthy)
            endpoint = "service"
        self.answers[(endpoint, status)] = self.answers.get((endpoint, status), 0) + 1
        return http_response(status, body, headers, head_only=method == "HEAD")

    def _answer(self, client, data):
        client.outgoing = data
        self._selector.modify(client.sock, selectors.EVENT_WRITE, ("client", client))
        self._send(client)

    def _send(self, client):
        try:
            sent = client.sock.send(client.outgoing)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        client.outgoing = client.outgoing[sent:]
        if not client.outgoing:
            try:
                client.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self._drop(client)

    def _expire(self, now):
        for client in [c for c in self._clients.values() if c.deadline <= now]:
            self._drop(client)

    def _drop(self, client):
        self._clients.pop(client.sock.fileno(), None)
        try:
            self._selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()


def _listen(address):
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _target_name(target):
    kind, service = target
    return "healthz" if kind == "node" else f"{service[0]}/{service[1]}"


# --- the agent's glue ----------------------------------------------------------------------

def start_health_servers(agent):
    """HealthServers for a started agent: /healthz and /livez on healthzBindAddress, and (with
    proxyAll, when NodePorts and LoadBalancer traffic are xskproxy's) the healthCheckNodePorts of
    its last published state."""
    dataplane = DataplaneProbe(agent, agent.kube_proxy_metrics)
    served = [None]

    def probe():
        # each publish hands its snapshot over at once (Agent._publish); this catches one that
        # completed while the servers were being started
        published = agent.sync.published if agent.sync is not None else None
        if published is not None and published is not served[0]:
            serve_published(servers, agent.translator.options, published)
            served[0] = published
        return dataplane()

    servers = HealthServers(probe, agent.config.healthz_bind_address)
    return servers.start()


def serve_published(servers, options, snapshot):
    """Hand `servers` the health-check ports and local endpoint counts of a published Snapshot."""
    from control.translate import skip_reason
    services = {}
    if options.proxy_all:
        services = health_check_services(snapshot.cluster, options.node_name, options, skip_reason)
    addresses = node_addresses(snapshot.network, snapshot.cluster, options.node_name,
                               options.node_port_addresses) if services else ()
    servers.set_services(services, addresses)
