"""`xskproxy demo` runs every scenario, whatever failed before it (no root: the lab is faked)."""
import contextlib
from types import SimpleNamespace

from control import cli, demo
from lab import lifecycle, scenarios
from lab.scenarios import Result


class FakeProcess:
    def __init__(self):
        self.returncode = None

    def poll(self):
        return self.returncode


class FakeServiceLab:
    """What demo.main and run_scenarios use of a ServiceLab: nodes, agents, start and stop."""

    def __init__(self, lab, workdir=None):
        nodes = [SimpleNamespace(name=f"node{i}", pods=[SimpleNamespace(name=f"node{i}-pod0")]) for i in range(2)]
        self.cluster = SimpleNamespace(nodes=nodes)
        self.manifest_dir = workdir
        self.agents = {}
        self.started = []

    def start_agents(self):
        for node in self.cluster.nodes:
            self.start_agent(node)

    def start_agent(self, node):
        self.started.append(node.name)
        self.agents[node.name] = FakeProcess()

    def stop_agent(self, node, *args, **kwargs):
        self.agents.pop(node.name)


def _scenario(name, ran, outcome):
    def scenario(sl):
        ran.append(name)
        if outcome == "raise":
            raise RuntimeError(f"{name} broke")
        if outcome == "stop node0":                 # fails and leaves node0's agent stopped
            sl.agents.pop("node0")
            return Result(name, False, "left node0 stopped")
        return Result(name, outcome == "pass", outcome)
    scenario.__name__ = name
    return scenario


def test_demo_runs_every_scenario_after_failures(monkeypatch, capsys):
    """`xskproxy demo` (no flag): a failing Service scenario, one that raises and a failing
    lifetime scenario do not stop the rest: proxyLoadBalancerIPs=false still runs, every row is
    in the table, and the exit status says something failed."""
    ran = []
    service_scenarios = [_scenario("clusterip_tcp", ran, "fail"), _scenario("clusterip_udp", ran, "raise"),
                         _scenario("hairpin", ran, "pass")]
    lifetime = [_scenario("endpoint_churn", ran, "fail"), _scenario("proxy_load_balancer_ips_false", ran, "pass")]
    built = []
    monkeypatch.setattr(demo.os, "geteuid", lambda: 0)
    monkeypatch.setattr(demo, "Lab", lambda prefix: contextlib.nullcontext(SimpleNamespace(prefix=prefix)))
    monkeypatch.setattr(scenarios, "ServiceLab", lambda lab, workdir: built.append(FakeServiceLab(lab, workdir))
                        or built[-1])
    monkeypatch.setattr(scenarios, "SCENARIOS", service_scenarios)
    monkeypatch.setattr(lifecycle, "SCENARIOS", lifetime)
    monkeypatch.setattr(demo, "iperf_gbits", lambda sl, a, b: 1.0)
    assert cli.main(["demo"]) == 1
    assert ran == ["clusterip_tcp", "clusterip_udp", "hairpin", "endpoint_churn", "proxy_load_balancer_ips_false"]
    out = capsys.readouterr().out
    assert "| proxy_load_balancer_ips_false | PASS |" in out and "| endpoint_churn | FAIL |" in out
    assert "FAIL  clusterip_udp: error: RuntimeError: clusterip_udp broke" in out
    assert "3/5 scenarios passed" not in out and "2/5 scenarios passed" in out
    assert cli.main(["demo", "--keep-going"]) == 1         # old scripts' flag: accepted, same run
    assert len(ran) == 10


def test_run_scenarios_restarts_an_agent_a_failed_scenario_left_stopped():
    """The scenario after one that failed with node0's agent stopped finds every agent running
    again (and the report says it was restarted), so it fails only for its own reasons."""
    sl = FakeServiceLab(None)
    sl.start_agents()
    seen = []
    reports = []

    def check_agents(s):
        seen.append(sorted(s.agents))
        return Result("next", True, "")

    results = scenarios.run_scenarios(sl, [_scenario("churn", [], "stop node0"), check_agents],
                                      report=reports.append)
    assert [r.ok for r in results] == [False, True]
    assert seen == [["node0", "node1"]] and sl.started == ["node0", "node1", "node0"]
    assert any("node0's agent was not running: starting it before check_agents" in line for line in reports)
