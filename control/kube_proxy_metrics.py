"""kube-proxy's metric series (kubeproxy_*), kept from xskproxy's publishes so that dashboards and
alerts written for kube-proxy read the same meaning here. Bookkeeping only: no I/O, no clock of
its own (every time comes in as an argument), nothing here ever blocks a publish.

What each series means here (kube-proxy's meaning where it has one):
- sync_proxy_rules_duration_seconds: one publish (translate, swap the generation in, steering maps).
- sync_proxy_rules_last_timestamp_seconds: the last time the tables were known to match the
  cluster state: a publish, or a check that found nothing pending (kube-proxy's periodic resync
  plays that part; a quiet cluster must not look stale).
- sync_proxy_rules_last_queued_timestamp_seconds: the last time a change of the cluster state (a
  Service, EndpointSlice or Node from the source) was queued for a publish, as kube-proxy stamps
  it in Sync(), which each of its Service, EndpointSlice and Node handlers calls; 0 before the
  first. Later than last_timestamp_seconds while a queued change waits for its publish.
- network_programming_duration_seconds: from an EndpointSlice's last-change-trigger-time
  annotation (the change of the Pod or Service, stamped by the EndpointSlice controller) to the
  publish after which every worker forwards with it; changes older than the agent are skipped.
- sync_proxy_rules_{service,endpoint}_changes_total: Services, and EndpointSlices, that changed
  from one published state to the next (a change undone within one coalescing window is none).
- sync_proxy_rules_{service,endpoint}_changes_pending: Services whose Service object, and whose
  EndpointSlices, differ between the source's state and the published one.
"""
import threading

# prometheus.ExponentialBuckets(0.001, 2, 15), as kube-proxy's sync histogram
SYNC_BUCKETS = tuple(0.001 * 2 ** i for i in range(15))
# kube-proxy's network programming buckets: 0, 0.25, 0.5, 1..59, 60..115 by 5, 120..300 by 30
PROGRAMMING_BUCKETS = ((0.0, 0.25, 0.5) + tuple(float(s) for s in range(1, 60))
                       + tuple(float(s) for s in range(60, 120, 5)) + tuple(float(s) for s in range(120, 301, 30)))


class Histogram:
    """A fixed-bucket histogram as Prometheus exposes one (cumulative counts per upper bound)."""

    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)     # the last one: above every bound (+Inf)
        self.sum = 0.0
        self.count = 0

    def observe(self, value):
        index = next((i for i, bound in enumerate(self.buckets) if value <= bound), len(self.buckets))
        self.counts[index] += 1
        self.sum += value
        self.count += 1

    def cumulative(self):
        """[(upper bound as Prometheus writes it, observations <= bound)], ending with +Inf."""
        out, running = [], 0
        for bound, n in zip(self.buckets + (float("inf"),), self.counts):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


def changed_keys(old, new):
    """Keys of two {key: model} dicts whose value was added, removed or changed. Models are frozen
    and sources keep the object of an unchanged one, so identity answers most keys cheaply."""
    if old is new:
        return []
    missing = object()
    out = [k for k, v in new.items() if (o := old.get(k, missing)) is not v and o != v]
    out.extend(k for k in old if k not in new)
    return out


def cluster_changes(old, new):
    """(Service keys changed, EndpointSlice keys changed, Service keys with changed slices) between
    two ClusterStates; `old` None counts everything in `new` as added."""
    old_services = old.services if old is not None else {}
    old_slices = old.endpoint_slices if old is not None else {}
    services = changed_keys(old_services, new.services)
    slices = changed_keys(old_slices, new.endpoint_slices)
    owners = set()
    for key in slices:
        s = new.endpoint_slices.get(key) or old_slices.get(key)
        owners.add(s.service_key)
    return services, slices, owners


class KubeProxyMetrics:
    """The state behind the kubeproxy_* series. published() after each publish, check() whenever
    the source's and the published states are compared; families() for a Prometheus collector.
    Thread-safe: the publish thread, the health thread and scrapes call it."""

    def __init__(self, started_at):
        self.started_at = started_at                  # Unix time: older trigger times are skipped
        self.sync_duration = Histogram(SYNC_BUCKETS)
        self.programming = Histogram(PROGRAMMING_BUCKETS)
        self.service_changes_total = 0
        self.endpoint_changes_total = 0
        self.service_changes_pending = 0
        self.endpoint_changes_pending = 0
        self.last_synced = 0.0                        # Unix time; 0: never
        self.last_queued = 0.0                        # Unix time a cluster change was queued; 0: never
        self.out_of_sync_since = None                 # monotonic time a difference was first seen
        self._in_sync_notifications = None            # the source's notification count then
        self._lock = threading.Lock()

    def queued(self, now):
        """A change of the cluster state was queued for a publish at Unix time `now`."""
        with self._lock:
            self.last_queued = now

    def notifier(self, notify, clock):
        """A cluster source's on_change: stamps the change as queued at clock() (Unix time), then
        calls notify() (the sync loop's), so the stamp never comes after the publish it asks for."""
        def on_change():
            self.queued(clock())
            notify()
        return on_change

    def published(self, old, new, seconds, now):
        """A publish of ClusterState `new` (replacing `old`, None at first) took `seconds` and
        was in use by every worker at Unix time `now`."""
        services, slices, _ = cluster_changes(old, new)
        with self._lock:
            self.sync_duration.observe(seconds)
            self.service_changes_total += len(services)
            self.endpoint_changes_total += len(slices)
            for key in slices:
                s = new.endpoint_slices.get(key)
                trigger = s.last_change_trigger_time if s is not None else None
                if trigger is not None and trigger >= self.started_at:
                    self.programming.observe(max(0.0, now - trigger))
            self.last_synced = now

    def check(self, source_state, published_state, notifications, now, monotonic_now):
        """Compare the source's ClusterState with the published one (None: nothing published yet)
        and keep the pending counts. `notifications`: the sync loop's change notifications so
        far; while it stays at the count of a check that found both equal, nothing is compared
        again (every change of the source notifies). Returns True when nothing is pending."""
        with self._lock:
            if notifications is not None and notifications == self._in_sync_notifications:
                self.last_synced = now
                return True
        if published_state is None:
            services, owners = list(source_state.services), {s.service_key for s in
                                                              source_state.endpoint_slices.values()}
        else:
            services, _, owners = cluster_changes(published_state, source_state)
        with self._lock:
            self.service_changes_pending = len(services)
            self.endpoint_changes_pending = len(owners)
            if services or owners:
                if self.out_of_sync_since is None:
                    self.out_of_sync_since = monotonic_now
                self._in_sync_notifications = None
                return False
            self.out_of_sync_since = None
            self._in_sync_notifications = notifications
            self.last_synced = now
            return True

    def families(self):
        """The kubeproxy_* metric families (prometheus_client core families)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
        with self._lock:
            sync = HistogramMetricFamily("kubeproxy_sync_proxy_rules_duration_seconds",
                                         "SyncProxyRules latency in seconds (one publish)",
                                         buckets=self.sync_duration.cumulative(),
                                         sum_value=self.sync_duration.sum)
            programming = HistogramMetricFamily(
                "kubeproxy_network_programming_duration_seconds",
                "In Cluster Network Programming Latency in seconds (EndpointSlice trigger time to "
                "the publish every worker uses)",
                buckets=self.programming.cumulative(), sum_value=self.programming.sum)
            values = (self.last_synced, self.last_queued, self.endpoint_changes_pending,
                      self.endpoint_changes_total, self.service_changes_pending, self.service_changes_total)
        last, queued, endpoints_pending, endpoints_total, services_pending, services_total = values
        yield sync
        yield programming
        yield GaugeMetricFamily("kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                                "The last time proxy rules were successfully synced", value=last)
        yield GaugeMetricFamily("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                                "The last time a sync of proxy rules was queued", value=queued)
        yield GaugeMetricFamily("kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                                "Pending proxy rules Endpoint changes", value=endpoints_pending)
        yield CounterMetricFamily("kubeproxy_sync_proxy_rules_endpoint_changes",
                                  "Cumulative proxy rules Endpoint changes", value=endpoints_total)
        yield GaugeMetricFamily("kubeproxy_sync_proxy_rules_service_changes_pending",
                                "Pending proxy rules Service changes", value=services_pending)
        yield CounterMetricFamily("kubeproxy_sync_proxy_rules_service_changes",
                                  "Cumulative proxy rules Service changes", value=services_total)
