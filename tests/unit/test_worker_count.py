"""How many workers the agent starts (`queues`, issue 15): auto is one per receive queue of the
served interfaces, at most one per CPU the agent may run on; in XDP mode a count that leaves
queues without a worker, or several workers with their own flows, is said at start."""
import logging

import pytest

from control import agent, netlink
from control.config import parse_config

CHANNELS = {"eth0": 4, "gw0": 1}


@pytest.fixture
def four_channels_two_cpus(monkeypatch):
    monkeypatch.setattr(netlink, "rx_queue_count", lambda ifname: CHANNELS[ifname])
    monkeypatch.setattr(agent.os, "sched_getaffinity", lambda pid: {0, 1})


def _count(queues, modes, caplog):
    config = parse_config({"transportInterface": "eth0", "gatewayInterface": "gw0", "queues": queues})
    with caplog.at_level(logging.INFO, logger="xskproxy.agent"):
        return agent.Agent(config)._worker_count(modes)


def test_auto_is_one_worker_per_queue_up_to_the_cpus(four_channels_two_cpus, caplog):
    assert _count("auto", {"eth0": "upcall", "gw0": "upcall"}, caplog) == 2
    assert "event=queues workers=2 channels=eth0:4,gw0:1" in caplog.text
    assert "queues_unserved" not in caplog.text and "queues_split_flows" not in caplog.text


def test_xdp_mode_says_which_queues_no_worker_serves_and_that_flows_split(four_channels_two_cpus, caplog):
    assert _count(1, {"eth0": "native", "gw0": "native"}, caplog) == 1
    assert "event=queues_unserved iface=eth0 channels=4 workers=1" in caplog.text
    caplog.clear()
    assert _count("auto", {"eth0": "native", "gw0": "upcall"}, caplog) == 2
    assert "event=queues_unserved iface=eth0 channels=4 workers=2" in caplog.text
    assert "event=queues_split_flows iface=eth0 workers=2" in caplog.text


def test_an_explicit_count_is_kept_in_upcall_mode(four_channels_two_cpus, caplog):
    assert _count(3, {"eth0": "upcall", "gw0": "upcall"}, caplog) == 3
