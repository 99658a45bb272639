"""kube-proxy's metric series (control.kube_proxy_metrics): the names and meanings a kube-proxy
dashboard reads, kept from publishes and from comparisons of the source with the tables."""
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from control.kube_proxy_metrics import PROGRAMMING_BUCKETS, SYNC_BUCKETS, KubeProxyMetrics, cluster_changes
from control.model import ClusterState, Endpoint, EndpointSlice, Service, ServicePort


def _svc(name, port=80):
    return Service("default", name, cluster_ips=("10.96.0.1",), ports=(ServicePort("", "TCP", port),))


def _slice(service, name, *addresses, trigger=None):
    return EndpointSlice("default", name, service, endpoints=tuple(Endpoint((a,)) for a in addresses),
                         last_change_trigger_time=trigger)


def _state(services, slices):
    return ClusterState(services={s.key: s for s in services}, endpoint_slices={s.key: s for s in slices})


def _samples(metrics):
    """{(sample name, labels as a tuple): value} of the exposition a scrape would read."""
    registry = CollectorRegistry()
    registry.register(type("Collector", (), {"collect": lambda self: metrics.families()})())
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_buckets_are_kube_proxys():
    """Sync: 1 ms doubling 15 times; programming: 0, 0.25, 0.5, 1..59, 60..115 by 5, 120..300 by 30."""
    assert SYNC_BUCKETS[0] == 0.001 and len(SYNC_BUCKETS) == 15 and abs(SYNC_BUCKETS[-1] - 16.384) < 1e-9
    assert PROGRAMMING_BUCKETS[:4] == (0.0, 0.25, 0.5, 1.0) and PROGRAMMING_BUCKETS[-1] == 300.0
    assert len(PROGRAMMING_BUCKETS) == 3 + 59 + 12 + 7


def test_changes_between_states_count_services_slices_and_their_owners():
    """An added, a changed and a removed object each count once; identical objects none."""
    a, b, c = _svc("a"), _svc("b"), _svc("c")
    old = _state([a, b], [_slice("a", "a-1", "10.1.0.1"), _slice("b", "b-1", "10.1.0.2")])
    new = _state([a, _svc("b", port=81), c], [old.endpoint_slices[("default", "a-1")],
                                              _slice("c", "c-1", "10.1.0.3")])
    services, slices, owners = cluster_changes(old, new)
    assert sorted(services) == [("default", "b"), ("default", "c")]
    assert sorted(slices) == [("default", "b-1"), ("default", "c-1")]
    assert owners == {("default", "b"), ("default", "c")}
    assert cluster_changes(new, new) == ([], [], set())


def test_a_publish_counts_changes_duration_and_programming_latency():
    """Each publish: one sync duration, changes added to the totals, and for each changed slice
    with a trigger time after the agent started, the time from it to the publish."""
    metrics = KubeProxyMetrics(started_at=1000.0)
    first = _state([_svc("a")], [_slice("a", "a-1", "10.1.0.1", trigger=900.0)])   # before the agent
    metrics.published(None, first, 0.004, 1001.0)
    second = _state([_svc("a")], [_slice("a", "a-1", "10.1.0.1", "10.1.0.2", trigger=1010.0),
                                  _slice("a", "a-2", "10.1.0.9", trigger=1011.5)])
    metrics.published(first, second, 0.020, 1012.0)
    samples = _samples(metrics)
    assert samples[("kubeproxy_sync_proxy_rules_duration_seconds_count", ())] == 2
    assert samples[("kubeproxy_sync_proxy_rules_duration_seconds_bucket", (("le", "0.004"),))] == 1
    assert samples[("kubeproxy_sync_proxy_rules_service_changes_total", ())] == 1
    assert samples[("kubeproxy_sync_proxy_rules_endpoint_changes_total", ())] == 3
    assert samples[("kubeproxy_network_programming_duration_seconds_count", ())] == 2
    assert samples[("kubeproxy_network_programming_duration_seconds_sum", ())] == 2.5
    assert samples[("kubeproxy_network_programming_duration_seconds_bucket", (("le", "0.5"),))] == 1
    assert samples[("kubeproxy_network_programming_duration_seconds_bucket", (("le", "2.0"),))] == 2
    assert samples[("kubeproxy_sync_proxy_rules_last_timestamp_seconds", ())] == 1012.0


def test_pending_changes_are_services_whose_objects_or_slices_differ_from_the_tables():
    """The source ahead of the tables: pending counts Services (not events), and since when;
    equal again: zero, and the last-sync timestamp moves on as kube-proxy's resync would."""
    metrics = KubeProxyMetrics(started_at=0.0)
    published = _state([_svc("a")], [_slice("a", "a-1", "10.1.0.1")])
    source = _state([_svc("a", port=81), _svc("b")],
                    [_slice("a", "a-1", "10.1.0.1", "10.1.0.2"), _slice("a", "a-2", "10.1.0.3")])
    assert metrics.check(source, published, notifications=5, now=100.0, monotonic_now=50.0) is False
    assert (metrics.service_changes_pending, metrics.endpoint_changes_pending) == (2, 1)
    assert metrics.out_of_sync_since == 50.0
    metrics.check(source, published, notifications=6, now=101.0, monotonic_now=51.0)
    assert metrics.out_of_sync_since == 50.0                      # the oldest pending change counts
    assert metrics.check(source, source, notifications=7, now=102.0, monotonic_now=52.0) is True
    assert (metrics.service_changes_pending, metrics.endpoint_changes_pending) == (0, 0)
    assert metrics.out_of_sync_since is None and metrics.last_synced == 102.0
    samples = _samples(metrics)
    assert samples[("kubeproxy_sync_proxy_rules_service_changes_pending", ())] == 0
    assert samples[("kubeproxy_sync_proxy_rules_endpoint_changes_pending", ())] == 0


def test_an_unchanged_notification_count_skips_the_comparison():
    """Once equal at notification count N, later checks at N compare nothing (every source
    change notifies) and only move the timestamp on."""
    metrics = KubeProxyMetrics(started_at=0.0)
    state = _state([_svc("a")], [])
    metrics.check(state, state, notifications=3, now=10.0, monotonic_now=1.0)

    class Exploding:
        @property
        def services(self):
            raise AssertionError("compared although nothing notified")

    assert metrics.check(Exploding(), state, notifications=3, now=11.0, monotonic_now=2.0) is True
    assert metrics.last_synced == 11.0


def test_the_last_queued_timestamp_is_the_last_change_handed_to_the_sync_loop():
    """kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds: 0 until a change is queued; a
    source's on_change made by notifier() stamps the clock's time, then notifies the sync loop
    (stamp first: the publish it asks for can never precede it); a publish does not move it."""
    metrics = KubeProxyMetrics(started_at=0.0)
    assert _samples(metrics)[("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds", ())] == 0
    seen_at_notify = []
    clock = iter([1000.0, 1003.5])
    on_change = metrics.notifier(lambda: seen_at_notify.append(metrics.last_queued), lambda: next(clock))
    on_change()
    assert seen_at_notify == [1000.0]
    metrics.published(None, _state([_svc("a")], []), 0.01, 1000.2)
    on_change()
    samples = _samples(metrics)
    assert samples[("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds", ())] == 1003.5
    assert samples[("kubeproxy_sync_proxy_rules_last_timestamp_seconds", ())] == 1000.2
    assert seen_at_notify == [1000.0, 1003.5]
