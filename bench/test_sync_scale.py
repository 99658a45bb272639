"""Control-plane scale: a full sync of 5,000 Services / 250,000 endpoints from the loopback API server,
and the latency of one endpoint change. Reports numbers (pytest-benchmark, extra_info); asserts only
that the sync is complete and correct, never a time.

The API server runs in its own process (tests/kube/apiserver.py), so its memory and CPU are not
counted against the agent's. Targets (issue 3): full sync < 5 s and < 2 GiB; one endpoint change
< 20 ms median. Scale with XSKP_SYNC_SERVICES / XSKP_SYNC_ENDPOINTS.

A full sync is timed from the start of the lists to the translated generation, in a process that
has started as the agent does before it lists: modules imported, the Translator made (which loads
the compiled ring builder). The fresh-process figure is the first sync such a process makes.
"""
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APISERVER = os.path.join(ROOT, "tests", "kube", "apiserver.py")
SERVICES = int(os.environ.get("XSKP_SYNC_SERVICES", "5000"))
ENDPOINTS = int(os.environ.get("XSKP_SYNC_ENDPOINTS", "250000"))
NODES = 100


def translate_step():
    """(make, note): make() returns a fresh callable snapshot -> Translation (one Translator, kept
    across calls as the agent keeps it), or make is None when control.translate is not there."""
    try:
        from control.translate import ProxyOptions, Translator
    except ImportError as e:
        return None, f"control.translate not importable ({e}): measured up to the model (ClusterState)"
    from control.config import Config

    def make():
        translator = Translator(ProxyOptions.from_config(Config(node_name="node-0")))
        return lambda snapshot: translator.translate(snapshot.cluster, snapshot.network)
    return make, "up to a translated generation (control.translate.Translator.translate)"


@pytest.fixture(scope="module")
def apiserver_url():
    proc = subprocess.Popen([sys.executable, APISERVER, "--services", str(SERVICES), "--endpoints", str(ENDPOINTS),
                             "--nodes", str(NODES)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=ROOT)
    try:
        url = proc.stdout.readline().strip()
        if not url.startswith("http://"):
            pytest.fail(f"the loopback API server did not start (got {url!r})")
        yield url
    finally:
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def kubeconfig_for(url, directory):
    sys.path.insert(0, os.path.dirname(APISERVER))
    from apiserver import kubeconfig_text
    path = os.path.join(directory, "kubeconfig")
    with open(path, "w") as f:
        f.write(kubeconfig_text(url))
    return path


def full_sync(kubeconfig, translate=None):
    """Start a KubeSource, wait for the first complete list, take the snapshot (and translate it).
    Returns (seconds, source, snapshot)."""
    from control.kube import KubeSource, make_client_factory
    from control.sync import Snapshot, gc_paused
    factory = make_client_factory(kubeconfig)       # imports the client: agent start-up, not sync
    started = time.perf_counter()
    source = KubeSource(factory).start()
    if not source.wait_synced(300):
        source.stop()
        raise AssertionError("the source did not sync within 300 s")
    snapshot = Snapshot(cluster=source.snapshot())
    full_sync.model_seconds = time.perf_counter() - started
    if translate is not None:
        with gc_paused():                            # as SyncLoop.sync_once runs it in the agent
            translate(snapshot)
    return time.perf_counter() - started, source, snapshot


def measure_in_fresh_process(kubeconfig):
    """Run one full sync in a new interpreter: (seconds, peak RSS in MiB of that process)."""
    out = subprocess.run([sys.executable, "-m", "bench.test_sync_scale", kubeconfig], cwd=ROOT,
                         capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")))
    if out.returncode != 0:
        raise AssertionError(f"fresh-process sync failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(900)
def test_full_sync_5000_services_250000_endpoints(benchmark, apiserver_url, tmp_path):
    """The whole cluster arrives: every Service and every endpoint is in the snapshot."""
    kubeconfig = kubeconfig_for(apiserver_url, str(tmp_path))
    make_translate, note = translate_step()
    fresh = measure_in_fresh_process(kubeconfig)     # first, while this process is still small
    results, model_seconds = [], []

    def one():
        seconds, source, snapshot = full_sync(kubeconfig, make_translate() if make_translate else None)
        source.stop()
        results[:] = [(s, None) for s, _ in results]      # keep one state alive, not three
        results.append((seconds, snapshot))
        model_seconds.append(full_sync.model_seconds)

    benchmark.pedantic(one, rounds=3, iterations=1)
    seconds, snapshot = results[-1]
    cluster = snapshot.cluster
    assert len(cluster.services) == SERVICES
    assert sum(len(s.endpoints) for s in cluster.endpoint_slices.values()) == ENDPOINTS
    benchmark.extra_info.update({
        "services": SERVICES, "endpoints": ENDPOINTS, "scope": note,
        "seconds_per_round": [round(s, 3) for s, _ in results],
        "seconds_to_model_per_round": [round(s, 3) for s in model_seconds],
        "fresh_process_seconds": fresh["seconds"], "fresh_process_peak_rss_mib": fresh["peak_rss_mib"],
        "target": "< 5 s, < 2 GiB",
    })
    print(f"\nfull sync {SERVICES} Services / {ENDPOINTS} endpoints: "
          f"{', '.join(f'{s:.2f}' for s, _ in results)} s in-process "
          f"(to the model: {', '.join(f'{s:.2f}' for s in model_seconds)} s); fresh process {fresh['seconds']:.2f} s, "
          f"peak RSS {fresh['peak_rss_mib']:.0f} MiB ({note})")


@pytest.mark.timeout(900)
def test_one_endpoint_change_to_new_snapshot(benchmark, apiserver_url, tmp_path):
    """Flipping one endpoint's ready condition reaches a published snapshot with that change.
    Measured from the HTTP PUT to the publish callback, debounce 0 (the agent's default debounce
    of 50 ms comes on top)."""
    from control.sync import SyncLoop, collector
    kubeconfig = kubeconfig_for(apiserver_url, str(tmp_path))
    make_translate, note = translate_step()
    translate = make_translate() if make_translate else None
    _, source, _ = full_sync(kubeconfig)
    published = threading.Event()
    last = {}
    to_model, put_started = [], [0.0]

    def publish(snapshot):
        to_model.append(time.perf_counter() - put_started[0])
        if translate is not None:
            translate(snapshot)
        last["snapshot"] = snapshot
        published.set()

    loop = SyncLoop(collector(source), publish, debounce=0.0)
    source.reflectors["endpointslices"].on_change = loop.notify
    loop.start()
    assert published.wait(120)
    name = "svc-7-0"
    url = f"{apiserver_url}/apis/discovery.k8s.io/v1/namespaces/bench/endpointslices/{name}"
    with urllib.request.urlopen(url) as r:
        body = json.loads(r.read())
    flips = [0]

    def change():
        flips[0] += 1
        body["endpoints"][0]["conditions"]["ready"] = flips[0] % 2 == 0
        body["metadata"].pop("resourceVersion", None)
        data = json.dumps(body).encode()
        published.clear()
        put_started[0] = time.perf_counter()
        req = urllib.request.Request(url, data=data, method="PUT", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req) as r:
            r.read()
        if not published.wait(10):
            raise AssertionError("no publish within 10 s of the change")

    try:
        benchmark.pedantic(change, rounds=40, iterations=1, warmup_rounds=2)
        got = last["snapshot"].cluster.endpoint_slices[("bench", name)].endpoints[0].ready
        assert got == (flips[0] % 2 == 0)
    finally:
        loop.stop()
        source.stop()
    stats = benchmark.stats.stats
    benchmark.extra_info.update({"scope": note + "; PUT -> publish, debounce 0", "target": "< 20 ms median",
                                 "median_ms": round(stats.median * 1000, 2),
                                 "median_ms_to_model": round(sorted(to_model[-40:])[len(to_model[-40:]) // 2] * 1000, 2)})
    print(f"\none endpoint change -> published snapshot: median {stats.median * 1000:.1f} ms, to the model "
          f"{benchmark.extra_info['median_ms_to_model']:.1f} ms "
          f"(min {stats.min * 1000:.1f}, max {stats.max * 1000:.1f}) ({note})")


if __name__ == "__main__":
    # python -m bench.test_sync_scale KUBECONFIG: one full sync, prints {"seconds", "peak_rss_mib"}
    make_translate, _ = translate_step()
    seconds, src, snap = full_sync(sys.argv[1], make_translate() if make_translate else None)
    src.stop()
    # VmHWM, not getrusage's ru_maxrss: that one starts at the parent's RSS when it spawned us
    with open("/proc/self/status") as status:
        peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"seconds": round(seconds, 3), "model_seconds": round(full_sync.model_seconds, 3),
                      "peak_rss_mib": round(peak_kib / 1024, 1)}))
