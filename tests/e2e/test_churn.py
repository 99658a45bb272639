"""Endpoint churn under load (real traffic): backends are removed, marked terminating and added
back through the manifests while long-lived echo connections and a loop of fresh HTTP
connections run through Services of node0's agent."""
import time

from control.agent import read_conntrack

SETTLE = 1.5          # seconds after a manifest write before new connections must follow it
STREAMS = 6           # long-lived echo connections through the echo Service


def _phase_pods(attempts, start, end):
    """Pods that answered the loop's connections started in [start + SETTLE, end)."""
    return {pod for t, pod in attempts if start + SETTLE <= t < end}


def test_established_connections_survive_and_new_ones_follow_the_endpoints(service_lab):
    """Remove a backend, mark another terminating, add the first back: every echo connection to
    a backend that was never removed keeps running without loss (terminating ones included);
    once each change is published no new connection goes to a removed or terminating backend,
    and the re-added one serves again. No connection of the loop fails."""
    sl = service_lab
    node0 = sl.cluster.nodes[0]
    pods = sl.cluster.pods
    client = node0.pods[1]
    streams = [sl.start_client(client.ns, "echo-stream", "10.96.0.20", 7000, 15) for _ in range(STREAMS)]
    loop = sl.start_client(client.ns, "connect-loop", "10.96.0.10", 80, 14)
    t0 = time.monotonic()
    try:
        time.sleep(2.0)
        flows = read_conntrack(f"{sl.workdir}/state-{node0.name}", service="default/echo")
        backend_of = {int(f["src"].split(":")[1]): f["translated_dst"].split(":")[0] for f in flows}
        by_ip = {pod.iface.ip: pod for pod in pods}
        used = [by_ip[ip].name for ip in backend_of.values()]
        # remove the backend fewest streams use; mark terminating the one most streams use
        removed = min(pods, key=lambda p: (used.count(p.name), p.name))
        terminating = max((p for p in pods if p is not removed), key=lambda p: (used.count(p.name), p.name))
        survivors = [p for p in pods if p is not removed]
        marks = {}
        for phase, kwargs in (("removed", {"backends": {"web": survivors, "echo": survivors}}),
                              ("terminating", {"backends": {"web": survivors, "echo": survivors},
                                               "terminating": [terminating.name]}),
                              ("re-added", {"terminating": [terminating.name]})):
            marks[phase] = time.monotonic() - t0
            sl.write_manifests(**kwargs)
            time.sleep(4.0)
        marks["end"] = time.monotonic() - t0
        echoes = [sl.client_result(s, 30) for s in streams]
        looped = sl.client_result(loop, 30)
        attempts = [(t + looped["t0"] - t0, pod) for t, pod in looped["attempts"]]     # on our clock
    finally:
        sl.write_manifests()
    print(f"\nchurn: removed {removed.name}, terminating {terminating.name}; streams on "
          f"{sorted(used)}; {len(attempts)} connections in the loop")

    assert len(backend_of) == STREAMS, f"conntrack shows {len(backend_of)} of {STREAMS} echo flows: {flows}"
    for echo in echoes:
        backend = by_ip[backend_of[echo["local_port"]]]
        if backend is removed:
            continue            # its flow re-balances once the backend is gone: not asserted
        assert echo["error"] is None, (backend.name, echo)
        assert echo["received"] >= echo["sent"] - 1, (backend.name, echo)
        assert echo["max_gap"] < 1.0, (backend.name, echo)
    assert [a for a in attempts if a[1] is None] == [], "connections of the loop failed"
    assert removed.name in {pod for t, pod in attempts if t < marks["removed"]}   # it served before
    assert removed.name not in _phase_pods(attempts, marks["removed"], marks["re-added"])
    assert terminating.name not in _phase_pods(attempts, marks["terminating"], marks["end"])
    assert removed.name in _phase_pods(attempts, marks["re-added"], marks["end"])
