"""The Kubernetes source: list+watch of Services, EndpointSlices and Nodes into model objects.

One reflector thread per resource, on the official client's generated API in raw mode
(_preload_content=False: JSON is parsed once into dicts and converted by control.convert; the
client's pydantic models would cost seconds at 250,000 endpoints). resourceVersion tracking,
bookmarks, 410 Gone (HTTP status or in-stream ERROR) -> re-list and diff, watch time-outs and
reconnects. Every failure (410, an error, an empty or cut stream, a line that is not an event or
is longer than MAX_LINE_BYTES, a hang ended by the read timeout) waits a capped, jittered,
doubling back-off and logs one line; the back-off starts afresh after a healthy watch. While the
API is away the last good objects stay.
Never lets an exception end a reflector thread; never hands out Kubernetes types; never holds
more than MAX_LINE_BYTES of one watch line.
"""
import logging
import random
import threading
import time

from orjson import loads as _json_loads   # half of json's time on a 30 MB list (0.3 s / 0.56 s)

from control.convert import ManifestError, endpoint_slice_from_dict, node_from_dict, service_from_dict
from control.model import PROXY_LABEL_SELECTOR, ClusterState
from control.sync import gc_paused

log = logging.getLogger("xskproxy.kube")

GONE = 410
MAX_LINE_BYTES = 16 << 20      # a longer watch line is an error (etcd caps an object at 1.5 MiB)
READ_SIZE = 64 << 10           # a watch stream is read at most this much at a time
EVENT_TYPES = ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR")


class ResourceExpired(Exception):
    """The watch's resourceVersion is too old (410): re-list."""


class WatchError(Exception):
    """The server sent an ERROR event other than 410."""


class StreamCorrupt(Exception):
    """A watch line is not an event (not JSON, not an object, an unknown type) or is too long:
    what it held is lost, so the resource is listed again."""


class WatchEndedEarly(Exception):
    """The server ended a watch cleanly before its timeoutSeconds."""


def make_client_factory(kubeconfig=None, context=None):
    """A callable returning a fresh kubernetes ApiClient: from `kubeconfig` (re-read on every call,
    so a rewritten kubeconfig is picked up on reconnect) or, when None, the in-cluster config.
    Loads the client here, not in the reflector threads once they list: its API classes are
    imported on first use (CoreV1Api: ~1 s alone, ~4 s while the slices list holds the GIL)."""
    from kubernetes import client, config
    _ = (client.CoreV1Api, client.DiscoveryV1Api)            # the attribute access loads them

    def factory():
        configuration = client.Configuration()
        if kubeconfig:
            config.load_kube_config(config_file=str(kubeconfig), context=context,
                                    client_configuration=configuration)
        else:
            config.load_incluster_config(client_configuration=configuration)
        configuration.retries = False           # the reflector retries, with back-off
        return client.ApiClient(configuration)
    return factory


def _list_function(api_client, resource):
    from kubernetes import client
    if resource == "services":
        return client.CoreV1Api(api_client).list_service_for_all_namespaces
    if resource == "endpointslices":
        return client.DiscoveryV1Api(api_client).list_endpoint_slice_for_all_namespaces
    if resource == "nodes":
        return client.CoreV1Api(api_client).list_node
    raise ValueError(resource)


class _LineBuffer:
    """Cuts a byte stream into lines, holding at most `limit` bytes of an unfinished one. No I/O."""

    def __init__(self, limit):
        self.limit = limit
        self.pending = bytearray()              # the unfinished line

    def feed(self, data):
        """The lines `data` completes, without their newlines; StreamCorrupt when one is too long."""
        end = data.rfind(b"\n")
        if end < 0:
            self.pending += data
            self._check(len(self.pending))
            return []
        if self.pending:
            self.pending += data[:end]
            head = bytes(self.pending)
        else:
            head = data[:end]
        self.pending = bytearray(data[end + 1:])
        lines = head.split(b"\n")
        self._check(max(len(self.pending), max(map(len, lines))))
        return lines

    def rest(self):
        """What is left of a stream that ended without a final newline."""
        return bytes(self.pending)

    def _check(self, length):
        if length > self.limit:
            raise StreamCorrupt(f"a watch line is longer than {self.limit} bytes")


def _stream_pieces(response, size=READ_SIZE):
    """A streaming response's body as it arrives, at most `size` bytes at a time: stream(amt=None)
    reads a whole HTTP chunk (or an unchunked body to its end) into memory, however large.
    Without read1 (urllib3 < 2.3) an unchunked body comes `size` bytes at a time."""
    if response.chunked or not hasattr(response, "read1"):
        yield from response.stream(amt=size, decode_content=False)
        return
    while True:
        data = response.read1(size, decode_content=False)
        if not data:
            return
        yield data


def _object_key(obj, namespaced):
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    return (meta.get("namespace") or "default", name) if namespaced else name


class Reflector:
    """Keeps `models` (key -> model) equal to one resource on the server. Objects that fail to
    convert are reported in `errors` (key -> message) and keep their last good model, if any.

    After the n-th failure in a row it waits backoff_initial * 2**(n-1), capped at backoff_max,
    times a jitter in [0.8, 1.0]. A watch that stayed open `healthy_after` seconds, or ended
    cleanly at its timeoutSeconds, is healthy: the count starts again from 0.
    """

    def __init__(self, resource, convert, namespaced, client_factory, on_change,
                 watch_timeout=300, idle_timeout=120, connect_timeout=5,
                 backoff_initial=0.2, backoff_max=30.0, healthy_after=10.0, max_line_bytes=MAX_LINE_BYTES,
                 label_selector=None):
        self.resource = resource
        self.label_selector = label_selector     # passed to list and watch; None: every object
        self.convert = convert
        self.namespaced = namespaced
        self.client_factory = client_factory
        self.on_change = on_change
        self.watch_timeout = watch_timeout
        self.idle_timeout = idle_timeout         # read timeout: no byte for this long -> reconnect
        self.connect_timeout = connect_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.healthy_after = healthy_after
        self.max_line_bytes = max_line_bytes

        self.lock = threading.Lock()
        self.models = {}                         # key -> model
        self.versions = {}                       # key -> resourceVersion of the object behind models[key]
        self.errors = {}                         # key -> message of the last failed conversion
        self.resource_version = None             # None: must (re-)list
        self.synced = False                      # a first list has completed
        self.healthy = False                     # list done and the watch stream is open
        self.last_progress = None                # time.monotonic() of the last list, event or bookmark
        self.failures = 0                        # failed attempts since the last healthy watch
        self.retry_delay = 0.0                   # the wait after the last failure
        self.counters = {"lists": 0, "watches": 0, "events": 0, "bookmarks": 0, "expired": 0,
                         "errors": 0, "malformed": 0}
        self.last_error = None
        self._stop = threading.Event()
        self._response = None
        self._watch_opened = None                # time.monotonic() the current watch's headers came
        self._api_client = None
        self._thread = None

    # --- lifecycle ---
    def start(self):
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"reflector-{self.resource}", daemon=True)
        self._thread.start()

    def stop(self, timeout=5):
        self._stop.set()
        response = self._response
        if response is not None:
            try:
                response.shutdown()              # unblocks a read in the reflector thread
            except Exception:
                pass
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._close_client()

    def _close_client(self):
        api_client, self._api_client = self._api_client, None
        if api_client is not None:
            try:
                api_client.close()
            except Exception:
                pass

    # --- the loop ---
    def _run(self):
        while not self._stop.is_set():
            self._watch_opened = None
            try:
                if self._api_client is None:
                    self._api_client = self.client_factory()
                if self.resource_version is None:
                    self._list()
                self._watch()                    # returns when the watch ran its full timeout
            except Exception as e:
                if self._stop.is_set():
                    break
                self._failed(e)
                if self._stop.wait(self.retry_delay):
                    break
        self.healthy = False

    def _failed(self, error):
        """Count a failed attempt, choose what comes next and how long to wait; one log line."""
        self.healthy = False
        if self._watch_opened is not None and time.monotonic() - self._watch_opened >= self.healthy_after:
            self.failures = 0                    # a watch that was working: the back-off starts afresh
        self.failures += 1
        step = self.backoff_initial * 2 ** min(self.failures - 1, 32)
        self.retry_delay = min(self.backoff_max, step) * random.uniform(0.8, 1.0)
        expired = isinstance(error, ResourceExpired)
        self.counters["expired" if expired else "errors"] += 1
        self.last_error = f"{type(error).__name__}: {error}"
        if expired or isinstance(error, StreamCorrupt):
            self.resource_version = None         # events were lost: list again
        if not expired:
            self._close_client()                 # reconnect with a freshly read config
        # a first 410 is routine (the server compacted its history); one in a row is not
        log.log(logging.INFO if expired and self.failures == 1 else logging.WARNING,
                "event=%s resource=%s error=%r failures=%d retry_in=%.2fs then=%s",
                "watch_expired" if expired else "watch_failed", self.resource, self.last_error[:300],
                self.failures, self.retry_delay, "list" if self.resource_version is None else "watch")

    def _healthy_watch(self):
        """The open watch has proved healthy: later failures start the back-off from the beginning."""
        if self.failures > 1:
            log.info("event=watch_recovered resource=%s after_failures=%d", self.resource, self.failures)
        self.failures = 0

    def _selection(self):
        return {"label_selector": self.label_selector} if self.label_selector else {}

    def _timeouts(self):
        return (self.connect_timeout, self.idle_timeout)

    def _list(self):
        func = _list_function(self._api_client, self.resource)
        started = time.monotonic()
        response = func(_preload_content=False, _request_timeout=(self.connect_timeout, max(60, self.idle_timeout)),
                        **self._selection())
        try:
            data = response.data
        finally:
            response.release_conn()
        fetched = time.monotonic()
        with gc_paused():
            body = _json_loads(data)
            size = len(data)
            del data
            parsed = time.monotonic()
            items = body.get("items") or []
            count = len(items)
            rv = (body.get("metadata") or {}).get("resourceVersion")
            changed = self._replace(items)
            del body, items
        converted = time.monotonic()
        self.resource_version = rv or "0"
        self.counters["lists"] += 1
        first = not self.synced
        self.synced = True                       # before on_change: the sync loop checks has_synced
        self.last_progress = time.monotonic()
        if (changed or first) and self.on_change is not None:
            self.on_change()
        # in a run of failures the failure lines say it all: one line per back-off step
        log.log(logging.INFO if self.failures <= 1 else logging.DEBUG,
                "event=listed resource=%s items=%d bytes=%d resource_version=%s fetch_s=%.3f parse_s=%.3f "
                "convert_s=%.3f", self.resource, count, size, rv, fetched - started, parsed - fetched,
                converted - parsed)

    def _watch(self):
        """One watch until it ends: returns when it ran its full timeout (or on stop), raises otherwise."""
        func = _list_function(self._api_client, self.resource)
        timeout = int(self.watch_timeout * random.uniform(1.0, 2.0))   # spread reconnects, as client-go
        from kubernetes.client.exceptions import ApiException
        started = time.monotonic()
        try:
            response = func(watch=True, resource_version=self.resource_version, allow_watch_bookmarks=True,
                            timeout_seconds=timeout, _preload_content=False, _request_timeout=self._timeouts(),
                            **self._selection())
        except ApiException as e:
            if e.status == GONE:                     # HTTP 410: the version is compacted away
                raise ResourceExpired(f"HTTP 410 {e.reason}") from None
            raise
        self._response = response
        self._watch_opened = time.monotonic()
        self.counters["watches"] += 1
        self.healthy = True
        lines = _LineBuffer(self.max_line_bytes)
        ended = False
        try:
            for piece in _stream_pieces(response):
                if self._stop.is_set():
                    return
                self._handle_lines(lines.feed(piece))
                if self.failures and time.monotonic() - self._watch_opened >= self.healthy_after:
                    self._healthy_watch()
            self._handle_lines([lines.rest()])       # a last line without its newline
            ended = True
        finally:
            self._response = None
            if not ended:
                response.close()                     # the rest of the stream is unread: no reuse
            response.release_conn()
        if self._stop.is_set():
            return
        lasted = time.monotonic() - started     # >= the server's own count, which starts later
        if lasted < 0.9 * timeout:
            raise WatchEndedEarly(f"the server ended the watch after {lasted:.1f}s of its {timeout}s")
        self.last_progress = time.monotonic()        # the server said: nothing new for all that time
        self._healthy_watch()

    def _handle_lines(self, lines):
        """Apply the events of complete watch lines; on_change once if any changed the store, also
        when a later line raises (a re-list would find nothing new to report)."""
        changed = False
        try:
            for line in lines:
                if line.strip():
                    try:
                        event = _json_loads(line)
                    except ValueError as e:          # orjson.JSONDecodeError
                        raise StreamCorrupt(f"a watch line is not JSON ({e}): {line[:80]!r}") from None
                    changed |= self._handle_event(event)
        finally:
            if changed and self.on_change is not None:
                self.on_change()

    # --- the store ---
    def _handle_event(self, event):
        """Apply one watch event; True when `models` changed."""
        if not isinstance(event, dict):
            raise StreamCorrupt(f"a watch line is not an event: {str(event)[:80]!r}")
        event_type = event.get("type")
        obj = event.get("object") or {}
        if event_type not in EVENT_TYPES or not isinstance(obj, dict) \
                or not isinstance(obj.get("metadata") or {}, dict):
            raise StreamCorrupt(f"a watch line is not an event: {str(event)[:80]!r}")
        if event_type == "ERROR":
            code = obj.get("code")
            message = f"{obj.get('reason')}: {obj.get('message')}"
            if code == GONE:
                raise ResourceExpired(message)
            raise WatchError(f"{code} {message}")
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        self.last_progress = time.monotonic()
        if event_type == "BOOKMARK":
            self.counters["bookmarks"] += 1
            if rv:
                self.resource_version = rv
            return False
        self.counters["events"] += 1
        key = _object_key(obj, self.namespaced)
        with self.lock:
            if event_type == "DELETED":
                self.errors.pop(key, None)
                self.versions.pop(key, None)
                changed = self.models.pop(key, None) is not None
            else:
                changed = self._put(key, obj, rv)
        if rv:
            self.resource_version = rv
        return changed

    def _put(self, key, obj, rv):
        """Convert and store one object (lock held); True when the stored model changed."""
        if rv is not None and self.versions.get(key) == rv and key in self.models:
            return False
        try:
            model = self.convert(obj)
        except ManifestError as e:
            self.counters["malformed"] += 1
            message = f"{self.resource} {key}: {e}"
            if self.errors.get(key) != message:
                log.error("event=object_rejected resource=%s key=%s error=%r kept=%s", self.resource, key,
                          str(e), "last_good" if key in self.models else "none")
            self.errors[key] = message
            return False
        self.errors.pop(key, None)
        self.versions[key] = rv
        old = self.models.get(key)
        if old == model:
            return False                          # keep the old object: identity makes diffs cheap
        self.models[key] = model
        return True

    def _replace(self, items):
        """Re-list: diff `items` against the store; unchanged objects keep their model object.
        Returns True when the store changed."""
        changed = False
        with self.lock:
            seen = set()
            for obj in items:
                key = _object_key(obj, self.namespaced)
                seen.add(key)
                changed |= self._put(key, obj, (obj.get("metadata") or {}).get("resourceVersion"))
            for key in [k for k in self.models if k not in seen]:
                del self.models[key]
                self.versions.pop(key, None)
                changed = True
            for key in [k for k in self.errors if k not in seen]:
                del self.errors[key]
        return changed

    def snapshot(self):
        with self.lock:
            return dict(self.models)


class KubeSource:
    """Services, EndpointSlices and Nodes from the API server as a ClusterState.

    `on_change()` is called (from reflector threads) after every change; `snapshot()` returns the
    current ClusterState; `staleness()` the seconds since the least recently confirmed resource was
    last confirmed current.
    """

    def __init__(self, client_factory, on_change=None, **reflector_options):
        self.on_change = on_change
        self.reflectors = {
            # kube-proxy's selection: nothing labelled for another proxy or as headless (translate
            # checks the same labels, for the file source and a server that ignores selectors)
            "services": Reflector("services", service_from_dict, True, client_factory, self._changed,
                                  label_selector=PROXY_LABEL_SELECTOR, **reflector_options),
            "endpointslices": Reflector("endpointslices", endpoint_slice_from_dict, True, client_factory,
                                        self._changed, label_selector=PROXY_LABEL_SELECTOR,
                                        **reflector_options),
            "nodes": Reflector("nodes", node_from_dict, False, client_factory, self._changed,
                               **reflector_options),
        }
        self.started_at = None

    def _changed(self):
        if self.on_change is not None:
            self.on_change()

    def start(self):
        self.started_at = time.monotonic()
        for r in self.reflectors.values():
            r.start()
        return self

    def stop(self):
        for r in self.reflectors.values():
            r._stop.set()
        for r in self.reflectors.values():
            r.stop()

    def has_synced(self):
        """True once every resource has been listed at least once."""
        return all(r.synced for r in self.reflectors.values())

    def wait_synced(self, timeout):
        deadline = time.monotonic() + timeout
        while not self.has_synced():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def snapshot(self):
        r = self.reflectors
        return ClusterState(services=r["services"].snapshot(),
                            endpoint_slices=r["endpointslices"].snapshot(),
                            nodes=r["nodes"].snapshot())

    def staleness(self):
        """Seconds since the least recently confirmed resource was last confirmed current: by a
        list, an event or bookmark of its watch, or a watch quiet for its whole timeout (since the
        start for a resource never listed). An open watch confirms nothing: a hanging server shows
        a growing staleness. On a quiet cluster it climbs to kube-apiserver's bookmark interval
        (a minute) and drops back."""
        now = time.monotonic()
        worst = 0.0
        for r in self.reflectors.values():
            since = r.last_progress if r.last_progress is not None else self.started_at or now
            worst = max(worst, now - since)
        return worst

    @property
    def error(self):
        """The last connection/list error of a resource that is not watching now, or None."""
        for name, r in self.reflectors.items():
            if not r.healthy and r.last_error:
                return f"{name}: {r.last_error}"
        return None

    def errors(self):
        """Messages of the objects that failed to convert, by (resource, key)."""
        out = {}
        for name, r in self.reflectors.items():
            with r.lock:
                out.update({(name, k): v for k, v in r.errors.items()})
        return out

    def counters(self):
        return {name: dict(r.counters) for name, r in self.reflectors.items()}
