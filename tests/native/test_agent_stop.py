"""A clean stop leaves no lock file of the agent's behind in the lock directory (/run/xskproxy);
root, a lab namespace."""
import os

from xsk_test_support import in_netns, needs_native, needs_root

pytestmark = [needs_root, needs_native]


def test_a_clean_stop_removes_the_interfaces_lock_files(tmp_path, monkeypatch):
    """An agent stopped without handover detaches and removes the lock files it took."""
    from control import agent
    from control.config import parse_config
    from dataplane import xsk
    from lab import Lab, forwarder_lab
    lock_dir = tmp_path / "locks"
    monkeypatch.setenv(xsk.LOCK_DIR_ENV, str(lock_dir))
    (tmp_path / "state").mkdir()
    with Lab("xstop") as lab:
        topo = forwarder_lab(lab)
        with in_netns(topo.node):
            node = agent.Agent(parse_config({"transportInterface": "tr0", "gatewayInterface": "gw0",
                                             "stateDir": str(tmp_path / "state"), "flowOffload": False}))
            node.steering = xsk.SteeringProgram()
            node.steering.attach("tr0", "transport", mode="skb")
            node.steering.attach("gw0", "gateway", mode="skb")
            assert len(os.listdir(lock_dir)) == 2
            node.stop()
            assert xsk.attached_program("tr0")[1] == "none"
    assert os.listdir(lock_dir) == []
