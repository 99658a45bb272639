"""AF_XDP I/O over pyxdp: UMEM, XDP sockets, the XDP steering program and its maps.

The only module of the project that touches AF_XDP sockets, the UMEM mapping or BPF; it never
parses a packet. Failures raise OSError(errno, "<what was attempted on which iface/queue>: ...").
"""
import errno as errno_codes
import fcntl
import ipaddress
import os
import socket
import time

import numpy as np

from dataplane import abi

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BPF_OBJECT_ENV = "XSKPROXY_BPF_OBJ"
BPF_OBJECT_DEFAULT = os.path.join(REPO_ROOT, "build", "native", "xskproxy_steer.bpf.o")

BIND_MODES = {"auto": abi.lib.XSKP_BIND_AUTO, "copy": abi.lib.XSKP_BIND_COPY,
              "zerocopy": abi.lib.XSKP_BIND_ZEROCOPY}
ATTACH_MODES = {"auto": abi.lib.XSKP_ATTACH_AUTO, "native": abi.lib.XSKP_ATTACH_NATIVE,
                "skb": abi.lib.XSKP_ATTACH_SKB, "upcall": abi.lib.XSKP_ATTACH_UPCALL}
ATTACH_MODE_NAMES = {abi.lib.XSKP_ATTACH_NATIVE: "native", abi.lib.XSKP_ATTACH_SKB: "skb",
                     abi.lib.XSKP_ATTACH_AUTO: "none", abi.lib.XSKP_ATTACH_UPCALL: "upcall"}
ROLES = {"gateway": abi.lib.STEER_ROLE_GATEWAY, "transport": abi.lib.STEER_ROLE_TRANSPORT}
PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": 132,
             "icmp": socket.IPPROTO_ICMP, "ipip": socket.IPPROTO_IPIP}
STEER_COUNTER_NAMES = sorted((name for name in {**abi.enum_members("STEER_"), **abi.enum_members("FAST_"),
                                                 **abi.enum_members("UPCALL_")}
                              if name.startswith(("STEER_PASS_", "STEER_REDIRECT_", "STEER_DROP_",
                                                  "FAST_", "UPCALL_"))),
                             key=lambda name: getattr(abi.lib, name))
FLOW_V4_DTYPE = abi.dtype("struct xskp_flow_v4")
FAST_CONFIG_DTYPE = abi.dtype("struct xskp_fast_config")
FLOW_ENTRIES_DEFAULT = 1 << 16

NATIVE_DEBUG_ENV = "XSKPROXY_NATIVE_DEBUG"  # "1": let libbpf/libxdp print their own messages
LOCK_DIR_ENV = "XSKPROXY_LOCK_DIR"
LOCK_DIR_DEFAULT = "/run/xskproxy"
PIN_DIR_ENV = "XSKPROXY_BPF_PIN_DIR"
PIN_DIR_DEFAULT = "/sys/fs/bpf/xskproxy"   # on the host's bpffs (the DaemonSet mounts /sys/fs/bpf)
BUSY_RETRY_SECONDS = 2.0  # a queue's previous socket is torn down asynchronously (EBUSY meanwhile)

_HINTS = {
    errno_codes.ENODEV: "no such interface in this network namespace",
    errno_codes.EBUSY: "already in use (another AF_XDP socket or XDP program: is another xskproxy running?)",
    errno_codes.EPERM: "not permitted: run as root (needs CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF)",
    errno_codes.EACCES: "not permitted: run as root (needs CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF)",
    errno_codes.EINVAL: "invalid argument (queue beyond the interface's channels? see ethtool -l)",
    errno_codes.ENOMEM: "out of memory (locked memory limit? ulimit -l)",
}


class NativeMissingError(RuntimeError):
    """A native piece (pyxdp, libxdp/libbpf, the BPF object) is missing; the message says how to fix it."""


def _pyxdp():
    try:
        import pyxdp
    except ImportError as exc:
        detail = str(exc)
        if "libxdp" in detail or "libbpf" in detail:
            fix = "install the Debian packages libxdp1 libbpf1 (scripts/bootstrap.sh)"
        else:
            fix = "build it with `make build` (needs Debian packages libxdp-dev libbpf-dev clang)"
        raise NativeMissingError(f"the pyxdp extension cannot be loaded ({detail}): {fix}") from None
    global _logging_set
    if not _logging_set:
        pyxdp.lib.xskp_set_library_logging(int(os.environ.get(NATIVE_DEBUG_ENV) == "1"))
        _logging_set = True
    return pyxdp


_logging_set = False


def pyxdp_module():
    """The cffi extension module pyxdp (ffi, lib), or NativeMissingError saying how to get it."""
    return _pyxdp()


def bpf_object_path():
    """Path of the steering program's object: $XSKPROXY_BPF_OBJ, else build/native/ of this repo."""
    path = os.environ.get(BPF_OBJECT_ENV) or BPF_OBJECT_DEFAULT
    if not os.path.isfile(path):
        source = f"${BPF_OBJECT_ENV}" if os.environ.get(BPF_OBJECT_ENV) else "the default location"
        raise NativeMissingError(f"XDP program object {path} ({source}) not found: build it with "
                                 "`make native` (needs Debian packages clang llvm libbpf-dev)")
    return path


def _raise_if_error(result, what):
    """Turn a pyxdp -errno into OSError(errno, '<what>: <strerror>: <hint>')."""
    if result >= 0:
        return result
    code = -result
    hint = _HINTS.get(code)
    message = f"{what}: {os.strerror(code)}" + (f" ({hint})" if hint else "")
    raise OSError(code, message)


def ifindex_of(ifname):
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise OSError(errno_codes.ENODEV,
                      f"interface {ifname}: no such interface in this network namespace") from None


def roles_bits(roles):
    """enum steer_role bits from an int, a role name, or names ('transport', 'gateway')."""
    if isinstance(roles, (int, np.integer)):
        return int(roles)
    if isinstance(roles, str):
        roles = [roles]
    bits = 0
    for name in roles:
        if name not in ROLES:
            raise ValueError(f"role: {name!r} is not one of {', '.join(ROLES)}")
        bits |= ROLES[name]
    return bits


def _addr_be(address):
    """An IPv4 address as the __u32 whose memory holds it in network order."""
    return int.from_bytes(ipaddress.IPv4Address(address).packed, "little")


def _proto_number(proto):
    if isinstance(proto, (int, np.integer)):
        return int(proto)
    if proto.lower() not in PROTOCOLS:
        raise ValueError(f"protocol: {proto!r} is not one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[proto.lower()]


class Umem:
    """frame_count frames of frame_size bytes, shared by the sockets of one worker.

    `frames` is the whole area as one writable numpy uint8 array (no copy); a descriptor address
    is an offset into it. Frames are chunk-aligned: chunk of addr = addr & ~(frame_size - 1)."""

    def __init__(self, frame_count=abi.lib.XSKP_UMEM_FRAMES, frame_size=abi.lib.XSKP_FRAME_SIZE,
                 headroom=abi.lib.XSKP_FRAME_HEADROOM, ring_size=abi.lib.XSKP_RING_SIZE):
        px = _pyxdp()
        self._px = px
        handle = px.ffi.new("uint64_t *")
        _raise_if_error(px.lib.xskp_umem_create(handle, frame_count, frame_size, headroom, ring_size),
                        f"creating a UMEM of {frame_count} x {frame_size} byte frames")
        self.handle = int(handle[0])
        self.frame_count, self.frame_size = frame_count, frame_size
        self.headroom, self.ring_size = headroom, ring_size
        area, size = px.lib.xskp_umem_area(self.handle), px.lib.xskp_umem_size(self.handle)
        self.frames = np.frombuffer(px.ffi.buffer(px.ffi.cast("uint8_t *", area), size), np.uint8)
        self.sockets = []

    def chunk_addresses(self):
        """Every frame's chunk address, in order (the initial free list)."""
        return np.arange(self.frame_count, dtype=np.uint64) * np.uint64(self.frame_size)

    def close(self):
        """Close the sockets still using this UMEM, then unmap it (the frames view dies with it)."""
        for sock in list(self.sockets):
            sock.close()
        if self.handle:
            self.frames = None
            _raise_if_error(self._px.lib.xskp_umem_destroy(self.handle), "destroying the UMEM")
            self.handle = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class XskSocket:
    """An AF_XDP socket on (ifname, queue) sharing `umem`; rx, tx, fill and completion rings.

    mode: 'auto' (zero-copy, else copy), 'copy' or 'zerocopy'; `zerocopy` tells what was
    obtained. Nothing is received until the socket is bound into the steering program
    (SteeringProgram.bind_socket). A queue still held by a just-closed socket (EBUSY) is
    retried for BUSY_RETRY_SECONDS."""

    def __init__(self, umem, ifname, queue=0, mode="auto", need_wakeup=True,
                 ring_size=abi.lib.XSKP_RING_SIZE, busy_retry_seconds=BUSY_RETRY_SECONDS, serves=None):
        """serves: the interface whose traffic the socket carries when that is not ifname (upcall
        mode: the socket sits on the socket end of the interface's upcall pair)."""
        if mode not in BIND_MODES:
            raise ValueError(f"mode: {mode!r} is not one of {', '.join(BIND_MODES)}")
        px = umem._px
        self._px, self.umem, self.ifname, self.queue = px, umem, ifname, queue
        self.serves = serves or ifname
        self.ifindex = ifindex_of(ifname)
        handle = px.ffi.new("uint64_t *")
        deadline, pause = time.monotonic() + busy_retry_seconds, 0.01
        while True:
            result = px.lib.xskp_socket_create(handle, umem.handle, ifname.encode(), queue,
                                               BIND_MODES[mode], int(bool(need_wakeup)), ring_size)
            if result != -errno_codes.EBUSY or time.monotonic() + pause > deadline:
                break
            time.sleep(pause)
            pause = min(pause * 2, 0.2)
        _raise_if_error(result, f"binding an AF_XDP socket ({mode} mode) on {ifname} queue {queue}")
        self.handle = int(handle[0])
        self.fd = px.lib.xskp_socket_fd(self.handle)
        self.zerocopy = bool(_raise_if_error(px.lib.xskp_socket_zerocopy(self.handle),
                                             f"reading the bind mode of the socket on {ifname} queue {queue}"))
        self.need_wakeup = bool(need_wakeup)
        umem.sockets.append(self)

    @property
    def mode_name(self):
        return "zero-copy" if self.zerocopy else "copy"

    def statistics(self):
        """The kernel's XDP_STATISTICS of this socket, as {field: count}."""
        stats = self._px.ffi.new("struct xskp_socket_stats *")
        _raise_if_error(self._px.lib.xskp_socket_statistics(self.handle, stats),
                        f"reading statistics of the socket on {self.ifname} queue {self.queue}")
        return {name: int(getattr(stats, name)) for name, _ in self._px.ffi.typeof(stats[0]).fields}

    def close(self):
        if self.handle:
            self._px.lib.xskp_socket_destroy(self.handle)
            self.handle = 0
            self.umem.sockets.remove(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _InterfaceLock:
    """An flock on /run/xskproxy/xdp-<netns inode>-<ifindex>.lock held while our program is attached
    there: a second xskproxy on the interface fails clearly, and a program left attached by a
    killed one (the kernel dropped its lock) is recognised as stale and replaced."""

    def __init__(self, ifname, ifindex):
        lock_dir = os.environ.get(LOCK_DIR_ENV) or LOCK_DIR_DEFAULT
        netns = os.stat("/proc/thread-self/ns/net").st_ino
        self.path = os.path.join(lock_dir, f"xdp-{netns}-{ifindex}.lock")
        try:
            os.makedirs(lock_dir, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise OSError(exc.errno, f"creating lock file {self.path} for {ifname}: {exc.strerror}"
                          + (f" ({_HINTS[exc.errno]})" if exc.errno in _HINTS else "")) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise OSError(errno_codes.EBUSY, f"attaching the XDP steering program to {ifname}: another "
                          f"xskproxy process serves this interface (lock {self.path} is held)") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock; the file stays for the next holder
            self.fd = None


def remove_stale_pins(pin_dir):
    """Unpin what a predecessor left pinned (a handover or kill -9 keeps the pins) for interfaces
    of this network namespace that no longer exist, e.g. a gateway an OVS restart made anew: each
    pin holds a program and a flow table (megabytes) alive, for nobody. Pins are named
    <hook>-<netns inode>-<ifindex>[-suffix] (native/xskp_io.c pin_path). Returns the names removed."""
    netns = str(os.stat("/proc/self/ns/net").st_ino)
    removed = []
    try:
        names = os.listdir(pin_dir)
    except OSError:
        return removed
    for name in names:
        parts = name.split("-")
        if len(parts) < 3 or parts[1] != netns or not parts[2].isdigit():
            continue
        try:
            socket.if_indextoname(int(parts[2]))
            continue                                   # the interface is there: the pin may be live
        except OSError:
            pass
        try:
            os.unlink(os.path.join(pin_dir, name))
            removed.append(name)
        except OSError:
            pass                                       # another agent's cleanup got there first
    return removed


def attached_program(ifname):
    """What XDP program is attached to ifname now: (prog_id, 'native'|'skb'|'none', name); the
    name is '' when the kernel does not tell it (by id: CAP_SYS_ADMIN)."""
    px = _pyxdp()
    prog_id, mode, name = px.ffi.new("uint32_t *"), px.ffi.new("uint32_t *"), px.ffi.new("char[16]")
    _raise_if_error(px.lib.xskp_xdp_query(ifindex_of(ifname), prog_id, mode, name, 16),
                    f"querying the XDP program of {ifname}")
    return int(prog_id[0]), ATTACH_MODE_NAMES.get(mode[0], "none"), px.ffi.string(name).decode()


def bpf_object_exists(kind, object_id):
    """Whether the BPF 'map' or 'prog' with this kernel id still exists."""
    px = _pyxdp()
    return bool(_raise_if_error(px.lib.xskp_bpf_object_exists(int(kind == "map"), int(object_id)),
                                f"looking up BPF {kind} {object_id}"))


def fast_path_attached(ifname):
    """What sits at the fast path's tc handle on ifname's ingress: (prog_id (0: nothing), name;
    '' when the kernel does not tell it)."""
    px = _pyxdp()
    prog_id, name = px.ffi.new("uint32_t *"), px.ffi.new("char[16]")
    _raise_if_error(px.lib.xskp_tc_query(ifindex_of(ifname), prog_id, name, 16),
                    f"querying the tc fast path of {ifname}")
    return int(prog_id[0]), px.ffi.string(name).decode()


class SteeringProgram:
    """The XDP steering program (native/xskproxy_steer.bpf.c), loaded once, attached to the
    interfaces a worker serves, with its maps written from here.

    prepare() takes an interface and attach() attaches there; sockets bound and maps written in
    between are in place before the first packet. close() detaches it from every interface (the
    kernel path takes all traffic again); hold() + release() leave it attached for a handover. A
    program of ours that another process left attached (killed, or handing over) is replaced
    in one step on attach; any other XDP program makes attach fail with EBUSY.

    Upcall mode (attach mode 'upcall'): no XDP program on the interface itself; the tc fast path
    at its ingress steers what userspace takes into the kernel end of the interface's upcall
    veth pair, xskp_upcall (native XDP) on the socket end redirects it to the interface's
    sockets bound there, and what the agent transmits there leaves through the served interface
    (xskp_upcall_tx at the kernel end). prepare() takes the pair's (kernel end, socket end)."""

    def __init__(self, obj_path=None, flow_entries=FLOW_ENTRIES_DEFAULT, adopt_from=None, pin_dir=None):
        """flow_entries (a power of two): the fast path's flow table; adopt_from: an interface
        whose attached xskproxy program's flow table is reused if it has that size (a handover:
        offloaded flows keep running; self.adopted_flows says whether it happened).

        pin_dir (default $XSKPROXY_BPF_PIN_DIR, else PIN_DIR_DEFAULT; '' for none): a directory
        on a bpffs where every attached program and its flow table are pinned until detached, so
        that the next agent takes them over with CAP_BPF alone (by kernel id that takes
        CAP_SYS_ADMIN). self.pin_dir is None and self.pin_error says why when it is unusable."""
        px = _pyxdp()
        self._px = px
        self.obj_path = obj_path or bpf_object_path()
        if not os.path.isfile(self.obj_path):
            raise NativeMissingError(f"XDP program object {self.obj_path} not found: build it with `make native`")
        handle, adopted = px.ffi.new("uint64_t *"), px.ffi.new("uint32_t *")
        pin_err = px.ffi.new("int32_t *")
        if pin_dir is None:
            pin_dir = os.environ.get(PIN_DIR_ENV) or PIN_DIR_DEFAULT
        adopt_ifindex = 0
        if adopt_from:
            try:
                adopt_ifindex = ifindex_of(adopt_from)
            except OSError:
                adopt_ifindex = 0
        _raise_if_error(px.lib.xskp_steer_open(handle, self.obj_path.encode(), int(flow_entries),
                                               pin_dir.encode(), adopt_ifindex, adopted, pin_err),
                        f"loading the XDP steering program {self.obj_path} "
                        f"(flow table of {flow_entries} entries)")
        self.handle = int(handle[0])
        self.adopted_flows = bool(adopted[0])
        self.pin_dir, self.pin_error = (pin_dir or None), None
        if pin_err[0] < 0:
            code = -pin_err[0]
            reason = "not on a bpffs" if code == errno_codes.EMEDIUMTYPE else os.strerror(code)
            self.pin_dir, self.pin_error = None, f"{pin_dir}: {reason}"
        self.stale_pins_removed = remove_stale_pins(self.pin_dir) if self.pin_dir else []
        self.flow_entries = int(flow_entries)
        self._mmaps = []
        self.tc_ifaces = {}  # ifname -> (ifindex, created the clsact qdisc)
        self.ifaces = {}  # ifname -> (ifindex, xsk_base, attach mode name)
        self._locks = {}  # ifname -> _InterfaceLock
        self._roles = {}  # ifname -> roles as given
        self._queues = {}  # ifname -> worker queues serving it (steer_iface.queues)
        self.upcall_pairs = {}  # ifname -> (kernel end, socket end) in upcall mode
        self._upcall_tc = {}  # kernel end -> ifindex: xskp_upcall_tx attached there
        self._l4_key = np.zeros(1, abi.dtype("struct steer_v4_l4_key"))
        self._lpm_key = np.zeros(1, abi.dtype("struct steer_v4_lpm_key"))
        self._u32 = np.zeros(1, np.uint32)
        self._u32_value = np.zeros(1, np.uint32)
        self._iface_value = np.zeros(1, abi.dtype("struct steer_iface"))
        self._snat_value = np.zeros(1, abi.dtype("struct steer_v4_snat_range"))

    # -- interfaces and sockets -------------------------------------------------------------
    def prepare(self, ifname, roles, upcall_pair=None, queues=None):
        """Take ifname for this program (its lock) and write its steering entry, without attaching:
        sockets can then be bound and maps filled before the program sees a packet. upcall_pair:
        (kernel end, socket end) of ifname's upcall veth pair, for attach(mode='upcall').
        queues: the worker queues serving ifname (steer_iface.queues; None: every queue)."""
        ifindex = ifindex_of(ifname)
        if ifname in self.ifaces:
            raise ValueError(f"interface {ifname}: the steering program is already set up there")
        lock = _InterfaceLock(ifname, ifindex)
        used = {base for _, base, _ in self.ifaces.values()}
        slot = next(s for s in range(abi.lib.STEER_MAX_IFACES) if s * abi.lib.STEER_MAX_QUEUES not in used)
        self.ifaces[ifname] = (ifindex, slot * abi.lib.STEER_MAX_QUEUES, None)
        self._queues[ifname] = abi.lib.STEER_MAX_QUEUES if queues is None else int(queues)
        if upcall_pair:
            self.upcall_pairs[ifname] = tuple(upcall_pair)
        try:
            self.set_roles(ifname, roles)
        except BaseException:
            del self.ifaces[ifname]
            self._queues.pop(ifname, None)
            self.upcall_pairs.pop(ifname, None)
            lock.release()
            raise
        self._locks[ifname] = lock

    def attach(self, ifname, roles=None, mode="auto"):
        """Attach to ifname (prepared before, or now with roles 'transport'/'gateway' or bits);
        returns 'native' or 'skb'. Replaces in one step a program of ours another agent left."""
        if mode not in ATTACH_MODES:
            raise ValueError(f"attach mode: {mode!r} is not one of {', '.join(ATTACH_MODES)}")
        if ifname not in self.ifaces:
            self.prepare(ifname, roles)
        ifindex, xsk_base, attached = self.ifaces[ifname]
        if attached:
            raise ValueError(f"interface {ifname}: the steering program is already attached there")
        if mode == "upcall":
            return self._attach_upcall(ifname)
        mode_out = self._px.ffi.new("uint32_t *")
        result = self._px.lib.xskp_steer_attach(self.handle, ifindex, ATTACH_MODES[mode], mode_out)
        if result < 0:
            self._forget(ifname)
            _raise_if_error(result, f"attaching the XDP steering program to {ifname} ({mode} mode)")
        name = ATTACH_MODE_NAMES[mode_out[0]]
        self.ifaces[ifname] = (ifindex, xsk_base, name)
        return name

    def _attach_upcall(self, ifname):
        """Upcall mode on ifname: the pair's ends get their entries and programs (xskp_upcall_tx
        at the kernel end, xskp_upcall at the socket end); ifname's entry already names the
        kernel end (prepare), so xskp_fast upcalls as soon as it is attached there."""
        if ifname not in self.upcall_pairs:
            raise ValueError(f"interface {ifname}: upcall mode needs its upcall pair (prepare)")
        ifindex, xsk_base, _ = self.ifaces[ifname]
        kernel_end, socket_end = self.upcall_pairs[ifname]
        kernel_index, socket_index = ifindex_of(kernel_end), ifindex_of(socket_end)
        self._write_iface(kernel_index, 0, 0, 0, 0, ifindex, 0, f"setting up {kernel_end}")
        self._write_iface(socket_index, 0, xsk_base, 0, 0, 0, 0, f"setting up {socket_end}")
        created = self._px.ffi.new("uint32_t *")
        _raise_if_error(self._px.lib.xskp_tc_attach(self.handle, kernel_index, abi.lib.XSKP_TC_UPCALL_TX, created),
                        f"attaching xskp_upcall_tx to {kernel_end} (upcall pair of {ifname})")
        self._upcall_tc[kernel_end] = kernel_index
        mode_out = self._px.ffi.new("uint32_t *")
        _raise_if_error(self._px.lib.xskp_steer_attach(self.handle, socket_index, abi.lib.XSKP_ATTACH_UPCALL, mode_out),
                        f"attaching xskp_upcall (native XDP) to {socket_end} (upcall pair of {ifname})")
        # a predecessor in XDP mode may have left its steering program on ifname itself
        _raise_if_error(self._px.lib.xskp_xdp_remove_stale(self.handle, ifindex),
                        f"removing a previous agent's XDP steering program from {ifname}")
        self.ifaces[ifname] = (ifindex, xsk_base, "upcall")
        return "upcall"

    def _detach_upcall(self, ifname):
        ifindex, _, _ = self.ifaces[ifname]
        kernel_end, socket_end = self.upcall_pairs.pop(ifname)
        self.set_roles(ifname, self._roles[ifname], upcall=False)    # upcalls stop first
        errors = []
        for result, what in (
                (self._px.lib.xskp_steer_detach(self.handle, ifindex_of(socket_end)), f"xskp_upcall from {socket_end}"),
                (self._px.lib.xskp_tc_detach(self.handle, self._upcall_tc.pop(kernel_end), 0) if kernel_end in self._upcall_tc else 0,
                 f"xskp_upcall_tx from {kernel_end}")):
            if result < 0 and result != -errno_codes.ENOENT:
                errors.append((result, what))
        for end in (kernel_end, socket_end):
            try:
                self._u32[0] = ifindex_of(end)
                self._delete(abi.lib.STEER_MAP_IFACES, self._u32)
            except OSError:
                pass
        if errors:
            _raise_if_error(errors[0][0], f"detaching {errors[0][1]}")

    def _forget(self, ifname):
        ifindex, _, _ = self.ifaces.pop(ifname)
        self._roles.pop(ifname, None)
        self._queues.pop(ifname, None)
        self.upcall_pairs.pop(ifname, None)
        self._u32[0] = ifindex
        self._delete(abi.lib.STEER_MAP_IFACES, self._u32)
        self._locks.pop(ifname).release()

    def _write_iface(self, ifindex, roles, xsk_base, hold_until_ns, upcall_ifindex, egress_ifindex, queues,
                     what):
        value = self._iface_value
        value["roles"], value["xsk_base"], value["hold_until_ns"] = roles, xsk_base, hold_until_ns
        value["upcall_ifindex"], value["egress_ifindex"] = upcall_ifindex, egress_ifindex
        value["queues"] = queues
        self._u32[0] = ifindex
        self._update(abi.lib.STEER_MAP_IFACES, self._u32, value, what)

    def set_roles(self, ifname, roles, hold_until_ns=0, upcall=True):
        ifindex, xsk_base, _ = self.ifaces[ifname]
        pair = self.upcall_pairs.get(ifname) if upcall else None
        self._write_iface(ifindex, roles_bits(roles), xsk_base, hold_until_ns,
                          ifindex_of(pair[0]) if pair else 0, 0, self._queues[ifname],
                          f"setting the roles of {ifname}")
        self._roles[ifname] = roles

    def detach(self, ifname):
        ifindex, _, attached = self.ifaces[ifname]
        if attached == "upcall":
            try:
                self._detach_upcall(ifname)
            finally:
                self._forget(ifname)
            return
        result = self._px.lib.xskp_steer_detach(self.handle, ifindex) if attached else 0
        self._forget(ifname)
        _raise_if_error(result, f"detaching the XDP steering program from {ifname}")

    def hold(self, seconds):
        """Start a handover: for `seconds`, traffic this program would redirect for translation
        but finds no socket for is dropped instead of passed to the kernel (which would break
        those flows mid-stream); the next agent's attach replaces the program. Then release()."""
        until = time.monotonic_ns() + int(seconds * 1e9)   # CLOCK_MONOTONIC, as bpf_ktime_get_ns
        for ifname, roles in self._roles.items():
            self.set_roles(ifname, roles, until)

    def release(self):
        """Let go of the program and the interfaces' locks but leave it attached, maps and all
        (after hold(); a process exiting this way hands its interfaces to the next agent)."""
        self._let_go(self._px.lib.xskp_steer_release)

    # -- the tc fast path ----------------------------------------------------------------------
    def _mmap_array(self, map_id, dtype, entries):
        """An mmapable BPF array map as a writable numpy array (shared with the BPF programs)."""
        import mmap
        fd = self._px.lib.xskp_steer_map_fd(self.handle, map_id)
        _raise_if_error(fd, "finding the fast path's map")
        size = -(-entries * dtype.itemsize // mmap.PAGESIZE) * mmap.PAGESIZE
        area = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._mmaps.append(area)
        return np.frombuffer(area, dtype, count=entries)

    def fast_tables(self):
        """(flows, config): the fast path's flow table (struct xskp_flow_v4[flow_entries]) and its
        switches (struct xskp_fast_config[1]), memory shared with the BPF programs."""
        flows = self._mmap_array(abi.lib.STEER_MAP_FLOWS_V4, FLOW_V4_DTYPE, self.flow_entries)
        config = self._mmap_array(abi.lib.STEER_MAP_FAST_CONFIG, FAST_CONFIG_DTYPE, 1)
        return flows, config

    def object_ids(self):
        """{'prog': [steering, fast path, upcall, upcall tx], 'map': [...]}: the kernel ids of
        what this loaded."""
        progs = self._px.ffi.new("uint32_t[4]")
        maps = self._px.ffi.new(f"uint32_t[{abi.lib.STEER_MAP_MAX}]")
        _raise_if_error(self._px.lib.xskp_steer_object_ids(self.handle, progs, maps),
                        "reading the BPF object ids")
        return {"prog": list(progs), "map": list(maps)}

    def start_heartbeat(self, config, period_ns=100_000_000,
                        liveness_ns=abi.lib.XSKP_FAST_LIVENESS_NS):
        """Keep the fast path live while this process lives (config: from fast_tables())."""
        if getattr(self, "_heartbeat", 0):
            return
        handle = self._px.ffi.new("uint64_t *")
        _raise_if_error(self._px.lib.xskp_heartbeat_start(handle, config.ctypes.data, period_ns,
                                                          liveness_ns),
                        "starting the fast path's heartbeat")
        self._heartbeat = int(handle[0])

    def stop_heartbeat(self):
        """No more heartbeat: the fast path stops within the liveness time (or a hold's end)."""
        if getattr(self, "_heartbeat", 0):
            self._px.lib.xskp_heartbeat_stop(self._heartbeat)
            self._heartbeat = 0

    def attach_fast_path(self, ifname):
        """The tc fast path at ifname's ingress (a predecessor's is replaced in one step)."""
        ifindex = ifindex_of(ifname)
        created = self._px.ffi.new("uint32_t *")
        _raise_if_error(self._px.lib.xskp_tc_attach(self.handle, ifindex, abi.lib.XSKP_TC_FAST, created),
                        f"attaching the tc fast path to {ifname}")
        self.tc_ifaces[ifname] = (ifindex, bool(created[0]))
        return bool(created[0])

    def remove_fast_path(self, ifname, destroy_qdisc=False):
        """Remove whatever xskp_fast sits at our tc handle on ifname (a predecessor's, when this
        agent runs without the fast path); any other program there is left alone."""
        return bool(_raise_if_error(self._px.lib.xskp_tc_remove_stale(self.handle, ifindex_of(ifname),
                                                                      int(destroy_qdisc)),
                                    f"removing a previous agent's tc fast path from {ifname}"))

    def detach_fast_path(self, ifname, destroy_qdisc=False):
        ifindex, _ = self.tc_ifaces.pop(ifname)
        _raise_if_error(self._px.lib.xskp_tc_detach(self.handle, ifindex, int(destroy_qdisc)),
                        f"detaching the tc fast path from {ifname}")

    def fast_test_run(self, frame, ifname):
        """Run the tc fast path once on `frame` as if received on ifname: (tc action, frame out)."""
        ffi = self._px.ffi
        out = ffi.new("uint8_t[]", max(len(frame) + 256, 2048))
        out_len, action = ffi.new("uint32_t *"), ffi.new("uint32_t *")
        _raise_if_error(self._px.lib.xskp_fast_test_run(self.handle, frame, len(frame), ifindex_of(ifname),
                                                        out, len(out), out_len, action),
                        f"test-running the tc fast path on a {len(frame)} byte frame from {ifname}")
        return int(action[0]), bytes(ffi.buffer(out, out_len[0]))

    def _let_go(self, free):
        self.stop_heartbeat()
        if self.handle:
            self.tc_ifaces.clear()
            self._upcall_tc.clear()
            self.upcall_pairs.clear()
            free(self.handle)
            self.handle = 0
            self.ifaces.clear()
            self._roles.clear()
            for lock in self._locks.values():
                lock.release()
            self._locks.clear()

    def xsk_index(self, sock):
        serves = getattr(sock, "serves", sock.ifname)
        if serves not in self.ifaces:
            raise ValueError(f"socket on {sock.ifname}: the steering program is not set up for {serves}")
        if sock.queue >= abi.lib.STEER_MAX_QUEUES:
            raise ValueError(f"queue: {sock.queue} is beyond STEER_MAX_QUEUES ({abi.lib.STEER_MAX_QUEUES})")
        return self.ifaces[serves][1] + sock.queue

    def bind_socket(self, sock):
        """Steer what the program redirects on (sock.ifname, sock.queue) into sock."""
        _raise_if_error(self._px.lib.xskp_steer_set_socket(self.handle, self.xsk_index(sock), sock.handle),
                        f"binding the socket on {sock.ifname} queue {sock.queue} into the XSKMAP")

    def unbind_socket(self, sock):
        _raise_if_error(self._px.lib.xskp_steer_clear_socket(self.handle, self.xsk_index(sock)),
                        f"removing the socket on {sock.ifname} queue {sock.queue} from the XSKMAP")

    # -- steering maps ----------------------------------------------------------------------
    def _update(self, map_id, key, value, what):
        ffi = self._px.ffi
        _raise_if_error(self._px.lib.xskp_steer_map_update(self.handle, map_id, ffi.from_buffer(key),
                                                           ffi.from_buffer(value)), what)

    def _delete(self, map_id, key, what=None):
        result = self._px.lib.xskp_steer_map_delete(self.handle, map_id, self._px.ffi.from_buffer(key))
        if what and result != -errno_codes.ENOENT:
            _raise_if_error(result, what)

    def _set_prefix_key(self, cidr):
        net = ipaddress.IPv4Network(cidr, strict=False)
        self._lpm_key["prefixlen"], self._lpm_key["addr"] = net.prefixlen, _addr_be(net.network_address)
        return net

    def add_prefix(self, cidr, roles):
        """Steer packets whose destination is in cidr on interfaces with these roles (roles 0: a
        more specific prefix that is never steered)."""
        net = self._set_prefix_key(cidr)
        self._u32_value[0] = roles_bits(roles)
        self._update(abi.lib.STEER_MAP_V4_PREFIXES, self._lpm_key, self._u32_value,
                     f"adding steered prefix {net}")

    def remove_prefix(self, cidr):
        net = self._set_prefix_key(cidr)
        self._delete(abi.lib.STEER_MAP_V4_PREFIXES, self._lpm_key, f"removing steered prefix {net}")

    def _set_l4_key(self, addr, port, proto):
        self._l4_key["addr"], self._l4_key["port"] = _addr_be(addr), socket.htons(int(port))
        self._l4_key["proto"], self._l4_key["pad"] = _proto_number(proto), 0

    def add_frontend(self, addr, port, proto, roles):
        """Steer packets to (addr, port, proto) (a Service frontend) on interfaces with roles."""
        self._set_l4_key(addr, port, proto)
        self._u32_value[0] = roles_bits(roles)
        self._update(abi.lib.STEER_MAP_V4_FRONTENDS, self._l4_key, self._u32_value,
                     f"adding steered frontend {addr}:{port}/{proto}")

    def remove_frontend(self, addr, port, proto):
        self._set_l4_key(addr, port, proto)
        self._delete(abi.lib.STEER_MAP_V4_FRONTENDS, self._l4_key, f"removing frontend {addr}:{port}/{proto}")

    def add_backend(self, addr, port, proto, roles):
        """Steer packets from (addr, port, proto) (a Service backend's replies) on interfaces with roles."""
        self._set_l4_key(addr, port, proto)
        self._u32_value[0] = roles_bits(roles)
        self._update(abi.lib.STEER_MAP_V4_BACKENDS, self._l4_key, self._u32_value,
                     f"adding steered backend {addr}:{port}/{proto}")

    def remove_backend(self, addr, port, proto):
        self._set_l4_key(addr, port, proto)
        self._delete(abi.lib.STEER_MAP_V4_BACKENDS, self._l4_key, f"removing backend {addr}:{port}/{proto}")

    def set_node_address(self, addr, snat_port_min, snat_port_max, roles):
        """Steer packets to addr with a destination port in [min, max] (SNAT replies)."""
        self._u32[0] = _addr_be(addr)
        self._snat_value["snat_port_min"], self._snat_value["snat_port_max"] = snat_port_min, snat_port_max
        self._snat_value["roles"] = roles_bits(roles)
        self._update(abi.lib.STEER_MAP_V4_NODE_ADDRS, self._u32, self._snat_value,
                     f"adding node address {addr} (SNAT ports {snat_port_min}-{snat_port_max})")

    def remove_node_address(self, addr):
        self._u32[0] = _addr_be(addr)
        self._delete(abi.lib.STEER_MAP_V4_NODE_ADDRS, self._u32, f"removing node address {addr}")

    def test_run(self, frame, ifname, queue=0):
        """Run the program once on `frame` (bytes) as if received on (ifname, queue), without
        sending anything anywhere; returns the XDP action (XDP_PASS 2, XDP_REDIRECT 4). The
        counters count it like a received frame."""
        action = self._px.ffi.new("uint32_t *")
        _raise_if_error(self._px.lib.xskp_steer_test_run(self.handle, frame, len(frame), ifindex_of(ifname),
                                                         queue, action),
                        f"test-running the steering program on a {len(frame)} byte frame from {ifname}")
        return int(action[0])

    def counters(self):
        """Packets per steering decision, summed over CPUs: {'STEER_PASS_NO_MATCH': n, ...}."""
        values = np.zeros(abi.lib.STEER_COUNTER_MAX, np.uint64)
        _raise_if_error(self._px.lib.xskp_steer_counters(self.handle, self._px.ffi.from_buffer("uint64_t[]", values),
                                                         len(values)), "reading the steering counters")
        return {name: int(values[getattr(abi.lib, name)]) for name in STEER_COUNTER_NAMES}

    def close(self):
        """Detach from every interface and unload (traffic returns to the kernel path)."""
        self._let_go(self._px.lib.xskp_steer_close)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
