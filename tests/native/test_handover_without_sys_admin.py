"""Agents with the DaemonSet's capabilities and without CAP_SYS_ADMIN (setpriv around `python -m
control.cli run`, root, a two-node lab): a SIGTERM handover and a kill -9 are taken over by the
next agent from the pins in bpffs (BPF_PROG_GET_FD_BY_ID, which needs CAP_SYS_ADMIN, failed
with EPERM here: the new agent adopted nothing and could not replace the upcall programs)."""
import os
import shutil
import signal

import pytest
import yaml

from xsk_test_support import needs_native, needs_root

pytestmark = [needs_root, needs_native,
              pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CAP_SYS_ADMIN = 21


def daemonset_capabilities():
    """setpriv's list of the capabilities deploy/daemonset.yaml adds (+net_admin,+bpf,...)."""
    with open(os.path.join(REPO, "deploy", "daemonset.yaml")) as f:
        container = yaml.safe_load(f)["spec"]["template"]["spec"]["containers"][0]
    return ",".join("+" + cap.lower() for cap in container["securityContext"]["capabilities"]["add"])


@pytest.fixture(scope="module")
def lab_without_sys_admin(tmp_path_factory, bpf_pin_dir):
    """ServiceLab whose agents run with the DaemonSet's capabilities only (bounding, inheritable
    and ambient sets), pinning into the session's bpffs."""
    import sys
    from lab import Lab
    from lab.scenarios import ServiceLab
    if bpf_pin_dir is None:
        pytest.skip("no bpffs could be mounted for the pins")
    caps = daemonset_capabilities()
    workdir = str(tmp_path_factory.mktemp("no-sys-admin"))
    with Lab("xhov") as lab:
        sl = ServiceLab(lab, workdir=workdir)
        sl.agent_command = ["setpriv", f"--bounding-set=-all,{caps}", f"--inh-caps=-all,{caps}",
                            f"--ambient-caps=-all,{caps}", "--", sys.executable, "-m", "control.cli"]
        try:
            sl.start_agents()
            yield sl
        finally:
            for node in sl.cluster.nodes:
                print(f"--- {node.name}.log (tail) ---\n" + sl.node_log(node)[-3000:])
            for node in sl.cluster.nodes:
                if node.name in sl.agents:
                    sl.stop_agent(node, signal.SIGINT, timeout=5.0)
    shutil.rmtree(workdir, ignore_errors=True)


def _capabilities(pid):
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
    return int(status["CapEff"], 16), int(status["CapBnd"], 16)


def _fast_path_lines(sl, node):
    return [line for line in sl.node_log(node).splitlines() if "event=fast_path" in line]


def test_the_agents_run_without_cap_sys_admin(lab_without_sys_admin):
    """The agent processes have neither effective nor bounding CAP_SYS_ADMIN."""
    for proc in lab_without_sys_admin.agents.values():
        effective, bounding = _capabilities(proc.pid)
        assert not effective & (1 << CAP_SYS_ADMIN) and not bounding & (1 << CAP_SYS_ADMIN)


def test_a_handover_restart_adopts_the_flow_table_and_keeps_the_flows(lab_without_sys_admin):
    """SIGTERM + start of node0's agent without CAP_SYS_ADMIN: the new agent starts, adopts the
    fast path's flow table (adopted=True) and every stream survives without a reset (the
    lifecycle scenario restart_without_loss)."""
    from lab import lifecycle
    sl = lab_without_sys_admin
    node0 = sl.cluster.nodes[0]
    result = lifecycle.restart_without_loss(sl)
    fast = _fast_path_lines(sl, node0)
    assert len(fast) >= 2 and "adopted=True" in fast[-1], fast
    assert "bpf_pins_unavailable" not in sl.node_log(node0)
    assert result.ok, result.detail


def test_a_start_after_kill_9_adopts_the_flow_table(lab_without_sys_admin):
    """kill -9 leaves the pins; the next agent without CAP_SYS_ADMIN takes the programs over and
    adopts the flow table."""
    sl = lab_without_sys_admin
    node0 = sl.cluster.nodes[0]
    before = len(_fast_path_lines(sl, node0))
    proc = sl.agents.pop(node0.name)
    proc.send_signal(signal.SIGKILL)
    proc.wait(5)
    sl.start_agent(node0)
    fast = _fast_path_lines(sl, node0)
    assert len(fast) == before + 1 and "adopted=True" in fast[-1], fast
    assert sl.http(node0.pods[0].ns, "http://10.96.0.10/") is not None


def test_sigint_removes_the_pins(lab_without_sys_admin, bpf_pin_dir):
    """SIGINT (a full stop) removes node0's pins with its programs; node1's stay."""
    sl = lab_without_sys_admin
    node0, node1 = sl.cluster.nodes[:2]
    netns = {node.name: os.stat(f"/run/netns/{node.ns}").st_ino for node in (node0, node1)}

    def pins(node):
        return sorted(name for name in os.listdir(bpf_pin_dir) if f"-{netns[node.name]}-" in name)

    assert pins(node0) and pins(node1)
    assert sl.stop_agent(node0, signal.SIGINT, timeout=5.0) == 0
    try:
        assert pins(node0) == []
        assert pins(node1)
    finally:
        sl.start_agent(node0)
