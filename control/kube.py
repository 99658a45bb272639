"""The Kubernetes source: list+watch of Services, EndpointSlices and Nodes into model objects.

One reflector thread per resource, on the official client's generated API in raw mode
(_preload_content=False: JSON is parsed once into dicts and converted by control.convert; the
client's pydantic models would cost seconds at 250,000 endpoints). resourceVersion tracking,
bookmarks, 410 Gone (HTTP status or in-stream ERROR) -> re-list and diff, watch time-outs and
reconnects with capped exponential back-off. While the API is away the last good objects stay.
Never lets an exception end a reflector thread; never hands out Kubernetes types.
"""
import logging
import random
import threading
import time

from orjson import loads as _json_loads   # half of json's time on a 30 MB list (0.3 s / 0.56 s)

from control.convert import ManifestError, endpoint_slice_from_dict, node_from_dict, service_from_dict
from control.model import ClusterState
from control.sync import gc_paused

log = logging.getLogger("xskproxy.kube")

GONE = 410

class ResourceExpired(Exception):
    """The watch's resourceVersion is too old (410): re-list."""


class WatchError(Exception):
    """The server sent an ERROR event other than 410."""


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


def _object_key(obj, namespaced):
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    return (meta.get("namespace") or "default", name) if namespaced else name


class Reflector:
    """Keeps `models` (key -> model) equal to one resource on the server. Objects that fail to
    convert are reported in `errors` (key -> message) and keep their last good model, if any."""

    def __init__(self, resource, convert, namespaced, client_factory, on_change,
                 watch_timeout=300, idle_timeout=120, connect_timeout=5,
                 backoff_initial=0.2, backoff_max=30.0):
        self.resource = resource
        self.convert = convert
        self.namespaced = namespaced
        self.client_factory = client_factory
        self.on_change = on_change
        self.watch_timeout = watch_timeout
        self.idle_timeout = idle_timeout         # read timeout: no byte for this long -> reconnect
        self.connect_timeout = connect_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max

        self.lock = threading.Lock()
        self.models = {}                         # key -> model
        self.versions = {}                       # key -> resourceVersion of the object behind models[key]
        self.errors = {}                         # key -> message of the last failed conversion
        self.resource_version = None             # None: must (re-)list
        self.synced = False                      # a first list has completed
        self.healthy = False                     # list done and the watch stream is open
        self.last_ok = None                      # time.monotonic() the stream was last known good
        self.counters = {"lists": 0, "watches": 0, "events": 0, "bookmarks": 0, "expired": 0,
                         "errors": 0, "malformed": 0}
        self.last_error = None
        self._stop = threading.Event()
        self._response = None
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
        backoff = self.backoff_initial
        while not self._stop.is_set():
            try:
                if self._api_client is None:
                    self._api_client = self.client_factory()
                if self.resource_version is None:
                    self._list()
                self._watch()
                backoff = self.backoff_initial           # a watch that ran and ended cleanly
            except ResourceExpired as e:
                self.counters["expired"] += 1
                log.info("event=watch_expired resource=%s detail=%r action=relist", self.resource, str(e))
                self.resource_version = None
                self.healthy = False
            except Exception as e:
                if self._stop.is_set():
                    break
                if self.healthy:                           # it was working: start back-off afresh
                    backoff = self.backoff_initial
                self.healthy = False
                self.counters["errors"] += 1
                self.last_error = f"{type(e).__name__}: {e}"
                delay = min(self.backoff_max, backoff) * random.uniform(0.8, 1.2)
                log.warning("event=watch_failed resource=%s error=%r retry_in=%.2fs",
                            self.resource, self.last_error[:300], delay)
                self._close_client()                       # reconnect with a freshly read config
                if self._stop.wait(delay):
                    break
                backoff = min(self.backoff_max, backoff * 2)
        self.healthy = False

    def _timeouts(self):
        return (self.connect_timeout, self.idle_timeout)

    def _list(self):
        func = _list_function(self._api_client, self.resource)
        started = time.monotonic()
        response = func(_preload_content=False, _request_timeout=(self.connect_timeout, max(60, self.idle_timeout)))
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
        self.last_ok = time.monotonic()
        if (changed or first) and self.on_change is not None:
            self.on_change()
        log.info("event=listed resource=%s items=%d bytes=%d resource_version=%s fetch_s=%.3f parse_s=%.3f "
                 "convert_s=%.3f", self.resource, count, size, rv, fetched - started, parsed - fetched,
                 converted - parsed)

    def _watch(self):
        func = _list_function(self._api_client, self.resource)
        timeout = int(self.watch_timeout * random.uniform(1.0, 2.0))   # spread reconnects, as client-go
        from kubernetes.client.exceptions import ApiException
        try:
            response = func(watch=True, resource_version=self.resource_version, allow_watch_bookmarks=True,
                            timeout_seconds=timeout, _preload_content=False, _request_timeout=self._timeouts())
        except ApiException as e:
            if e.status == GONE:                     # HTTP 410: the version is compacted away
                raise ResourceExpired(f"HTTP 410 {e.reason}") from None
            raise
        self._response = response
        self.counters["watches"] += 1
        self.healthy = True
        self.last_ok = time.monotonic()
        try:
            buffer = b""
            for chunk in response.stream(amt=None, decode_content=False):
                if self._stop.is_set():
                    return
                buffer += chunk
                lines = buffer.split(b"\n")
                buffer = lines.pop()
                changed = False
                for line in lines:
                    if line.strip():
                        changed |= self._handle_event(_json_loads(line))
                self.last_ok = time.monotonic()
                if changed and self.on_change is not None:
                    self.on_change()
            if buffer.strip():
                if self._handle_event(_json_loads(buffer)) and self.on_change is not None:
                    self.on_change()
        finally:
            self._response = None
            response.release_conn()

    # --- the store ---
    def _handle_event(self, event):
        """Apply one watch event; True when `models` changed."""
        event_type = event.get("type")
        obj = event.get("object") or {}
        if event_type == "ERROR":
            code = obj.get("code")
            message = f"{obj.get('reason')}: {obj.get('message')}"
            if code == GONE:
                raise ResourceExpired(message)
            raise WatchError(f"{code} {message}")
        rv = (obj.get("metadata") or {}).get("resourceVersion")
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
    current ClusterState; `staleness()` is 0 while every watch is open and otherwise the seconds
    since the oldest broken one was last known good.
    """

    def __init__(self, client_factory, on_change=None, **reflector_options):
        self.on_change = on_change
        self.reflectors = {
            "services": Reflector("services", service_from_dict, True, client_factory, self._changed,
                                  **reflector_options),
            "endpointslices": Reflector("endpointslices", endpoint_slice_from_dict, True, client_factory,
                                        self._changed, **reflector_options),
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
        """Seconds since the last moment every watch was known good (0.0 while all are)."""
        now = time.monotonic()
        worst = 0.0
        for r in self.reflectors.values():
            if r.healthy:
                continue
            since = r.last_ok if r.last_ok is not None else self.started_at or now
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
