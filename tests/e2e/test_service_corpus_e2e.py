"""The Service semantics corpus (tests/unit/corpus/service_semantics.yaml, the same file the unit
test translates) with real packets: one lab with the corpus' nodes and clients (lab/corpus_lab.py),
one agent on n1, each selected case loaded in turn through the manifest source; each probe opens
real TCP connections (or UDP exchanges) from its source and must reach exactly the corpus'
backends (each answers with its own address:port), be left to the kernel, be refused, or be
dropped (with the corpus' drop reason counted by the agent)."""
import shutil
import time

import pytest

from lab import corpus_lab
from lab.netns import Lab

# Cases and probes the lab cannot express, with why; every other probe of the corpus runs.
EXCLUDED = {
    "nodeport-without-proxy-all":
        "proxyAll is an agent option, not a manifest: the lab's one agent runs with proxyAll, as the "
        "corpus' other cases assume (a restart per value would double the module's time)",
    "load-balancer-mode-dsr":
        "DSR needs an agent on the backend's node to decapsulate and answer; this lab runs one agent "
        "(n1). test_services.py's load_balancer_dsr covers DSR with an agent per node",
}
# Probes of these protocols do not run, whatever their case.
EXCLUDED_PROTOCOLS = {
    "SCTP": "the lab's clients and servers speak TCP and UDP (SCTP needs the kernel's sctp module "
            "and SCTP sockets in every namespace)",
}
FLOWS_PER_BACKEND = 16          # new flows per expected backend (3 backends: P(one unseen) ~ 1e-8)
ANSWER_TIMEOUT = 3.0            # s for a connection that must be answered (kernel or backend)
SILENCE = 1.0                   # s a dropped probe's connections wait (none must be answered)
REFUSAL_FLOWS = 4               # flows of a kernel, reject or drop probe


def excluded(case, probe):
    """Why a probe does not run in the lab, or None."""
    protocol = corpus_lab.parse_destination(probe["to"])[2]
    return (EXCLUDED.get(case["name"]) or EXCLUDED.get(corpus_lab.probe_id(case, probe))
            or EXCLUDED_PROTOCOLS.get(protocol))


def selected():
    """[(case, [probes])] of the corpus minus the excluded probes, in the corpus' order."""
    out = []
    for case in corpus_lab.load_corpus()["cases"]:
        probes = [p for p in case["probes"] if not excluded(case, p)]
        if probes:
            out.append((case, probes))
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The corpus lab with n1's agent running, the first selected case loaded."""
    workdir = str(tmp_path_factory.mktemp("corpus"))
    cases = [case for case, _ in selected()]
    with Lab("xcorp") as lab:
        cl = corpus_lab.CorpusLab(lab, cases, workdir)
        try:
            cl.start_agent(cases[0])
        except Exception:
            print(f"--- n1.log ---\n{cl.log_tail(60)}")
            raise
        yield cl
    shutil.rmtree(workdir, ignore_errors=True)


def expected_outcome(probe):
    """How many flows the probe sends and how long each may wait."""
    expect = probe["expect"]
    if isinstance(expect, list):
        count = FLOWS_PER_BACKEND if probe.get("sticky") else FLOWS_PER_BACKEND * len(expect)
        return count, ANSWER_TIMEOUT
    return REFUSAL_FLOWS, (SILENCE if expect == "drop" else ANSWER_TIMEOUT)


def judge(probe, answers):
    """None when the answers are what the corpus expects, else why not."""
    expect = probe["expect"]
    seen = sorted(set(answers))
    if expect == "kernel":
        ok = seen == [corpus_lab.KERNEL_ANSWER]
    elif expect == "reject":
        ok = seen == ["refused"]
    elif expect == "drop":
        ok = seen == ["timeout"]
    elif probe.get("sticky"):
        ok = len(seen) == 1 and seen[0] in expect
    else:
        ok = seen == sorted(expect)
    return None if ok else f"expected {expect}{' (one of them, sticky)' if probe.get('sticky') else ''}, got {seen}"


@pytest.mark.parametrize("case,probes", selected(), ids=[case["name"] for case, _ in selected()])
def test_case_with_real_packets(corpus, case, probes):
    """Each probe's real connections from its source reach exactly the corpus' backends, or the
    kernel, or are refused, or are dropped for the corpus' reason, as kube-proxy would do."""
    seconds = corpus.load(case, kernel_probes=probes)
    reasons = {p["reason"] for p in probes if p["expect"] == "drop" and "reason" in p}
    before = corpus.drop_counters()
    failures, report = [], []
    for probe in probes:
        count, timeout = expected_outcome(probe)
        result = corpus.probe(probe["from"], probe["to"], count, timeout)
        answers = result["answers"]
        why = judge(probe, answers)
        report.append(f"  {corpus_lab.probe_id(case, probe)}: {count} flows -> "
                      f"{ {a: answers.count(a) for a in sorted(set(answers))} }, slowest {max(result['seconds'])}s")
        if why:
            failures.append(f"{corpus_lab.probe_id(case, probe)}: {why}")
    after = corpus.drop_counters()
    drops = {reason: n - before.get(reason, 0) for reason, n in after.items() if n > before.get(reason, 0)}
    for reason in sorted(reasons - set(drops)):
        failures.append(f"drop reason {reason} not counted (pipeline drops during the case: {drops})")
    if set(drops) - reasons:   # a frame of an answered flow lost and retransmitted, say
        failures.append(f"pipeline drops for reasons no probe expects: {drops}")
    print(f"{case['name']}: loaded in {seconds}s, pipeline drops {drops}\n" + "\n".join(report))
    assert not failures, f"{case['about']}\n" + "\n".join(failures)


def test_every_case_is_run_or_excluded_with_a_reason():
    """EXCLUDED names only cases and probes of the corpus, and every probe either runs or has a
    reason not to."""
    corpus = corpus_lab.load_corpus()
    known = {c["name"] for c in corpus["cases"]} | {corpus_lab.probe_id(c, p) for c in corpus["cases"]
                                                   for p in c["probes"]}
    assert set(EXCLUDED) <= known, set(EXCLUDED) - known
    run = {corpus_lab.probe_id(c, p) for c, probes in selected() for p in probes}
    for case in corpus["cases"]:
        for probe in case["probes"]:
            assert (corpus_lab.probe_id(case, probe) in run) != bool(excluded(case, probe))
    print(f"{len(run)} of {sum(len(c['probes']) for c in corpus['cases'])} probes run with real packets")


def test_health_check_node_port_turns_503_when_the_last_local_endpoint_goes(corpus):
    """The corpus' externalTrafficPolicy Local LoadBalancer, probed as a load balancer does (HTTP
    from outside to n1's address on its healthCheckNodePort): 200 with localEndpoints 1 while
    n1's endpoint is ready; 503 with 0 once it is terminating (kube-proxy counts ready ones only;
    the LB drains it while its flows still reach it) and once it is removed (traffic arriving
    anyway is dropped); 200 again when it is back."""
    case = next(c for c in corpus_lab.load_corpus()["cases"] if c["name"] == "external-traffic-policy-local")
    service = next(o for o in case["objects"] if o["kind"] == "Service" and "healthCheckNodePort" in o["spec"])
    url = f"http://{corpus_lab.NODES['n1'][0]}:{service['spec']['healthCheckNodePort']}/"
    node_port = f"{corpus_lab.NODES['n1'][0]}:{service['spec']['ports'][0]['nodePort']}/TCP"
    steps = [("ready", case, 200, 1, ["10.1.0.5:8080"]),
             ("terminating", corpus_lab.without_local_endpoints(case, terminating=True), 503, 0, ["10.1.0.5:8080"]),
             ("removed", corpus_lab.without_local_endpoints(case), 503, 0, ["timeout"]),
             ("back", case, 200, 1, ["10.1.0.5:8080"])]
    failures = []
    for name, variant, status, local, reached in steps:
        seconds = corpus.load(variant)
        answer = corpus.http_get("external", url)
        timeout = SILENCE if reached == ["timeout"] else ANSWER_TIMEOUT
        result = corpus.probe("external", node_port, REFUSAL_FLOWS, timeout)
        answers = result["answers"]
        print(f"{name}: published in {seconds}s, {url} -> {answer}; {node_port} -> {sorted(set(answers))}, "
              f"slowest {max(result['seconds'])}s")
        want = (status, {"service": {"namespace": "default", "name": service["metadata"]["name"]},
                         "localEndpoints": local, "serviceProxyHealthy": True})
        if answer != want:
            failures.append(f"{name}: {url} answered {answer}, not {want}")
        if sorted(set(answers)) != reached:
            failures.append(f"{name}: {node_port} reached {sorted(set(answers))}, not {reached}")
    assert not failures, "\n".join(failures)


def test_kube_proxy_queued_and_synced_timestamps_follow_a_load(corpus):
    """Loading a case queues a sync (kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds moves
    to the load) and its publish completes after it (..._last_timestamp_seconds not earlier)."""
    case = selected()[0][0]
    before = time.time()
    corpus.load(case)
    metrics = corpus.metrics()
    queued = metrics["kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds"]
    synced = metrics["kubeproxy_sync_proxy_rules_last_timestamp_seconds"]
    print(f"loaded at {before:.3f}: queued {queued - before:+.3f}s, synced {synced - before:+.3f}s")
    assert before <= queued <= synced <= time.time(), metrics


def test_the_agent_dropped_only_what_the_corpus_says(corpus):
    """Over the whole module the pipeline dropped frames only for the reasons the corpus' drop
    probes name: no connection that was answered lost a packet on the way (a first SYN dropped
    for a missing neighbour, say, and saved by its retransmission)."""
    expected = {p["reason"] for _, probes in selected() for p in probes if p["expect"] == "drop"}
    drops = {reason: n for reason, n in corpus.drop_counters().items() if n}
    print(f"pipeline drops over the module: {drops}")
    assert set(drops) <= expected, drops


def test_the_agent_took_every_case_without_an_error(corpus):
    """Every manifest loaded and every publish succeeded, and the agent logged no error: no case
    was judged on a state the agent refused or half applied."""
    with open(corpus.log_path) as f:
        errors = [line for line in f if " ERROR " in line or " CRITICAL " in line or "Traceback" in line]
    assert errors == [], "".join(errors[:20])
