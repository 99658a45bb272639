"""stateDir is root's alone: the directory 0700, every file in it 0600, whatever the umask (a
DaemonSet's hostPath is made 0755 by the kubelet, and a container's umask is usually 022)."""
import os

import pytest

from control import agent
from dataplane import store


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path):
    return os.stat(path).st_mode & 0o777


def test_a_new_state_dir_is_0700(tmp_path, umask_022):
    """make_state_dir creates stateDir with mode 0700."""
    state = tmp_path / "state"
    store.make_state_dir(str(state))
    assert _mode(state) == 0o700


def test_flow_table_files_are_0600(tmp_path, umask_022):
    """The memory-mapped conntrack and affinity files are created 0600."""
    store.make_state_dir(str(tmp_path))
    store.flush_flow_tables(store.open_flow_tables(str(tmp_path), 0, 1 << 12, 1 << 10))
    tables = [name for name in os.listdir(tmp_path) if name.endswith(".tbl")]
    assert tables and {name: _mode(tmp_path / name) for name in tables} == {name: 0o600 for name in tables}


def test_json_state_files_are_0600_under_umask_022(tmp_path, umask_022):
    """service-ids.json and stats.json (written by the agent) are 0600 under umask 022 too."""
    store.save_id_map(str(tmp_path), agent.SERVICE_IDS, {("default", "web"): 1})
    agent._write_json(str(tmp_path / "stats.json"), {"generation": 1})
    assert _mode(tmp_path / f"{agent.SERVICE_IDS}.json") == 0o600
    assert _mode(tmp_path / "stats.json") == 0o600


def test_an_existing_state_dir_is_made_0700(tmp_path, umask_022):
    """A stateDir that exists with mode 0755 (the kubelet made it) is 0700 once the agent starts."""
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    store.make_state_dir(str(state))
    assert _mode(state) == 0o700
