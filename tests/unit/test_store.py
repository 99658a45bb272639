"""State store: generations swap whole, per-flow tables survive a restart in their files, and a
file of another layout is refused (and replaced) rather than adopted."""
import errno
import logging
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from dataplane import abi
from dataplane import store
from dataplane.store import (
    ENTRIES_OFFSET, STATE_HEADER_DTYPE, GenerationStore, backend_ids_in_use, flow_table_path,
    flows_in_use, max_fib_generation, open_flow_tables,
)
from dataplane.tables import make_flow_tables


def test_flow_tables_have_the_shape_make_flow_tables_gives(tmp_path):
    """Memory-mapped tables have the dtypes and (power-of-two) sizes of the in-memory ones."""
    mapped = open_flow_tables(str(tmp_path / "state"), 0, 1000, 3000)
    plain = make_flow_tables(1000, 3000)
    assert type(mapped) is type(plain)
    for m, p in zip(mapped, plain):
        assert m.dtype == p.dtype and m.shape == p.shape and m.flags.writeable
        assert m.flags.c_contiguous


def test_entries_survive_a_restart(tmp_path):
    """Entries written by one agent are there when the next one opens the same files."""
    tables = open_flow_tables(str(tmp_path), 3, 1024, 1024)
    tables.ct[17]["src_addr"], tables.ct[17]["flags"] = 0x0A000001, abi.lib.XSKP_CT_IN_USE
    tables.ct[17]["new_dst_addr"], tables.ct[17]["new_dst_port"] = 0x0A010005, 8080
    tables.ct[17]["proto"], tables.ct[17]["backend_id"], tables.ct[17]["fib_generation"] = 6, 42, 9
    tables.affinity[5]["client_addr"], tables.affinity[5]["in_use"] = 0xC0A80001, 1
    del tables                                     # the agent stops (views and mappings go)

    again = open_flow_tables(str(tmp_path), 3, 1024, 1024)
    assert again.ct[17]["src_addr"] == 0x0A000001 and again.ct[17]["backend_id"] == 42
    assert again.affinity[5]["client_addr"] == 0xC0A80001
    assert flows_in_use(again) == {"ct": 1, "affinity": 1}
    assert backend_ids_in_use(again) == {(0x0A010005, 8080, 6): 42}
    assert max_fib_generation(again) == 9
    # Another queue's files are separate.
    other = open_flow_tables(str(tmp_path), 4, 1024, 1024)
    assert flows_in_use(other) == {"ct": 0, "affinity": 0}


@pytest.mark.parametrize("field,value", [("version", abi.lib.XSKP_STATE_VERSION + 1),
                                         ("entry_size", 1), ("magic", 0x12345678)])
def test_a_file_of_another_layout_is_refused_and_replaced(tmp_path, caplog, field, value):
    """A header whose version, entry size or magic differ is not adopted: a fresh table is
    created and the log line says which file and why."""
    tables = open_flow_tables(str(tmp_path), 0, 1024, 1024)
    tables.ct[1]["flags"] = abi.lib.XSKP_CT_IN_USE
    del tables
    path = flow_table_path(str(tmp_path), "ct", 0)
    with open(path, "r+b") as f:
        header = np.frombuffer(f.read(STATE_HEADER_DTYPE.itemsize), STATE_HEADER_DTYPE).copy()
        header[field] = value
        f.seek(0)
        f.write(header.tobytes())
    with caplog.at_level(logging.WARNING, logger="xskproxy.store"):
        again = open_flow_tables(str(tmp_path), 0, 1024, 1024)
    assert flows_in_use(again)["ct"] == 0
    assert any("flow_table_refused" in r.getMessage() and path in r.getMessage()
               and field in r.getMessage() for r in caplog.records)
    # The replacement is adopted by the next start.
    again.ct[2]["flags"] = abi.lib.XSKP_CT_IN_USE
    del again
    assert flows_in_use(open_flow_tables(str(tmp_path), 0, 1024, 1024))["ct"] == 1


def test_a_different_capacity_is_refused(tmp_path, caplog):
    """Asking for another capacity than the file holds starts empty (and says so)."""
    tables = open_flow_tables(str(tmp_path), 0, 1024, 1024)
    tables.ct[1]["flags"] = abi.lib.XSKP_CT_IN_USE
    del tables
    with caplog.at_level(logging.WARNING, logger="xskproxy.store"):
        bigger = open_flow_tables(str(tmp_path), 0, 4096, 1024)
    assert bigger.ct.shape == (4096,) and flows_in_use(bigger)["ct"] == 0
    assert any("capacity 1024 is not 4096" in r.getMessage() for r in caplog.records)


def test_a_truncated_file_is_refused(tmp_path):
    """A file cut short (e.g. a crash while creating it) is replaced, not mapped past its end."""
    path = flow_table_path(str(tmp_path), "ct", 0)
    open_flow_tables(str(tmp_path), 0, 1024, 1024)
    with open(path, "r+b") as f:
        f.truncate(ENTRIES_OFFSET + 10)
    tables = open_flow_tables(str(tmp_path), 0, 1024, 1024)
    assert tables.ct.shape == (1024,)


def test_publish_swaps_whole_generations_for_a_concurrent_reader():
    """A reader picking generations while they are published never sees a mix of two: every
    array of the generation it holds carries that generation's number."""
    store = GenerationStore()

    def tables_of(n):
        return {"services": np.full(512, n, np.uint32), "backends": np.full(2048, n, np.uint32),
                "maglev": np.full(4096, n, np.uint32)}

    store.publish(tables_of(1))
    reader = store.reader("queue-0")
    stop = threading.Event()
    seen, mixed = [], []

    def worker():
        while not stop.is_set():
            gen = reader.pick()
            values = {int(a[0]) for a in gen.tables.values()} | {int(a[-1]) for a in gen.tables.values()}
            if values != {gen.number}:
                mixed.append((gen.number, values))
            seen.append(gen.number)

    t = threading.Thread(target=worker)
    t.start()
    while not seen:                      # the reader has picked generation 1
        time.sleep(0.001)
    for n in range(2, 400):
        store.publish(tables_of(n))
    while reader.seen < 399:             # ... and will pick the last one (on a loaded machine the
        time.sleep(0.001)                # publishes could otherwise all happen between two picks)
    stop.set()
    t.join()
    assert not mixed
    assert seen == sorted(seen) and len(set(seen)) > 1
    assert reader.pick().number == 399


def test_oldest_in_use_follows_the_slowest_reader():
    """oldest_in_use is the oldest generation any reader last picked, or the current one."""
    store = GenerationStore()
    assert store.oldest_in_use() == 0
    store.publish("g1")
    fast, slow = store.reader("q0"), store.reader("q1")
    fast.pick(), slow.pick()
    store.publish("g2")
    store.publish("g3")
    fast.pick()
    assert store.oldest_in_use() == 1
    slow.pick()
    assert store.oldest_in_use() == 3
    slow.close()
    fast.close()
    store.publish("g4")
    assert store.oldest_in_use() == 4
    with pytest.raises(ValueError, match="does not follow"):
        store.publish("old", number=2)


# --- space and paths: a clear error at start, never a SIGBUS later (issue 13) ---

def allocated_bytes(path):
    return os.stat(path).st_blocks * 512


def test_table_files_have_their_space_reserved(tmp_path):
    """A fresh table file has every block allocated (not sparse): the worker's first write to
    any entry cannot fault for lack of space."""
    open_flow_tables(str(tmp_path), 0, 65536, 4096)
    for kind in ("ct", "affinity"):
        path = flow_table_path(str(tmp_path), kind, 0)
        assert allocated_bytes(path) >= os.path.getsize(path)


def test_an_adopted_sparse_file_gets_its_space_reserved(tmp_path):
    """A file an earlier version left sparse is adopted, entries kept, and its space reserved."""
    tables = open_flow_tables(str(tmp_path), 0, 65536, 4096)
    tables.ct[7]["flags"] = abi.lib.XSKP_CT_IN_USE
    del tables
    path = flow_table_path(str(tmp_path), "ct", 0)
    sparse = str(tmp_path / "sparse")
    subprocess.run(["cp", "--sparse=always", path, sparse], check=True)
    os.replace(sparse, path)
    assert allocated_bytes(path) < os.path.getsize(path) // 2
    again = open_flow_tables(str(tmp_path), 0, 65536, 4096)
    assert flows_in_use(again)["ct"] == 1
    assert allocated_bytes(path) >= os.path.getsize(path)


def test_no_space_is_an_error_naming_the_field_the_directory_and_the_bytes(tmp_path, monkeypatch):
    """When the space cannot be reserved the error names tables.conntrackEntries, stateDir and
    the bytes needed, and no half-made file stays behind."""
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(store.os, "posix_fallocate", no_space)
    with pytest.raises(OSError) as err:
        open_flow_tables(str(tmp_path), 0, 4194304, 4096)
    needed = ENTRIES_OFFSET + 4194304 * store.CT_ENTRY_DTYPE.itemsize
    message = err.value.strerror
    assert err.value.errno == errno.ENOSPC
    assert "tables.conntrackEntries 4194304" in message and f"stateDir {tmp_path}" in message
    assert f"{needed} bytes" in message and "No space left on device" in message
    assert os.listdir(tmp_path) == []


def test_a_state_dir_under_a_file_names_the_field_and_the_path(tmp_path):
    """stateDir below a regular file: the error says stateDir, the path and why."""
    (tmp_path / "hostname").write_text("node-a\n")
    state_dir = str(tmp_path / "hostname" / "x")
    with pytest.raises(OSError) as err:
        open_flow_tables(state_dir, 0, 1024, 1024)
    assert err.value.strerror.startswith(f"stateDir {state_dir}: ")
    assert "Not a directory" in err.value.strerror
    with pytest.raises(OSError, match="is not a directory"):
        store.make_state_dir(str(tmp_path / "hostname"))


TMPFS_CHILD = """
import sys
from dataplane.store import open_flow_tables
try:
    tables = open_flow_tables(sys.argv[1], 0, 4194304, 1024)
except OSError as e:
    print(e.strerror)
    sys.exit(0)
tables.ct["flags"][:] = 1          # what the worker would do: touch every page
print("no error")
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="mounts a tmpfs in a private mount namespace (root, unshare)")
def test_conntrack_table_larger_than_a_small_tmpfs_is_a_clear_error(tmp_path):
    """conntrackEntries 4194304 (320 MiB) with stateDir on a 32 MiB tmpfs: one error naming the
    field and the bytes at start, where the agent died of SIGBUS at the first touch."""
    mount_point = tmp_path / "state"
    mount_point.mkdir()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = (f"mount -t tmpfs -o size=32m tmpfs {mount_point} && "
              f"exec {sys.executable} -c '{TMPFS_CHILD}' {mount_point}")
    out = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                         cwd=root, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert "tables.conntrackEntries 4194304" in out.stdout and "stateDir" in out.stdout
    assert f"{ENTRIES_OFFSET + 4194304 * store.CT_ENTRY_DTYPE.itemsize} bytes" in out.stdout
