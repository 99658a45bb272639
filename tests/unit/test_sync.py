"""The coalescing sync loop: bursts publish once, unchanged snapshots never, failures retry."""
import threading
import time

from control.sync import SyncLoop


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


class Counter:
    def __init__(self):
        self.value = 0
        self.lock = threading.Lock()

    def bump(self):
        with self.lock:
            self.value += 1


def test_burst_of_notifications_coalesces_into_one_publish():
    """100 notifications within the debounce window give one collect and one publish."""
    state, published, collects = Counter(), [], []

    def collect():
        collects.append(1)
        return state.value

    loop = SyncLoop(collect, published.append, debounce=0.05).start(initial_sync=False)
    try:
        for _ in range(100):
            state.bump()
            loop.notify()
        assert wait_for(lambda: published)
        time.sleep(0.2)
        assert published == [100]
        assert len(collects) == 1
    finally:
        loop.stop()


def test_unchanged_snapshot_is_not_published():
    """A notification that leads to an equal snapshot does not call publish again."""
    published = []
    loop = SyncLoop(lambda: "same", published.append, debounce=0.01).start()
    try:
        assert wait_for(lambda: published == ["same"])
        loop.notify()
        assert wait_for(lambda: loop.counters["unchanged"] == 1)
        assert published == ["same"]
    finally:
        loop.stop()


def test_publish_failure_is_retried_and_the_loop_survives():
    """publish raising twice is retried with back-off until it succeeds; later changes still publish."""
    attempts, published, state = [], [], Counter()

    def publish(snapshot):
        attempts.append(snapshot)
        if len(attempts) <= 2:
            raise RuntimeError("table full")
        published.append(snapshot)

    loop = SyncLoop(lambda: state.value, publish, debounce=0.01, retry_initial=0.02, retry_max=0.05).start()
    try:
        assert wait_for(lambda: published == [0])
        assert loop.counters["failures"] == 2 and "table full" in loop.last_error
        state.bump()
        loop.notify()
        assert wait_for(lambda: published == [0, 1])
    finally:
        loop.stop()


def test_collect_failure_does_not_kill_the_loop():
    """An exception in collect is counted and retried; the thread keeps running."""
    calls, published = [], []

    def collect():
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("source broken")
        return "ok"

    loop = SyncLoop(collect, published.append, debounce=0.01, retry_initial=0.02).start()
    try:
        assert wait_for(lambda: published == ["ok"])
        assert loop.counters["failures"] == 1
    finally:
        loop.stop()


def test_continuous_notifications_still_publish_within_max_delay():
    """A source that never goes quiet still gets a publish every max_delay."""
    state, published = Counter(), []
    loop = SyncLoop(lambda: state.value, published.append, debounce=0.05, max_delay=0.2).start(initial_sync=False)
    stop = threading.Event()

    def chatter():
        while not stop.is_set():
            state.bump()
            loop.notify()
            time.sleep(0.01)

    t = threading.Thread(target=chatter)
    t.start()
    try:
        assert wait_for(lambda: len(published) >= 2, timeout=2)
    finally:
        stop.set()
        t.join()
        loop.stop()


def test_manifest_edit_reaches_publish(tmp_path):
    """Editing a manifest file publishes a Snapshot whose cluster has the edited Service."""
    from control.manifests import ManifestSource
    from control.sync import collector

    f = tmp_path / "svc.yaml"
    f.write_text("kind: Service\nmetadata: {name: a, namespace: default}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n")
    published = []
    loop = SyncLoop(None, published.append, debounce=0.01)
    source = ManifestSource(f, on_change=loop.notify, interval=0.02)
    loop.collect = collector(source)
    source.start()
    loop.start()
    try:
        assert wait_for(lambda: published and ("default", "a") in published[-1].cluster.services)
        f.write_text(f.read_text().replace("port: 80", "port: 8080 "))
        assert wait_for(lambda: published[-1].cluster.services[("default", "a")].ports[0].port == 8080)
    finally:
        source.stop()
        loop.stop()


def test_nothing_is_published_before_the_source_has_synced():
    """collector() yields nothing while the source has not completed its first list, then publishes."""
    from control.model import ClusterState
    from control.sync import collector

    class Source:
        synced = False

        def has_synced(self):
            return self.synced

        def snapshot(self):
            return ClusterState()

    source, published = Source(), []
    loop = SyncLoop(collector(source), published.append, debounce=0.01).start()
    try:
        time.sleep(0.1)
        assert published == [] and loop.counters["failures"] == 0
        source.synced = True
        loop.notify()
        assert wait_for(lambda: len(published) == 1)
    finally:
        loop.stop()


def test_gc_paused_nests_and_restores():
    """gc_paused keeps the GC off until the outermost use ends, then restores it; publish runs paused."""
    import gc
    from control.sync import gc_paused
    assert gc.isenabled()
    with gc_paused():
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    seen = []
    SyncLoop(lambda: 1, lambda s: seen.append(gc.isenabled())).sync_once()
    assert seen == [False] and gc.isenabled()


def test_gc_paused_freezes_the_survivors_of_a_bulk_load_only():
    """A pause that created many objects freezes them (later collections skip them); a small
    one leaves the collector as it was."""
    import gc
    from control.sync import GC_FREEZE_AFTER, gc_paused
    gc.collect()
    frozen = gc.get_freeze_count()
    with gc_paused():
        small = [[i] for i in range(1000)]
    assert gc.get_freeze_count() == frozen
    with gc_paused():
        bulk = [[i] for i in range(GC_FREEZE_AFTER + 1000)]
    try:
        assert gc.get_freeze_count() >= frozen + len(bulk)
        assert gc.get_count()[0] < 1000                 # nothing young left to traverse
    finally:
        gc.unfreeze()
    del small, bulk
