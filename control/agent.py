"""The agent (`xskproxy run`): wires sources, netlink, translate, the state store, the steering
program and one worker per queue, and publishes what it does (stats.json, services.json,
Prometheus metrics). The only place that owns the process's lifetime; it never parses packets.

Start order keeps traffic on the kernel path until xskproxy can serve it: per-flow tables are
adopted first, the first generation is translated and published, the workers start with their
sockets bound, the steering maps are filled, and only then is the steering program attached
(replacing in one step the program a predecessor left). Stop reverses it. SIGINT, or SIGTERM
with handoverSeconds 0: detach (traffic returns to the kernel at once), stop the workers. SIGTERM
otherwise is a handover, as a DaemonSet upgrade needs it: the program stays attached and for
handoverSeconds drops the translated traffic it has no socket for (the kernel would break those
flows; TCP retransmits them to the next agent), then falls back to the kernel. Either way the
per-flow files stay for the next start.

Two tiers (flowOffload, the default): the steering program's object also holds the tc fast
path; the workers' flow tables share its flow table (mmapped), a heartbeat thread keeps it live,
and it is attached at tc ingress of both interfaces right before the XDP program. A handover
leaves it attached and executing offloaded flows through the hold; the next agent adopts the
flow table of the program it replaces, so those flows never stop. SIGINT removes the filter
(and the clsact qdisc if an xskproxy agent created it).

Upcall mode (xdpMode auto on virtual interfaces): the workers' sockets sit on the socket end of
each interface's upcall veth pair (made before the workers, kept by a handover, deleted by
SIGINT), whose programs are attached before the fast path that upcalls into them.
"""
import collections
import fcntl
import json
import logging
import os
import signal
import sys
import threading
import time

import numpy as np

from control import health, netlink
from control.config import check_snat_port_range, read_local_port_range
from control.kube_proxy_metrics import KubeProxyMetrics
from control.sync import SyncLoop, collector
from control.translate import (ProxyOptions, Translator, apply_backend_steering, apply_steering_changes,
                               describe_tables)
from dataplane import abi, store
from dataplane.tables import counters_by_name, next_pow2, with_fast_path, with_partition

log = logging.getLogger("xskproxy.agent")

STATS_INTERVAL = 1.0          # seconds between stats.json / metrics snapshots
COUNT_INTERVAL = 10.0         # seconds between in-use counts of the flow tables in a snapshot: a count
                              # reads every entry (~100 MB at the default sizes), on the workers' CPU
MISS_POLL_INTERVAL = 0.1      # seconds between looks at the workers' neighbour-miss slots
FIRST_SYNC_TIMEOUT = 60.0     # how long start() waits for the source's first complete state
PICKUP_TIMEOUT = 0.05         # how long a publish waits for every worker to pick it up
SERVICE_IDS = "service-ids"   # state-dir file keeping service ids stable across restarts
FAST_PATH_QDISCS = "fast-path-qdiscs.json"  # state-dir file: interfaces whose clsact we created
MAX_MISSED_HOPS = 1024        # next hops learned from the pipeline's misses, oldest forgotten first


def _worker_class():
    """dataplane.forwarder.Worker, extended to pick each slice's tables from the state store
    (a publish asks every worker to return from its slice)."""
    from dataplane import forwarder

    class StoreWorker(forwarder.Worker):
        def __init__(self, reader, flow_tables, **kwargs):
            generation = reader.pick()
            super().__init__(state=(generation.tables, flow_tables), **kwargs)
            self.reader, self.flow_tables = reader, flow_tables

        def _next_slice(self):
            super()._next_slice()
            self.state = (self.reader.pick().tables, self.flow_tables)

    return forwarder, StoreWorker


class Agent:
    """One node's xskproxy. start() brings it up, stop() takes it down; both log one line per step."""

    def __init__(self, config, netns=None):
        self.config = config
        self.netns = netns
        self.store = store.GenerationStore()
        self.translator = None
        self.steering = None
        self.fast_config = None                         # the fast path's switches (mmapped)
        self.workers = []
        self.flow_tables = []
        self.source = None
        self.network = None
        self.neighbours = None
        self._wanted_hops = set()                       # next hops the tables need
        self._missed_hops = collections.OrderedDict()   # next hops the pipeline missed
        self.sync = None
        self.started_at = None
        self._counted = None              # (monotonic time, per-worker in-use counts, fast-path entries)
        self.last_translation_stats = {}
        self._saved_service_ids = None                  # what SERVICE_IDS holds on disk
        self._to_describe = None                        # (generation, tables, service names)
        self._described_generation = None               # what services.json shows
        self._stats_thread = None
        self.kube_proxy_metrics = KubeProxyMetrics(started_at=time.time())
        self.health = None                              # control.health.HealthServers once started
        self._stop = threading.Event()
        self._publish_lock = threading.Lock()
        self.steering_ready = False
        self.translator_resets = 0                      # Translators replaced after a failed publish
        self.upcall_interfaces = []                     # served interfaces in upcall mode

    # -- lifetime ----------------------------------------------------------------------------
    def start(self):
        from dataplane import xsk
        cfg = self.config
        self.started_at = time.time()
        check_snat_port_range(cfg.snat_port_range, read_local_port_range())
        for ifname in (cfg.transport_interface, cfg.gateway_interface):
            xsk.ifindex_of(ifname)                 # one clear OSError when an interface is missing
        store.make_state_dir(cfg.state_dir)        # one OSError naming stateDir and the path

        served = ((cfg.transport_interface, "transport"), (cfg.gateway_interface, "gateway"))
        wanted = {ifname: self._xdp_mode(ifname) for ifname, _ in served}
        self.worker_count = self._worker_count(wanted)

        # per-flow state first: a restarted agent adopts its predecessor's flows
        adopted_ids, fib_base = {}, 0
        for queue in range(self.worker_count):
            tables = store.open_flow_tables(cfg.state_dir, queue, cfg.tables.conntrack_entries,
                                            cfg.tables.affinity_entries)
            self.flow_tables.append(tables)
            adopted_ids.update(store.backend_ids_in_use(tables))
            fib_base = max(fib_base, store.max_fib_generation(tables))
            log.info("event=flow_tables queue=%d in_use=%s", queue, store.flows_in_use(tables))
        self.translator = Translator(ProxyOptions.from_config(cfg), fib_generation_base=fib_base + 1)
        if adopted_ids:
            self.translator.adopt_backend_ids(adopted_ids)
        self.translator.adopt_service_ids(store.load_id_map(cfg.state_dir, SERVICE_IDS))
        self.neighbours = netlink.NeighbourKeeper(self.netns)

        self.network = netlink.NetworkView(interfaces=[cfg.transport_interface, cfg.gateway_interface],
                                           netns=self.netns)
        self.source = self._make_source()
        self.sync = SyncLoop(collector(self.source, self.network), self._publish)
        self.source.on_change = self.kube_proxy_metrics.notifier(self.sync.notify, time.time)
        self.source.start()
        self._first_sync()

        forwarder, store_worker = _worker_class()
        self.steering = xsk.SteeringProgram(
            flow_entries=next_pow2(cfg.tables.flow_entries),
            adopt_from=cfg.transport_interface if cfg.flow_offload else None)
        if self.steering.pin_error:
            log.warning("event=bpf_pins_unavailable error=%r: the next agent can take over the programs "
                        "and the flow table only with CAP_SYS_ADMIN (a handover then falls back to the "
                        "kernel path)", self.steering.pin_error)
        if self.steering.stale_pins_removed:
            log.info("event=stale_pins_removed pins=%s (interfaces that are gone)",
                     ",".join(sorted(self.steering.stale_pins_removed)))
        socket_devices = {}
        for ifname, role in served:
            pair = None
            if wanted[ifname] == "upcall":
                pair = netlink.ensure_upcall_pair(ifname, abi.lib.XSKP_UPCALL_MTU, queues=self.worker_count)
                socket_devices[ifname] = pair[1]
                self.upcall_interfaces.append(ifname)
            self.steering.prepare(ifname, role, upcall_pair=pair,   # the lock: one agent at a time
                                  queues=self.worker_count)
        self._set_up_fast_path()
        self.flow_tables = [with_partition(tables, queue, self.worker_count)
                            for queue, tables in enumerate(self.flow_tables)]
        self.neighbours.adopt(xsk.ifindex_of(ifname) for ifname, _ in served)
        for queue in range(self.worker_count):
            worker = store_worker(self.store.reader(f"queue-{queue}"), self.flow_tables[queue],
                                  steering=self.steering, transport=cfg.transport_interface,
                                  gateway=cfg.gateway_interface, queue=queue,
                                  socket_devices=socket_devices)
            self.workers.append(worker)
            worker.compile()
        # next hops the kernel resolved while the workers compiled: in the tables before steering
        self.network.mark_dirty()
        self.sync.sync_once()
        for worker in self.workers:
            worker.start()                            # sockets bound: nothing arrives before attach
        with self._publish_lock:
            self._apply_full_steering(self.translator.steering_contents())
            self.steering_ready = True
        # upcall pairs ready before the fast path that upcalls into them; XDP last
        modes = {ifname: self.steering.attach(ifname, mode="upcall")
                 for ifname, _ in served if wanted[ifname] == "upcall"}
        if cfg.flow_offload:
            self._attach_fast_path([ifname for ifname, _ in served])
        modes.update({ifname: self.steering.attach(ifname, mode=wanted[ifname])
                      for ifname, _ in served if wanted[ifname] != "upcall"})
        if not cfg.flow_offload:
            self._remove_stale_fast_path([ifname for ifname, _ in served])
        ids = self.steering.object_ids()
        log.info("event=started node=%s xdp=%s sockets=%s queues=%d generation=%d flow_offload=%s "
                 "bpf_progs=%s bpf_maps=%s",
                 cfg.node_name, ",".join(f"{k}:{v}" for k, v in modes.items()),
                 ",".join(s.mode_name for w in self.workers for s in w.sockets if s is not None),
                 self.worker_count, self.store.current.number, cfg.flow_offload,
                 ",".join(map(str, ids["prog"])), ",".join(map(str, ids["map"])))
        # changes between the last read and the watcher's start gave no notification: re-read
        self.network.start(self.sync.notify)
        self.network.mark_dirty()
        self.sync.start(initial_sync=True)
        self.write_services()                          # before the stats thread, its only other writer
        self._stats_thread = threading.Thread(target=self._stats_loop, name="stats", daemon=True)
        self._stats_thread.start()
        self.write_stats()
        self.health = health.start_health_servers(self)   # answers only once the dataplane forwards

    def _set_up_fast_path(self):
        """Share the fast path's flow table with every worker's flow tables (flowOffload), or
        forget offloads a predecessor's table held (its table is gone, or offload is off)."""
        from dataplane import xsk
        cfg = self.config
        adopted = cfg.flow_offload and self.steering.adopted_flows
        if not adopted:
            for tables in self.flow_tables:     # written only where set: a write to every entry
                flags = tables.ct["flags"]      # dirtied the whole file (80 MB), which stop's
                offloaded = np.flatnonzero(flags & abi.lib.XSKP_CT_OFFLOADED)   # flush then wrote out
                flags[offloaded] &= np.uint8(0xff ^ abi.lib.XSKP_CT_OFFLOADED)
        if not cfg.flow_offload:
            return
        flows, fast_config = self.steering.fast_tables()
        fast_config[0]["bypass"] = 1
        ifindex = (xsk.ifindex_of(cfg.transport_interface), xsk.ifindex_of(cfg.gateway_interface))
        self.flow_tables = [with_fast_path(tables, flows, fast_config, ifindex, owner=queue)
                            for queue, tables in enumerate(self.flow_tables)]
        self.fast_config = fast_config
        self.steering.start_heartbeat(fast_config)
        log.info("event=fast_path flow_entries=%d adopted=%s offloaded=%d", flows.shape[0],
                 adopted, int(np.count_nonzero(flows["flags"] & abi.lib.XSKP_FLOW_IN_USE)))

    def _attach_fast_path(self, ifnames):
        created = set(_read_json(os.path.join(self.config.state_dir, FAST_PATH_QDISCS), []))
        for ifname in ifnames:
            if self.steering.attach_fast_path(ifname):
                created.add(ifname)
        self._fast_path_qdiscs = created
        _write_json(os.path.join(self.config.state_dir, FAST_PATH_QDISCS), sorted(created))

    def _remove_stale_fast_path(self, ifnames):
        """Without the fast path, a predecessor's (left by a handover) goes once our XDP program
        has replaced its steering, with the clsact qdisc if an agent created it."""
        path = os.path.join(self.config.state_dir, FAST_PATH_QDISCS)
        created = set(_read_json(path, []))
        for ifname in ifnames:
            try:
                if self.steering.remove_fast_path(ifname, destroy_qdisc=ifname in created):
                    log.info("event=stale_fast_path_removed iface=%s", ifname)
                created.discard(ifname)
            except OSError as e:
                log.error("event=stale_fast_path_failed iface=%s error=%r", ifname, str(e))
        _write_json(path, sorted(created))

    def _detach_fast_path(self):
        created = getattr(self, "_fast_path_qdiscs", set())
        for ifname in list(self.steering.tc_ifaces):
            try:
                self.steering.detach_fast_path(ifname, destroy_qdisc=ifname in created)
                created.discard(ifname)
            except OSError as e:
                log.error("event=detach_failed iface=%s hook=tc error=%r", ifname, str(e))
        _write_json(os.path.join(self.config.state_dir, FAST_PATH_QDISCS), sorted(created))

    def _xdp_mode(self, ifname):
        """xdpMode, with auto meaning upcall, when the fast path carries bulk traffic, on a virtual
        interface (generic XDP there copies every multi-page skb, a Pod's GSO super-frames, before
        tc sees it, and native XDP on a veth turns its peer's TSO off) and on an interface with
        several receive queues (XDP hands a frame to the socket of the queue it arrived on, so a
        reply arriving on another queue than its request would miss its flow; tc spreads flows
        over the workers by a key both directions share). A single-queue NIC keeps native XDP: it
        runs before any skb exists and costs the fast path nothing."""
        mode = self.config.xdp_mode
        if mode == "auto" and self.config.flow_offload and (
                netlink.link_kind(ifname) is not None or netlink.rx_queue_count(ifname) > 1):
            return "upcall"
        return mode

    def _worker_count(self, modes):
        """How many workers (queues) serve the interfaces: `queues`, or for auto one per receive
        queue of the served interfaces, at most one per CPU the agent may run on. States at start what a count
        leaves undone: in XDP mode, frames on queues without a worker go to the kernel
        (STEER_PASS_UNSERVED_QUEUE), and with several workers a reply may reach another worker
        than its request."""
        channels = {ifname: netlink.rx_queue_count(ifname) for ifname in modes}
        wanted = self.config.queues
        cpus = len(os.sched_getaffinity(0))                 # the CPUs this agent may run on
        count = min(max(channels.values()), cpus) if wanted == "auto" else wanted
        for ifname, mode in modes.items():
            if mode == "upcall":
                continue
            if channels[ifname] > count:
                log.warning("event=queues_unserved iface=%s channels=%d workers=%d xdp_mode=%s: frames on "
                            "queues %d-%d go to the kernel (STEER_PASS_UNSERVED_QUEUE); xdpMode auto or "
                            "upcall serves every queue", ifname, channels[ifname], count, mode, count,
                            channels[ifname] - 1)
            if count > 1:
                log.warning("event=queues_split_flows iface=%s workers=%d xdp_mode=%s: each queue's worker "
                            "keeps its own flows, and a reply arriving on another queue than its request "
                            "misses them (XSKP_DROP_NOT_OURS); xdpMode auto or upcall keeps one flow "
                            "state", ifname, count, mode)
        log.info("event=queues workers=%d channels=%s modes=%s", count,
                 ",".join(f"{k}:{v}" for k, v in channels.items()),
                 ",".join(f"{k}:{v}" for k, v in modes.items()))
        return count

    def _make_source(self):
        cfg = self.config
        if cfg.source == "kube":
            from control.kube import KubeSource, make_client_factory
            return KubeSource(make_client_factory(cfg.kubeconfig))
        from control.manifests import ManifestSource
        return ManifestSource(cfg.manifest_path)

    def _first_sync(self):
        """Translate and publish the first generation (before any worker or steering exists)."""
        deadline = time.monotonic() + FIRST_SYNC_TIMEOUT
        while not self.sync.sync_once():
            if self.store.current is not None:
                return
            if time.monotonic() > deadline:
                error = getattr(self.source, "error", None)
                raise TimeoutError(f"no complete cluster state from source {self.config.source} "
                                   f"within {FIRST_SYNC_TIMEOUT:.0f}s" + (f": {error}" if error else ""))
            time.sleep(0.1)

    def stop(self, handover=False):
        """Detach first (the kernel path takes over at once), then stop everything else. With
        handover=True (and handoverSeconds > 0) hold instead and leave the program attached, and
        the managed neighbour entries in place, for the next agent."""
        handover = handover and self.config.handover_seconds > 0 and self.steering_ready
        lock_files = [lock.path for lock in self.steering._locks.values()] if self.steering else []
        phases, started = [], time.monotonic()

        def phase(name):                                # how long each step took, for the log
            phases.append(f"{name}:{time.monotonic() - started:.2f}")
        if self.health is not None:
            self.health.close()                         # load balancers see this node go first
        phase("health")
        self._stop.set()
        for part in (self.sync, self.network, self.source):
            if part is not None:
                try:
                    part.stop()
                except Exception:
                    log.exception("event=stop_failed part=%s", type(part).__name__)
        phase("sync_network_source")
        if handover:
            try:
                self.steering.hold(self.config.handover_seconds)
            except OSError as e:
                log.error("event=hold_failed error=%r fallback=detach", str(e))
                handover = False
        if self.steering is not None and self.fast_config is not None:
            # a stopping agent is not alive: the bypass goes back to the kernel at once, and
            # offloaded flows keep running only through a handover's hold
            self.steering.stop_heartbeat()
            self.fast_config[0]["alive_until_ns"] = 0
        if self.steering is not None and not handover:
            self._detach_fast_path()
            for ifname in list(self.steering.ifaces):
                try:
                    self.steering.detach(ifname)
                except OSError as e:
                    log.error("event=detach_failed iface=%s error=%r", ifname, str(e))
        phase("detach")
        if self.neighbours is not None:
            self.neighbours.stop(keep=handover)
        phase("neighbours")
        for worker in self.workers:
            worker.close()
        phase("workers")
        if self.steering is not None:
            self.steering.release() if handover else self.steering.close()
        if not handover:
            for ifname in self.upcall_interfaces:
                try:
                    netlink.remove_upcall_pair(ifname)
                except OSError as e:
                    log.error("event=upcall_pair_remove_failed iface=%s error=%r", ifname, str(e))
        if not handover:
            for path in lock_files:
                _remove_lock_file(path)
        phase("steering")
        for tables in self.flow_tables:
            store.flush_flow_tables(tables)
        phase("flush")
        log.info("event=stopped node=%s handover_seconds=%s seconds_at=%s", self.config.node_name,
                 self.config.handover_seconds if handover else 0, ",".join(phases))

    # -- publishing --------------------------------------------------------------------------
    def _publish(self, snapshot):
        """SyncLoop's publish: translate, steer new backends' replies, swap the generation in,
        then the rest of the steering changes (frontends only once every worker uses the tables
        that know them; removals once no worker uses tables that need them)."""
        with self._publish_lock:
            started = time.perf_counter()
            self.config.tables.refuse_excess(snapshot.cluster)   # before translate: refused, nothing changes
            translation = None
            try:
                translation = self.translator.translate(snapshot.cluster, snapshot.network,
                                                        self.store.oldest_in_use())
                if self.steering_ready:
                    apply_backend_steering(self.steering, translation.steering)
                generation = self.store.publish(translation.tables, translation.generation,
                                                {"stats": translation.stats})
                for worker in self.workers:
                    worker.ask_to_return()                  # its next slice picks the generation
                self._to_describe = (generation.number, translation.tables, translation.service_names)
                self.last_translation_stats = dict(translation.stats,
                                                   seconds=round(time.perf_counter() - started, 6))
                if self.steering_ready:
                    self._wait_for_pickup(generation.number)
                    apply_steering_changes(self.steering, translation.steering)
            except Exception:
                # The sync loop retries after its back-off, with a Translator that translates
                # everything anew: nothing this attempt left half done can make that one fail.
                self.translator = self.translator.successor(translation.steering if translation else None)
                self.translator_resets += 1
                raise
            ids = self.translator.service_id_map()
            if ids != self._saved_service_ids:           # ids rarely change: no rewrite per publish
                store.save_id_map(self.config.state_dir, SERVICE_IDS, ids)
                self._saved_service_ids = ids
            self._keep_next_hops(snapshot, translation.tables)
            previous = self.sync.published if self.sync is not None else None
            self.kube_proxy_metrics.published(previous.cluster if previous is not None else None, snapshot.cluster,
                                              time.perf_counter() - started, time.time())
            if self.health is not None:
                health.serve_published(self.health, self.translator.options, snapshot)
            log.info("event=published generation=%d services=%d backends=%d rebuilt=%d seconds=%.4f",
                     generation.number, translation.stats["services"], translation.stats["backends"],
                     translation.stats["rebuilt_services"], self.last_translation_stats["seconds"])

    def _keep_next_hops(self, snapshot, tables):
        """Managed neighbour entries for every next hop the pipeline may transmit to: the other
        Nodes, local backends, and the gateways of routes out of the served interfaces."""
        if self.neighbours is None or self.network is None:
            return
        cfg = self.config
        served = (cfg.transport_interface, cfg.gateway_interface)
        net = self.network.state
        indexes = {l.index for l in net.links if l.name in served}
        destinations = {r.gateway for r in net.routes if r.gateway and r.ifindex in indexes}
        for node in snapshot.cluster.nodes.values():
            if node.name != cfg.node_name:
                destinations.update(node.internal_ips())
        wanted = abi.lib.XSKP_BE_ALIVE | abi.lib.XSKP_BE_LOCAL
        local = tables.backends["addr"][(tables.backends["flags"] & wanted) == wanted]
        destinations.update(_ip(int(a)) for a in np.unique(local))
        self._wanted_hops = netlink.next_hops(net, destinations, served)
        self._ensure_neighbours(net)

    def _ensure_neighbours(self, net):
        """Managed entries for the wanted and the missed next hops, nothing else of ours."""
        self.neighbours.ensure(self._wanted_hops | set(self._missed_hops), net.neighbours)

    def _resolve_missed_next_hops(self):
        """Next hops the pipeline found no neighbour for (an on-link client a DSR or NodePort
        reply goes to): have the kernel resolve them; the FIB then picks them up."""
        if self.neighbours is None or self.network is None:
            return
        cfg = self.config
        slot = abi.lib.XSKP_SLOT_NEIGH_MISS
        names = {abi.lib.XSKP_IFACE_TRANSPORT: cfg.transport_interface,
                 abi.lib.XSKP_IFACE_GATEWAY: cfg.gateway_interface}
        net = self.network.state
        added = False
        for worker in self.workers:
            value = int(worker.counters[slot])
            if not value:
                continue
            worker.counters[slot] = 0
            link = net.link(names.get(value >> 32, ""))
            if link is None:
                continue
            hop = (link.index, _ip(value & 0xffffffff))
            self._missed_hops[hop] = None
            self._missed_hops.move_to_end(hop)
            added = True
        while len(self._missed_hops) > MAX_MISSED_HOPS:
            self._missed_hops.popitem(last=False)
        if added:
            with self._publish_lock:
                self._ensure_neighbours(net)

    def _wait_for_pickup(self, number):
        deadline = time.monotonic() + PICKUP_TIMEOUT
        while time.monotonic() < deadline:
            if all(w.reader.seen >= number for w in self.workers):
                return
            time.sleep(0.001)

    def _apply_full_steering(self, contents):
        """Load the complete steering contents into a freshly loaded program."""
        for key, roles in contents.frontends.items():
            self.steering.add_frontend(*key, roles)
        for key, roles in contents.backends.items():
            self.steering.add_backend(*key, roles)
        for cidr, roles in contents.prefixes.items():
            self.steering.add_prefix(cidr, roles)
        for addr, (lo, hi, roles) in contents.node_addrs.items():
            self.steering.set_node_address(addr, lo, hi, roles)

    # -- what the agent shows ----------------------------------------------------------------
    def snapshot(self):
        """Counters and state of the whole agent as one JSON-able dict (stats.json, metrics)."""
        generation = self.store.current
        staleness = getattr(self.source, "staleness", lambda: 0.0)()
        out = {
            "node": self.config.node_name,
            "generation": generation.number if generation else 0,
            "published_at": generation.published_at if generation else None,
            "uptime_seconds": round(time.time() - self.started_at, 3) if self.started_at else 0,
            "source": {"kind": self.config.source, "staleness_seconds": staleness,
                       "error": getattr(self.source, "error", None)},
            "sync": dict(self.sync.status(), translator_resets=self.translator_resets) if self.sync else {},
            "translate": self.last_translation_stats,
            "steering": self.steering.counters() if self.steering else {},
            "fast_path": self._fast_path_snapshot(),
            "queues": {},
        }
        flows_in_use = self._in_use_counts()
        for worker, in_use in zip(self.workers, flows_in_use):
            out["queues"][str(worker.queue)] = {
                "pipeline": counters_by_name(worker.counters),
                "worker": worker.worker_counters(),
                "sockets": worker.socket_statistics(),
                "flows": in_use,
                "error": repr(worker.error) if worker.error else None,
            }
        return out

    def _in_use_counts(self, now=None):
        """[per worker: {"ct": n, "affinity": n}] and the fast path's entries in use, counted at
        most once per COUNT_INTERVAL (the gauges lag by up to that much)."""
        now = time.monotonic() if now is None else now
        cached = self._counted
        if cached is None or now - cached[0] >= COUNT_INTERVAL or len(cached[1]) != len(self.flow_tables):
            flows = self.flow_tables[0].flows if self.flow_tables else None
            entries = int(np.count_nonzero(flows["flags"] & abi.lib.XSKP_FLOW_IN_USE)) if flows is not None else 0
            cached = self._counted = (now, [store.flows_in_use(t) for t in self.flow_tables], entries)
        return cached[1]

    def fast_path_live(self):
        """None when the kernel fast path is off, else whether its heartbeat is fresh (the BPF
        programs execute nothing without it). Cheap: the health probe asks every second."""
        if not self.config.flow_offload or not self.flow_tables or self.flow_tables[0].flows.shape[0] == 0:
            return None
        return int(self.fast_config[0]["alive_until_ns"]) > time.monotonic_ns()

    def _fast_path_snapshot(self):
        """Whether the kernel fast path is on, how many flow directions it holds (counted at most
        once per COUNT_INTERVAL), and whether its heartbeat is fresh."""
        live = self.fast_path_live()
        if live is None:
            return {"enabled": False}
        self._in_use_counts()
        return {"enabled": True, "capacity": int(self.flow_tables[0].flows.shape[0]),
                "entries": self._counted[2], "live": live}

    def write_stats(self):
        _write_json(os.path.join(self.config.state_dir, "stats.json"), self.snapshot())

    def write_services(self):
        """services.json for the last published generation, if not written yet. Called by the
        stats thread, outside the publish lock: describing 250,000 backends takes ~1.5 s, which
        would otherwise delay the next publish."""
        latest = self._to_describe
        if latest is None or latest[0] == self._described_generation:
            return
        number, tables, service_names = latest
        _write_json(os.path.join(self.config.state_dir, "services.json"),
                    describe_tables(tables, service_names))
        self._described_generation = number

    def _stats_loop(self):
        """Housekeeping: neighbour misses and services.json (after a new generation) every
        MISS_POLL_INTERVAL, stats every STATS_INTERVAL."""
        next_stats = time.monotonic() + STATS_INTERVAL
        while not self._stop.wait(MISS_POLL_INTERVAL):
            try:
                self._resolve_missed_next_hops()
                self.write_services()
                if time.monotonic() >= next_stats:
                    next_stats += STATS_INTERVAL
                    self.write_stats()
            except Exception:
                log.exception("event=stats_failed")

    def worker_errors(self):
        return [w.error for w in self.workers if w.error is not None]


def _read_json(path, default):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


_write_json = store.write_private_json


def _remove_lock_file(path):
    """Remove an interface's lock file after a clean stop, unless another agent holds it now."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino == os.stat(path).st_ino:
            os.unlink(path)
    except OSError:
        pass                          # held by the next agent, or already replaced: leave it
    finally:
        os.close(fd)


# -- conntrack dump (xskproxy conntrack) ------------------------------------------------------
def _ip(value):
    value = int(value)
    return f"{value >> 24 & 255}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}"


_CT_STATES = {v: k[len("XSKP_CT_"):] for k, v in abi.enum_members("XSKP_CT_").items()
              if k in ("XSKP_CT_NEW", "XSKP_CT_SYN_SENT", "XSKP_CT_SYN_RECV", "XSKP_CT_ESTABLISHED",
                       "XSKP_CT_FIN_WAIT", "XSKP_CT_CLOSING", "XSKP_CT_SCTP_COOKIE_WAIT",
                       "XSKP_CT_SCTP_COOKIE_ECHOED", "XSKP_CT_SCTP_SHUTDOWN", "XSKP_CT_SCTP_CLOSED")}
_PROTOCOLS = {6: "tcp", 17: "udp", 1: "icmp", 132: "sctp"}


def read_conntrack(state_dir, service=None, address=None, now_ns=None):
    """The tracked flows (original direction) in the state directory's conntrack files, as dicts."""
    names = {}
    try:
        with open(os.path.join(state_dir, "services.json")) as f:
            names = {int(s["service_id"]): name for name, s in json.load(f).items()}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    now_ns = now_ns if now_ns is not None else time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    flows = []
    queue = 0
    while os.path.exists(path := store.flow_table_path(state_dir, "ct", queue)):
        with open(path, "rb") as f:
            header = np.frombuffer(f.read(store.STATE_HEADER_DTYPE.itemsize), store.STATE_HEADER_DTYPE)[0]
        ct = np.memmap(path, store.CT_ENTRY_DTYPE, "r", offset=store.ENTRIES_OFFSET,
                       shape=(int(header["capacity"]),))
        flags = ct["flags"]
        live = ((flags & abi.lib.XSKP_CT_IN_USE) != 0) & ((flags & abi.lib.XSKP_CT_REPLY) == 0) \
            & ((flags & abi.lib.XSKP_CT_TOMBSTONE) == 0)
        for e in ct[live]:
            flow = {"queue": queue, "proto": _PROTOCOLS.get(int(e["proto"]), int(e["proto"])),
                    "src": f"{_ip(e['src_addr'])}:{int(e['src_port'])}",
                    "dst": f"{_ip(e['dst_addr'])}:{int(e['dst_port'])}",
                    "translated_src": f"{_ip(e['new_src_addr'])}:{int(e['new_src_port'])}",
                    "translated_dst": f"{_ip(e['new_dst_addr'])}:{int(e['new_dst_port'])}",
                    "state": _CT_STATES.get(int(e["state"]), int(e["state"])),
                    "service": names.get(int(e["service_id"]), int(e["service_id"])),
                    "snat": bool(e["flags"] & abi.lib.XSKP_CT_SNAT),
                    "dsr": bool(e["flags"] & abi.lib.XSKP_CT_DSR_ENCAP),
                    "tier": "kernel" if e["flags"] & abi.lib.XSKP_CT_OFFLOADED else "userspace",
                    "idle_seconds": round(max(0, now_ns - int(e["last_seen_ns"])) / 1e9, 1)}
            if service and not str(flow["service"]).startswith(service):
                continue
            if address and address not in (flow["src"].split(":")[0], flow["dst"].split(":")[0],
                                           flow["translated_src"].split(":")[0],
                                           flow["translated_dst"].split(":")[0]):
                continue
            flows.append(flow)
        queue += 1
    return flows


def format_flow(flow):
    extra = " snat" if flow["snat"] else ""
    extra += " dsr" if flow["dsr"] else ""
    extra += f" tier={flow['tier']}" if "tier" in flow else ""
    return (f"{flow['proto']} {flow['state']} {flow['src']} -> {flow['dst']} => "
            f"{flow['translated_src']} -> {flow['translated_dst']} service={flow['service']} "
            f"idle={flow['idle_seconds']}s q={flow['queue']}{extra}")


# -- metrics ----------------------------------------------------------------------------------
def steering_metrics(snapshot):
    """The XDP program's decisions (STEER_*) and the tc fast path's outcomes (FAST_*) of a
    snapshot, as two Prometheus counter families labelled without their prefixes."""
    from prometheus_client.core import CounterMetricFamily
    steer = CounterMetricFamily("xskproxy_steering_packets", "XDP steering decisions", labels=["decision"])
    fast = CounterMetricFamily("xskproxy_fast_path_packets",
                               "What the tc fast path did with the packets it saw", labels=["outcome"])
    for name, value in snapshot.get("steering", {}).items():
        if name.startswith("FAST_"):
            fast.add_metric([name[len("FAST_"):].lower()], value)
        elif name.startswith("UPCALL_"):
            steer.add_metric([name.lower()], value)         # upcall_drop_no_socket, ...
        else:
            steer.add_metric([name[len("STEER_"):].lower()], value)
    return [steer, fast]


def start_metrics_server(agent):
    """Prometheus metrics from agent.snapshot() on the configured (loopback by default) address."""
    from prometheus_client import start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, REGISTRY

    class AgentCollector:
        def collect(self):
            snap = agent.snapshot()
            yield GaugeMetricFamily("xskproxy_generation", "Published table generation", value=snap["generation"])
            yield GaugeMetricFamily("xskproxy_source_staleness_seconds",
                                    "Seconds since the cluster source was last known good",
                                    value=min(snap["source"]["staleness_seconds"], 1e12))
            yield from steering_metrics(snap)
            pipeline = CounterMetricFamily("xskproxy_pipeline_packets",
                                           "Pipeline outcomes and drop reasons", labels=["queue", "counter"])
            worker = CounterMetricFamily("xskproxy_worker_events", "Worker ring events",
                                         labels=["queue", "interface", "event"])
            flows = GaugeMetricFamily("xskproxy_flows", "Per-flow table entries in use", labels=["queue", "table"])
            for queue, q in snap["queues"].items():
                for name, value in q["pipeline"].items():
                    pipeline.add_metric([queue, name[len("XSKP_"):].lower()], value)
                for iface, events in q["worker"].items():
                    for name, value in events.items():
                        worker.add_metric([queue, iface, name], value)
                for table, value in q["flows"].items():
                    flows.add_metric([queue, table], value)
            yield pipeline
            yield worker
            yield flows
            yield from publish_metrics(snap)
            yield from agent.kube_proxy_metrics.families()
            if agent.health is not None:
                yield from health_metrics(agent.health)

    host, _, port = agent.config.metrics_address.rpartition(":")
    start_http_server(int(port), addr=host.strip("[]"))
    REGISTRY.register(AgentCollector())


def publish_metrics(snap):
    """The publishing metrics of an agent.snapshot(): failed attempts, whether the last one
    failed (labelled with the error's type), Translator resets, the last publish's time."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    sync = snap["sync"]
    yield CounterMetricFamily("xskproxy_publish_failures", "Publish attempts that failed (each retried "
                              "with back-off)", value=sync.get("failures", 0))
    failing = GaugeMetricFamily("xskproxy_publish_failing", "1 while the last publish attempt failed "
                                "(the tables in use are older than the cluster state)", labels=["error"])
    consecutive = sync.get("consecutive_failures", 0)
    failing.add_metric([(sync.get("last_error_type") or "") if consecutive else ""], 1 if consecutive else 0)
    yield failing
    yield GaugeMetricFamily("xskproxy_publish_consecutive_failures", "Publish attempts failed since the "
                            "last success", value=consecutive)
    yield CounterMetricFamily("xskproxy_translator_resets", "Translators replaced by a fresh one after "
                              "a failed publish", value=sync.get("translator_resets", 0))
    yield GaugeMetricFamily("xskproxy_last_publish_timestamp_seconds", "When the last generation was "
                            "published (Unix time; 0: never)", value=sync.get("last_publish_time") or 0)


def health_metrics(servers):
    """kube-proxy's counts of its /healthz and /livez answers by code, and ours of the
    healthCheckNodePort answers."""
    from prometheus_client.core import CounterMetricFamily
    families = {"healthz": CounterMetricFamily("kubeproxy_proxy_healthz", "Cumulative proxy healthz HTTP status",
                                               labels=["code"]),
                "livez": CounterMetricFamily("kubeproxy_proxy_livez", "Cumulative proxy livez HTTP status",
                                             labels=["code"]),
                "service": CounterMetricFamily("xskproxy_health_check_node_port_answers", "Answers of the "
                                               "healthCheckNodePort servers by HTTP status", labels=["code"])}
    for (endpoint, status), count in list(servers.answers.items()):
        if endpoint in families:
            families[endpoint].add_metric([str(status)], count)
    return list(families.values())


# -- xskproxy run -----------------------------------------------------------------------------
def run(config):
    """Run until SIGTERM (a handover, see the module docstring) or SIGINT (detach); exit code 0
    after a clean stop, 1 when start-up fails."""
    logging.basicConfig(level=getattr(logging, config.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    stop = threading.Event()
    received = []

    def on_signal(signum, _frame):
        received.append(signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    agent = Agent(config)
    if config.metrics_address:
        try:
            start_metrics_server(agent)    # before anything is attached: a busy port changes nothing
        except OSError as exc:
            print(f"xskproxy: error: metricsAddress {config.metrics_address}: cannot listen: "
                  f"{exc.strerror or exc}", file=sys.stderr, flush=True)
            return 1
    try:
        agent.start()
    except (OSError, ValueError, TimeoutError, RuntimeError) as exc:
        message = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        print(f"xskproxy: error: {message}", file=sys.stderr, flush=True)
        agent.stop()
        return 1
    while not stop.wait(0.2):
        errors = agent.worker_errors()
        if errors:
            log.error("event=worker_failed error=%r", errors[0])
            agent.stop()
            return 1
    log.info("event=stopping signal=%s", signal.Signals(received[0]).name)
    agent.stop(handover=received[0] == signal.SIGTERM)
    return 0
