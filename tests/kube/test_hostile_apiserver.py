"""The Kubernetes source against a misbehaving API server (apiserver.HOSTILE_WATCHES).

Each hostile watch is served to the Services reflector only; the bounds are on counts, bytes and
the least time between attempts, which load can only make larger, never on how fast things go.
With backoff_initial 0.05 the waits after the n-th failure in a row are at least
0.8 * 0.05 * 2**(n-1): 0.04, 0.08, 0.16, 0.32, 0.64 s, so a 1.5 s window holds at most 6
attempts (the code before the back-off fix made hundreds, or 30 at its constant 0.05 s).
"""
import logging
import os
import time

import pytest

from apiserver import FakeApiServer
from control.kube import KubeSource, StreamCorrupt, _LineBuffer, make_client_factory

OPTIONS = dict(watch_timeout=30, idle_timeout=30, backoff_initial=0.05, backoff_max=30.0)
WINDOW = 1.5                   # seconds each hostile watch is served
MAX_ATTEMPTS = 8               # watches of Services in WINDOW: 6 at most with the back-off
LINE_DROPPED_BY = 48 << 20     # the 16 MiB line cap plus what the sockets buffer on loopback


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def server():
    srv = FakeApiServer(bookmark_interval=0.1).start()
    yield srv
    srv.stop()


@pytest.fixture
def start_source(server, tmp_path):
    """Starts a synced source with OPTIONS overridden by keywords; stops it afterwards."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(server.kubeconfig_text())
    sources = []

    def start(**options):
        source = KubeSource(make_client_factory(kubeconfig), **dict(OPTIONS, **options)).start()
        sources.append(source)
        assert source.wait_synced(10), "the first list did not complete"
        wait_for(lambda: server.watch_count() == 3, what="the three watches to open")
        return source
    yield start
    for source in sources:
        source.stop()


def serve_hostile(server, mode, seconds=WINDOW):
    """Serve `mode` to the Services watches for `seconds` (the open watch is cut first); return
    the times of the Services watch and list requests made meanwhile."""
    server.misbehave(mode)
    server.drop_watches()
    started = time.monotonic()
    time.sleep(seconds)
    return server.requests("services", "watch", since=started), server.requests("services", "list", since=started)


def assert_backs_off(watches):
    """Some attempts, not too many, and each wait at least the doubled one before."""
    assert 2 <= len(watches) < MAX_ATTEMPTS, f"{len(watches)} watches in {WINDOW}s"
    gaps = [b - a for a, b in zip(watches, watches[1:])]
    for n, gap in enumerate(gaps):
        assert gap >= 0.08 * 2 ** n * 0.99, f"wait {n} was {gap:.3f}s (all: {gaps})"


def service_log_lines(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == "xskproxy.kube" and "resource=services" in r.getMessage()]


@pytest.mark.parametrize("mode, relists", [("gone_status", True), ("gone_event", True), ("empty_body", False),
                                           ("garbage", True), ("close_mid_stream", False)])
def test_failing_watches_back_off_with_one_log_line_per_step(server, start_source, caplog, mode, relists):
    """A watch that fails the same way every time (410 as a status or an event, an empty body,
    garbage, a cut after a bookmark) is retried after waits that double, with one log line each;
    410 and garbage are followed by a list, an empty body and a cut resume from the version."""
    caplog.set_level(logging.INFO, logger="xskproxy.kube")
    source = start_source()
    caplog.clear()
    watches, lists = serve_hostile(server, mode)
    assert_backs_off(watches)
    assert (1 <= len(lists) <= len(watches)) if relists else not lists
    lines = service_log_lines(caplog)     # the cut that began it, each failure, one in flight
    assert len(lines) <= len(watches) + 3, "\n".join(lines)
    services = source.reflectors["services"]
    assert services.failures >= 3 and services.last_error


@pytest.mark.parametrize("mode", ["endless_line", "endless_line_unchunked"])
def test_endless_line_is_cut_at_the_line_cap(server, start_source, mode):
    """A watch line that never ends is dropped once it passes 16 MiB (chunked or not), the
    resource is listed again, and the attempts back off; memory stays near the cap."""
    source = start_source()
    rss_before = _rss_bytes()
    watches, lists = serve_hostile(server, mode)
    rss_growth = _rss_bytes() - rss_before
    dropped_at = server.endless_line_dropped_at()
    assert dropped_at, "the client never closed the endless line"
    assert max(dropped_at) < LINE_DROPPED_BY, f"sent before the drop: {[d >> 20 for d in dropped_at]} MiB"
    assert rss_growth < 256 << 20, f"RSS grew {rss_growth >> 20} MiB"
    assert_backs_off(watches)
    assert 1 <= len(lists) <= len(watches)
    assert "longer than 16777216 bytes" in source.reflectors["services"].last_error


def test_hanging_watch_shows_growing_staleness(server, start_source):
    """A server that answers a watch's headers and then sends nothing: staleness grows from the
    last list or event although the connection is open (it read 0 until the read timeout)."""
    source = start_source()
    serve_hostile(server, "hang", seconds=0.0)
    wait_for(lambda: source.staleness() >= 1.0, timeout=5, what="staleness to pass 1 s")
    assert len(server.requests("services", "watch")) == 2      # the first, and the one hanging
    assert source.reflectors["nodes"].last_progress > source.reflectors["services"].last_progress


def test_hang_ended_by_read_timeout_keeps_staleness_and_backs_off(server, start_source):
    """With a short read timeout each hung watch ends in an error; reconnecting confirms nothing,
    so staleness keeps growing across the attempts, which back off."""
    source = start_source(idle_timeout=0.3)
    watches, _ = serve_hostile(server, "hang", seconds=2.0)
    assert 2 <= len(watches) < MAX_ATTEMPTS
    assert source.staleness() >= 1.9
    assert "timed out" in source.reflectors["services"].last_error.lower()


def test_back_off_starts_afresh_after_a_watch_open_long_enough(server, start_source, caplog):
    """After a run of failures, a watch that stays open healthy_after seconds resets the count
    (one log line says so): the next failure waits the first step again."""
    caplog.set_level(logging.INFO, logger="xskproxy.kube")
    source = start_source(healthy_after=0.5)
    services = source.reflectors["services"]
    serve_hostile(server, "empty_body", seconds=1.0)
    assert services.failures >= 3
    server.misbehave(None)
    wait_for(lambda: services.failures == 0, timeout=8, what="the failure count to reset")
    assert any("event=watch_recovered" in line for line in service_log_lines(caplog))
    errors = services.counters["errors"]
    server.drop_watches()
    wait_for(lambda: services.counters["errors"] > errors, what="the cut to count")
    assert services.retry_delay <= 0.05


def test_back_off_starts_afresh_after_a_watch_that_ran_its_timeout(server, start_source):
    """A watch the server ends cleanly at its timeoutSeconds is healthy, however short."""
    source = start_source(watch_timeout=1, healthy_after=60)
    services = source.reflectors["services"]
    serve_hostile(server, "gone_event", seconds=1.0)
    assert services.failures >= 3
    server.misbehave(None)
    wait_for(lambda: services.failures == 0, timeout=8, what="the failure count to reset")
    assert services.counters["errors"] + services.counters["expired"] >= 3


def test_line_buffer_cuts_lines_and_caps_an_unfinished_one():
    """Lines split across pieces come out whole; an unfinished or complete line over the limit
    is an error, one at the limit is not."""
    lines = _LineBuffer(limit=8)
    assert lines.feed(b"ab") == []
    assert lines.feed(b"c\nde\n\nfg") == [b"abc", b"de", b""]
    assert lines.feed(b"h\n") == [b"fgh"]
    assert lines.feed(b"12345678") == [] and lines.rest() == b"12345678"
    with pytest.raises(StreamCorrupt):
        lines.feed(b"9")
    with pytest.raises(StreamCorrupt):
        _LineBuffer(limit=4).feed(b"ok\n12345\n")


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
