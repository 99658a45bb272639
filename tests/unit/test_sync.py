"""The coalescing sync loop: bursts publish once, unchanged snapshots never, failures retry."""
import argparse
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


def test_back_off_holds_while_notifications_keep_coming():
    """A publish that keeps failing is attempted once per back-off delay, not once per burst of
    notifications: a busy cluster does not turn a failing (full) translate into a busy loop."""
    attempts, stop = [], threading.Event()

    def publish(snapshot):
        attempts.append(time.monotonic())
        raise RuntimeError("still broken")

    loop = SyncLoop(lambda: object(), publish, debounce=0.005, max_delay=0.02,
                    retry_initial=0.2, retry_max=0.2).start()

    def chatter():
        while not stop.is_set():
            loop.notify()
            time.sleep(0.002)

    thread = threading.Thread(target=chatter)
    thread.start()
    try:
        time.sleep(0.7)
    finally:
        stop.set()
        thread.join()
        loop.stop()
    assert 2 <= len(attempts) <= 5
    assert all(b - a >= 0.19 for a, b in zip(attempts, attempts[1:]))


def test_status_shows_a_failing_publish_until_it_recovers():
    """status() says how many attempts in a row failed, with what, and when the next one is;
    after a success nothing is failing but the last error stays for whoever looks later."""
    outcomes = [RuntimeError("table full"), None]

    def publish(snapshot):
        outcome = outcomes.pop(0)
        if outcome:
            raise outcome

    loop = SyncLoop(lambda: 1, publish, retry_initial=0.3).start()
    try:
        assert wait_for(lambda: loop.counters["failures"] == 1)
        status = loop.status()
        assert status["consecutive_failures"] == 1 and status["last_error"] == "RuntimeError: table full"
        assert status["last_error_type"] == "RuntimeError" and 0 < status["retry_in_seconds"] <= 0.3
        assert wait_for(lambda: loop.counters["publishes"] == 1)
        status = loop.status()
        assert status["consecutive_failures"] == 0 and status["retry_in_seconds"] == 0.0
        assert status["last_error"] == "RuntimeError: table full" and status["last_publish_time"]
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


# --- the agent's publish (no XDP: the steering program is not ready) ----------------------------

def test_a_failing_translate_is_retried_by_a_fresh_translator_and_shown(tmp_path, capsys):
    """A Translator whose incremental state makes every translate raise (issue 13) is replaced
    after the failed attempt: the sync loop's retry translates everything anew and publishes.
    While it fails, `xskproxy stats` and the metrics say so, with the error."""
    from control import agent, cli
    from control.config import parse_config
    from control.model import ClusterState, Endpoint, EndpointPort, EndpointSlice, Service, ServicePort
    from control.sync import Snapshot
    from control.translate import ProxyOptions, Translator

    def state(endpoint):
        svc = Service("default", "web", cluster_ips=("10.96.0.10",), ports=(ServicePort("", "TCP", 80),))
        sl = EndpointSlice("default", "web-1", "web", endpoints=(Endpoint((endpoint,)),),
                           ports=(EndpointPort("", "TCP", 8080),))
        return ClusterState(services={svc.key: svc}, endpoint_slices={sl.key: sl})

    node = agent.Agent(parse_config({"stateDir": str(tmp_path)}))
    node.translator = broken = Translator(ProxyOptions(node_name="n1"))
    node._publish(Snapshot(cluster=state("10.1.0.5")))

    def wedged(*args):
        raise KeyError(("default", "web-1"))

    broken._slices_by_service = wedged
    current = [Snapshot(cluster=state("10.1.0.6"))]
    node.sync = SyncLoop(lambda: current[0], node._publish, retry_initial=1.5)   # time to look
    node.sync.published = Snapshot(cluster=state("10.1.0.5"))
    node.sync.start()
    try:
        assert wait_for(lambda: node.sync.counters["failures"] == 1)
        node.write_stats()
        assert cli.cmd_stats(argparse.Namespace(state_dir=str(tmp_path), json=False, explain=False,
                                                all=False)) == 0
        out = capsys.readouterr().out
        assert "PUBLISH FAILING: 1 attempts in a row" in out and "KeyError" in out
        metrics = {m.name: m for m in agent.publish_metrics(node.snapshot())}
        assert metrics["xskproxy_publish_failures"].samples[0].value == 1
        failing = metrics["xskproxy_publish_failing"].samples[0]
        assert failing.value == 1 and failing.labels == {"error": "KeyError"}
        assert node.translator is not broken and node.translator_resets == 1

        assert wait_for(lambda: node.sync.counters["publishes"] == 1)
        tables = node.store.current.tables
        described = agent.describe_tables(tables, node._to_describe[2])
        assert set(described["default/web:/TCP"]["backends"]) == {"10.1.0.6:8080"}
        metrics = {m.name: m for m in agent.publish_metrics(node.snapshot())}
        assert metrics["xskproxy_publish_failing"].samples[0].value == 0
        assert metrics["xskproxy_translator_resets"].samples[0].value == 1
        current[0] = Snapshot(cluster=state("10.1.0.7"))        # later changes publish again
        node.sync.notify()
        assert wait_for(lambda: node.sync.counters["publishes"] == 2)
    finally:
        node.sync.stop()
