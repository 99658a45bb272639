"""`xskproxy run` start-up and publishing without XDP: what fails must fail before anything is
attached, with one message naming the configuration field; limits keep the last good tables."""
import signal
import socket

import pytest

from control import agent
from control.config import ConfigError, parse_config
from control.model import ClusterState, Endpoint, EndpointPort, EndpointSlice, Service, ServicePort
from control.sync import Snapshot
from control.translate import ProxyOptions, Translator


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    """run() installs SIGTERM/SIGINT handlers: give pytest its own back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_busy_metrics_port_fails_before_anything_is_attached(tmp_path, monkeypatch, capsys):
    """metricsAddress on a port another process listens on: run() exits 1 naming the field and
    the address, and the agent was never started (no XDP program attached for a moment)."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    address = f"127.0.0.1:{busy.getsockname()[1]}"
    started = []
    monkeypatch.setattr(agent.Agent, "start", lambda self: started.append(self))
    monkeypatch.setattr(agent.Agent, "stop", lambda self, handover=False: None)
    try:
        assert agent.run(parse_config({"metricsAddress": address, "stateDir": str(tmp_path)})) == 1
    finally:
        busy.close()
    err = capsys.readouterr().err
    assert f"metricsAddress {address}" in err and "Address already in use" in err
    assert started == []


def test_state_dir_below_a_file_names_the_field_and_the_path(tmp_path, capsys):
    """stateDir: <a file>/x stops start-up with stateDir, the path and the reason."""
    (tmp_path / "hostname").write_text("node-a\n")
    state_dir = str(tmp_path / "hostname" / "x")
    config = parse_config({"transportInterface": "lo", "gatewayInterface": "lo", "metricsAddress": "",
                           "stateDir": state_dir})
    assert agent.run(config) == 1
    err = capsys.readouterr().err
    assert f"stateDir {state_dir}: " in err and "Not a directory" in err


def _state(services):
    """ClusterState of `services` ClusterIP Services with two endpoints each."""
    svcs, slices = {}, {}
    for i in range(services):
        svc = Service("default", f"s{i}", cluster_ips=(f"10.96.0.{i + 1}",), ports=(ServicePort("", "TCP", 80),))
        sl = EndpointSlice("default", f"s{i}-1", f"s{i}",
                           endpoints=(Endpoint((f"10.1.{i}.1",)), Endpoint((f"10.1.{i}.2",))),
                           ports=(EndpointPort("", "TCP", 8080),))
        svcs[svc.key] = svc
        slices[sl.key] = sl
    return ClusterState(services=svcs, endpoint_slices=slices)


@pytest.mark.parametrize("tables, services, message", [
    ({"maxServices": 3}, 4, "tables.maxServices: the cluster state has 4 frontends"),
    ({"maxBackends": 7}, 4, "tables.maxBackends: the cluster state has 8 backends"),
])
def test_a_state_above_the_table_limits_is_refused_and_the_last_tables_stay(tmp_path, tables, services, message):
    """tables.maxServices / maxBackends are enforced: a state above them is not translated nor
    published (ConfigError naming the field and both numbers); the last good generation stays."""
    config = parse_config({"stateDir": str(tmp_path), "tables": tables})
    node = agent.Agent(config)
    node.translator = Translator(ProxyOptions.from_config(config))
    node._publish(Snapshot(cluster=_state(services - 1)))
    good = node.store.current
    with pytest.raises(ConfigError) as err:
        node._publish(Snapshot(cluster=_state(services)))
    assert str(err.value).startswith(message)
    assert node.store.current is good
    node._publish(Snapshot(cluster=_state(services - 1)))     # back under: published again
    assert node.store.current.number > good.number


def test_snat_port_range_overlapping_the_nodes_local_ports_stops_start_up(tmp_path, monkeypatch, capsys):
    """snatPortRange overlapping this namespace's net.ipv4.ip_local_port_range: run() exits 1
    naming snatPortRange and the sysctl's value, before any interface is looked at."""
    monkeypatch.setattr(agent, "read_local_port_range", lambda: (32768, 65000))
    config = parse_config({"transportInterface": "no-such-if0", "gatewayInterface": "no-such-if1",
                           "metricsAddress": "", "stateDir": str(tmp_path),
                           "snatPortRange": "61000-65535"})
    assert agent.run(config) == 1
    err = capsys.readouterr().err
    assert "snatPortRange: 61000-65535 overlaps net.ipv4.ip_local_port_range 32768-65000" in err


def test_xskproxy_run_exits_without_the_interpreters_teardown(tmp_path):
    """`xskproxy run` ends with os._exit once the agent returned (after a cold numba compile the
    teardown alone took 1.5 s of a SIGTERM exit): an atexit handler never runs, the exit code and
    everything printed before it still arrive."""
    import subprocess
    import sys
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    config = tmp_path / "config.yaml"
    config.write_text(f"metricsAddress: 127.0.0.1:{busy.getsockname()[1]}\nstateDir: {tmp_path / 'state'}\n")
    program = ("import atexit, sys; atexit.register(lambda: print('teardown ran', flush=True)); "
               "from control import cli; sys.exit(cli.main(['run', '--config', sys.argv[1]]))")
    try:
        proc = subprocess.run([sys.executable, "-c", program, str(config)], capture_output=True, text=True,
                              timeout=60)
    finally:
        busy.close()
    assert proc.returncode == 1
    assert "metricsAddress" in proc.stderr and "teardown ran" not in proc.stdout
