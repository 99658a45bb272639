"""The coalescing loop: change notifications from sources and netlink -> one publish of a new snapshot.

notify() may be called from any thread, as often as events arrive; after a short quiet period
(debounce, bounded by max_delay) the loop collects one snapshot and, if it differs from the last
published one, calls publish(snapshot). A failing collect or publish is logged and retried with
capped back-off (notifications arriving meanwhile do not shorten it); nothing a callback raises
ends the loop, and status() shows the failures.
"""
import contextlib
import gc
import logging
import threading
import time
from dataclasses import dataclass, field

from control.model import ClusterState

log = logging.getLogger("xskproxy.sync")

_gc_pause_lock = threading.Lock()
_gc_pause_depth = 0
_gc_was_enabled = True


# Objects created during a pause beyond which its survivors are frozen (see gc_paused).
GC_FREEZE_AFTER = 100_000


@contextlib.contextmanager
def gc_paused():
    """Pause Python's cyclic GC around bulk work (a 250,000-endpoint list, a full translate):
    millions of fresh, mostly acyclic objects otherwise trigger full collections that cost
    25-40% of the time. Refcounting still frees memory. Nested and concurrent uses keep it off
    until the last one ends; it is restored to what it was before the first.

    When the pause ends after a bulk load (more than GC_FREEZE_AFTER new objects), the survivors
    are frozen (gc.freeze) instead of being collected: every later collection would otherwise
    traverse them, ~0.3-0.5 s with the GIL held at 250,000 endpoints, a stall for every worker
    loop. The models are acyclic, so refcounting still frees them when they are replaced; what
    a freeze costs is any cyclic garbage alive at that moment, kept for good."""
    global _gc_pause_depth, _gc_was_enabled
    with _gc_pause_lock:
        if _gc_pause_depth == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pause_depth += 1
    try:
        yield
    finally:
        with _gc_pause_lock:
            _gc_pause_depth -= 1
            if _gc_pause_depth == 0:
                if gc.get_count()[0] > GC_FREEZE_AFTER:
                    gc.freeze()
                if _gc_was_enabled:
                    gc.enable()


@dataclass(frozen=True)
class Snapshot:
    """Everything translate needs, taken at one moment: the cluster and the node's network
    (control.netlink.NodeNetwork, or None when netlink is not watched)."""
    cluster: ClusterState = field(default_factory=ClusterState)
    network: object = None


def collector(cluster_source, network_view=None):
    """A collect() for SyncLoop: Snapshot(source.snapshot(), network_view.current()), or None
    (nothing to publish yet) until the source has_synced(): a half-listed cluster must never
    replace the tables."""
    def collect():
        has_synced = getattr(cluster_source, "has_synced", None)
        if has_synced is not None and not has_synced():
            return None
        network = network_view.current() if network_view is not None else None
        return Snapshot(cluster=cluster_source.snapshot(), network=network)
    return collect


class SyncLoop:
    """Runs collect() -> publish() on its own thread, coalescing notifications.

    collect: () -> snapshot (any value with a meaningful ==), or None: not ready, nothing to do
    publish: (snapshot) -> None; raising means "not published", retried after back-off
    """

    def __init__(self, collect, publish, debounce=0.05, max_delay=0.5, retry_initial=0.1, retry_max=5.0,
                 pause_gc=True):
        self.collect = collect
        self.pause_gc = pause_gc                 # collect + publish run with the cyclic GC paused
        self.publish = publish
        self.debounce = debounce
        self.max_delay = max_delay
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.published = None                    # the last snapshot publish() accepted
        self.counters = {"notifications": 0, "syncs": 0, "publishes": 0, "unchanged": 0, "failures": 0}
        self.consecutive_failures = 0            # > 0: the last attempt failed
        self.last_error = None                   # "Type: message" of the last failure (kept after recovery)
        self.last_error_type = None
        self.last_error_time = None              # time.time() of the last failure
        self.last_publish_time = None            # time.time() of the last publish
        self.last_sync_seconds = None            # collect + publish duration of the last publish
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._retry_delay = 0.0                  # > 0: the last attempt failed
        self._retry_at = 0.0                     # time.monotonic() before which no attempt is made
        self._thread = None

    def notify(self):
        """Something changed: sync soon. Cheap and thread-safe."""
        self.counters["notifications"] += 1
        self._wake.set()

    def status(self):
        """The counters and the state of publishing as a JSON-able dict (stats.json, metrics)."""
        return dict(self.counters, consecutive_failures=self.consecutive_failures,
                    last_error=self.last_error, last_error_type=self.last_error_type,
                    last_error_time=self.last_error_time, last_publish_time=self.last_publish_time,
                    last_sync_seconds=self.last_sync_seconds,
                    retry_in_seconds=round(max(0.0, self._retry_at - time.monotonic()), 3)
                    if self._retry_delay else 0.0)

    def sync_once(self):
        """Collect and publish if changed, now, on the caller's thread. Returns True if published;
        False if unchanged; raises what collect/publish raised."""
        if self.pause_gc:
            with gc_paused():
                return self._sync_once()
        return self._sync_once()

    def _sync_once(self):
        self.counters["syncs"] += 1
        started = time.perf_counter()
        snapshot = self.collect()
        if snapshot is None:
            return False
        if self.published is not None and snapshot == self.published:
            self.counters["unchanged"] += 1
            return False
        self.publish(snapshot)
        self.published = snapshot
        self.counters["publishes"] += 1
        self.last_publish_time = time.time()
        self.last_sync_seconds = time.perf_counter() - started
        return True

    def _attempt(self):
        try:
            published = self.sync_once()
        except Exception as e:
            self.counters["failures"] += 1
            self.consecutive_failures += 1
            self.last_error, self.last_error_type = f"{type(e).__name__}: {e}", type(e).__name__
            self.last_error_time = time.time()
            self._retry_delay = min(self.retry_max, max(self.retry_initial, self._retry_delay * 2))
            self._retry_at = time.monotonic() + self._retry_delay
            log.exception("event=publish_failed error=%r failures_in_a_row=%d retry_in=%.2fs",
                          self.last_error[:300], self.consecutive_failures, self._retry_delay)
            return
        if self._retry_delay:
            log.info("event=publish_recovered after_failures=%d", self.consecutive_failures)
        self._retry_delay = 0.0
        self.consecutive_failures = 0
        if published:
            log.debug("event=published seconds=%.4f", self.last_sync_seconds)

    def _debounce(self):
        """Wait until no notification came for `debounce` s, or `max_delay` s passed."""
        first = time.monotonic()
        while not self._stop.is_set():
            self._wake.clear()
            remaining = min(self.debounce, first + self.max_delay - time.monotonic())
            if remaining <= 0 or not self._wake.wait(remaining):
                return

    def _run(self):
        while not self._stop.is_set():
            woke = self._wake.wait(max(0.0, self._retry_at - time.monotonic()) if self._retry_delay else None)
            if self._stop.is_set():
                break
            if woke:
                self._debounce()
                # after a failure, no attempt before the back-off is over, notified or not
                if self._retry_delay and self._stop.wait(max(0.0, self._retry_at - time.monotonic())):
                    break
                if self._stop.is_set():
                    break
            self._attempt()

    def start(self, initial_sync=True):
        """Start the loop thread; with initial_sync, one sync runs first (in the thread)."""
        self._stop.clear()
        if initial_sync:
            self._wake.set()
        self._thread = threading.Thread(target=self._run, name="sync-loop", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout=5):
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
