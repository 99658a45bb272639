"""The state store: published generations of the Service tables, and per-flow tables kept in
memory-mapped files so that a restarted agent adopts them (established flows survive).

Generations: the control thread builds complete ServiceTables off to the side and publishes
them by swapping one reference; a worker picks the current generation up each time its loop
returns to Python and uses it, unchanged, until the next pick. Nothing here ever writes into a
published generation. Per-flow tables: one writer (the worker); this module only creates,
adopts and describes the files, with their whole size reserved on the filesystem before they
are mapped (a sparse file on a full filesystem faults with SIGBUS at a worker's first write;
here it is an error at start naming the configuration field). Never called per packet.
"""
import errno
import json
import logging
import mmap
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from dataplane import abi
from dataplane.tables import AFFINITY_ENTRY_DTYPE, CT_ENTRY_DTYPE, FlowTables, next_pow2

log = logging.getLogger("xskproxy.store")

STATE_HEADER_DTYPE = abi.dtype("struct xskp_state_header")
STATE_MAGIC = abi.lib.XSKP_STATE_MAGIC
STATE_VERSION = abi.lib.XSKP_STATE_VERSION
ENTRIES_OFFSET = 4096          # entries start on their own page, after the header
DEFAULT_STATE_DIR = "/run/xskproxy"
CAPACITY_FIELDS = {"ct": "tables.conntrackEntries",      # the configuration field sizing
                   "affinity": "tables.affinityEntries"}  # each kind of table file


# --- generations ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Generation:
    """One complete, immutable set of Service tables (dataplane.tables.ServiceTables)."""
    number: int
    tables: object
    published_at: float = 0.0                 # time.time() of the publish
    info: dict = field(default_factory=dict)  # e.g. service names, translate stats


class GenerationStore:
    """Holds the current Generation; publish() swaps it in whole (one reference assignment,
    atomic under the GIL), readers pick it up. Tracks which generation each reader last picked
    so the control plane knows the oldest one still in use (oldest_in_use)."""

    def __init__(self):
        self.current = None
        self._readers = {}
        self._lock = threading.Lock()

    def publish(self, tables, number=None, info=None):
        """Make `tables` the current generation. number defaults to the previous one + 1 and
        must increase. Returns the new Generation."""
        previous = self.current
        if number is None:
            number = previous.number + 1 if previous is not None else 1
        elif previous is not None and number <= previous.number:
            raise ValueError(f"number: generation {number} does not follow {previous.number}")
        generation = Generation(number, tables, time.time(), dict(info or {}))
        self.current = generation
        return generation

    def reader(self, name):
        """A GenerationReader for one worker (name: e.g. "queue-0")."""
        with self._lock:
            if name in self._readers:
                raise ValueError(f"reader: {name!r} is already registered")
            reader = GenerationReader(self, name)
            self._readers[name] = reader
            return reader

    def _unregister(self, name):
        with self._lock:
            self._readers.pop(name, None)

    def oldest_in_use(self):
        """The oldest generation number a reader may still be using (the current one when no
        reader holds an older one; 0 when nothing was published)."""
        with self._lock:
            seen = [r.seen for r in self._readers.values()]
        current = self.current.number if self.current is not None else 0
        return min([current] + seen)


class GenerationReader:
    """A worker's view of a GenerationStore: pick() returns the current generation and records
    that this worker now uses it (and no older one)."""

    def __init__(self, store, name):
        self.store = store
        self.name = name
        self.seen = store.current.number if store.current is not None else 0
        self.generation = None

    def pick(self):
        """The current Generation (None before the first publish). Use it until the next pick."""
        generation = self.store.current      # read the reference once: never half of two
        if generation is not None:
            self.seen = generation.number
        self.generation = generation
        return generation

    def close(self):
        self.store._unregister(self.name)


# --- per-flow tables in memory-mapped files --------------------------------------------------

def flow_table_path(state_dir, kind, queue):
    """Path of a per-flow table file: <state_dir>/<kind>-q<queue>.tbl (kind: ct or affinity)."""
    return os.path.join(state_dir, f"{kind}-q{queue}.tbl")


def _capacity(requested):
    return next_pow2(max(int(requested), abi.lib.XSKP_CT_MAX_PROBE))


def _file_size(dtype, capacity):
    return ENTRIES_OFFSET + dtype.itemsize * capacity


def _check_header(path, dtype, capacity):
    """None when the file at path holds a table of this layout and capacity, else why not."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(STATE_HEADER_DTYPE.itemsize)
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if len(raw) < STATE_HEADER_DTYPE.itemsize:
        return f"too short for a header ({len(raw)} bytes)"
    header = np.frombuffer(raw, STATE_HEADER_DTYPE)[0]
    if header["magic"] != STATE_MAGIC:
        return f"magic {int(header['magic']):#x} is not {STATE_MAGIC:#x}"
    if header["version"] != STATE_VERSION:
        return f"version {int(header['version'])} is not {STATE_VERSION}"
    if header["entry_size"] != dtype.itemsize:
        return f"entry_size {int(header['entry_size'])} is not {dtype.itemsize}"
    if header["capacity"] != capacity:
        return f"capacity {int(header['capacity'])} is not {capacity}"
    if size != _file_size(dtype, capacity):
        return f"file size {size} is not {_file_size(dtype, capacity)}"
    return None


def make_state_dir(state_dir):
    """Create stateDir (mode 0700) if needed; OSError naming the field and the path if not."""
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        if os.stat(state_dir).st_mode & 0o777 != 0o700:
            os.chmod(state_dir, 0o700)        # e.g. a hostPath the kubelet made 0755
    except FileExistsError:
        raise OSError(errno.ENOTDIR, f"stateDir {state_dir}: is not a directory") from None
    except OSError as e:
        raise OSError(e.errno, f"stateDir {state_dir}: cannot create the directory: {e.strerror}") from None


def _reserve(fd, path, size, requested):
    """Allocate every block of the file at fd (posix_fallocate; existing data is kept), or raise
    OSError naming the configuration field, stateDir and the bytes needed."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        state_dir, name = os.path.split(path)
        kind = name.split("-q")[0]
        try:
            st = os.statvfs(state_dir)
            free = f" ({st.f_bavail * st.f_frsize} bytes free)"
        except OSError:
            free = ""
        field_name = CAPACITY_FIELDS.get(kind, "tables")
        raise OSError(e.errno, f"stateDir {state_dir}: reserving {size} bytes for {name} "
                      f"({field_name} {requested}): {e.strerror}{free}; lower {field_name} "
                      f"or give stateDir more space") from None


def _create(path, dtype, capacity, requested):
    """A fresh zeroed table file, its space reserved. The header is written last, so a crash
    part-way leaves a file that the next start refuses rather than adopts; a failure leaves none."""
    tmp = f"{path}.new"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _reserve(fd, path, _file_size(dtype, capacity), requested)
        header = np.zeros(1, STATE_HEADER_DTYPE)
        header["version"], header["entry_size"], header["capacity"] = (
            STATE_VERSION, dtype.itemsize, capacity)
        header["magic"] = STATE_MAGIC
        os.pwrite(fd, header.tobytes(), 0)
        os.fsync(fd)
    except BaseException:
        os.unlink(tmp)
        raise
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _map(path, dtype, capacity):
    """numpy view (shared, writable) of the entries of a table file."""
    with open(path, "r+b") as f:
        mapping = mmap.mmap(f.fileno(), _file_size(dtype, capacity), mmap.MAP_SHARED,
                            mmap.PROT_READ | mmap.PROT_WRITE)
    return np.frombuffer(mapping, dtype=dtype, count=capacity, offset=ENTRIES_OFFSET)


def open_flow_table(state_dir, kind, queue, dtype, requested_capacity):
    """Adopt the table file of (kind, queue) if its header matches this layout and capacity,
    else (logging why) create a fresh one; either way with its space reserved. Returns
    (entries view, adopted: bool); OSError naming stateDir (and the field sizing the table when
    the space is missing) if the file cannot be had."""
    capacity = _capacity(requested_capacity)
    make_state_dir(state_dir)
    path = flow_table_path(state_dir, kind, queue)
    adopted = False
    if os.path.exists(path):
        reason = _check_header(path, dtype, capacity)
        if reason is None:
            adopted = True
            fd = os.open(path, os.O_RDWR)       # written sparse by an earlier version, maybe
            try:
                _reserve(fd, path, _file_size(dtype, capacity), requested_capacity)
            finally:
                os.close(fd)
        else:
            log.warning("event=flow_table_refused path=%s reason=%r action=created_fresh",
                        path, reason)
    if not adopted:
        _create(path, dtype, capacity, requested_capacity)
    entries = _map(path, dtype, capacity)
    if adopted:
        log.info("event=flow_table_adopted path=%s capacity=%d", path, capacity)
    return entries, adopted


def open_flow_tables(state_dir, queue, ct_capacity, affinity_capacity):
    """The per-flow tables of worker `queue`, backed by files under state_dir (created, or
    adopted from a previous agent when their layout and capacity match). Returns FlowTables
    (ct, affinity) shaped as dataplane.tables.make_flow_tables returns them, so the pipeline
    takes either. Writes by the worker land in the files (MAP_SHARED); the views stay valid
    while referenced."""
    ct, _ = open_flow_table(state_dir, "ct", queue, CT_ENTRY_DTYPE, ct_capacity)
    affinity, _ = open_flow_table(state_dir, "affinity", queue, AFFINITY_ENTRY_DTYPE,
                                  affinity_capacity)
    return FlowTables(ct=ct, affinity=affinity)


def flush_flow_tables(tables):
    """Write the tables' dirty pages to their files (msync); not needed to survive a process
    restart (the page cache holds them), only a crash of the machine on persistent storage."""
    for entries in tables:
        base = entries.base
        while base is not None and not isinstance(base, mmap.mmap):
            base = getattr(base, "base", None)
        if isinstance(base, mmap.mmap):
            base.flush()


def flows_in_use(tables):
    """How many entries of the conntrack and affinity tables are in use (for logs and dumps)."""
    ct_in_use = int(np.count_nonzero(tables.ct["flags"] & abi.lib.XSKP_CT_IN_USE))
    affinity_in_use = int(np.count_nonzero(tables.affinity["in_use"]))
    return {"ct": ct_in_use, "affinity": affinity_in_use}


def backend_ids_in_use(tables):
    """{(backend addr, port, proto): backend id} of the tracked flows (original direction), for
    a restarted agent's translator to keep the ids its adopted flows refer to."""
    ct = tables.ct
    flags = ct["flags"]
    mask = ((flags & abi.lib.XSKP_CT_IN_USE) != 0) & ((flags & abi.lib.XSKP_CT_REPLY) == 0) \
        & ((flags & abi.lib.XSKP_CT_TOMBSTONE) == 0) & (ct["backend_id"] != 0)
    rows = ct[mask]
    out = {}
    for addr, port, proto, bid in zip(rows["new_dst_addr"].tolist(), rows["new_dst_port"].tolist(),
                                      rows["proto"].tolist(), rows["backend_id"].tolist()):
        out.setdefault((addr, port, proto), bid)
    return out


def save_id_map(state_dir, name, mapping):
    """Write {tuple key: int id} to <state_dir>/<name>.json atomically (e.g. the translator's
    service ids, which conntrack and affinity entries hold), for the next agent to adopt."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    path = os.path.join(state_dir, f"{name}.json")
    rows = sorted([list(key) + [int(value)] for key, value in mapping.items()], key=lambda r: r[-1])
    write_private_json(path, {"version": 1, "ids": rows})


def write_private_json(path, data):
    """Write `data` as JSON to path atomically (a temporary file renamed over it), mode 0600
    whatever the umask: stateDir's files are root's alone."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)                      # an older temporary file kept its mode
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, default=str)
    os.replace(tmp, path)


def load_id_map(state_dir, name):
    """The mapping save_id_map wrote ({} when absent or unreadable, with a log line)."""
    path = os.path.join(state_dir, f"{name}.json")
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
        if data.get("version") != 1:
            raise ValueError(f"version {data.get('version')!r} is not 1")
        return {tuple(row[:-1]): int(row[-1]) for row in data["ids"]}
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        log.warning("event=id_map_refused path=%s reason=%r", path, str(e))
        return {}


def max_fib_generation(tables):
    """The highest fib_generation cached in adopted conntrack entries: a restarted agent's
    translator starts above it, so no cached MAC is trusted across the restart."""
    ct = tables.ct
    in_use = (ct["flags"] & abi.lib.XSKP_CT_IN_USE) != 0
    return int(ct["fib_generation"][in_use].max()) if in_use.any() else 0
