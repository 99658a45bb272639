"""Image build step: compile into numba's cache every packet-path function an agent start
compiles, so that a Pod started from the image loads them instead (the cold compile took 18 s,
more than handoverSeconds). Never opens a socket, an interface or a BPF object: the tables are
made as the agent makes them, the worker loop runs one pass with no socket bound.

Run from the application directory with the image's final paths: the cache of dataplane/ is keyed
on a digest of its sources and their paths (dataplane/_jit.py), so it must be made where it is
used. Once with the build machine's CPU and once with NUMBA_CPU_NAME=generic (the image's
entrypoint uses the generic code on any other CPU). CACHE_DIR is NUMBA_CACHE_DIR, whose
dataplane/ app/dataplane/__pycache__ links to (dataplane/maglev.py's functions, not keyed by
_jit.py, land in NUMBA_CACHE_DIR's own layout beside it). Writes CACHE_DIR/.stamp (the digest)
and, for the host run, CACHE_DIR/cpu.json (the CPU the host-tuned entries are for).

Usage (in the application directory): python deploy/image/warm_numba_cache.py CACHE_DIR
"""
import json
import os
import sys
import tempfile
import time

import numpy as np

from control import netlink
from control.manifests import load_state
from control.translate import ProxyOptions, Translator
from dataplane import _jit, forwarder, store, xsk
from dataplane.tables import next_pow2, with_fast_path

# translate's own fixtures: every kind of Service, slice and Node it handles (n1 is "this" node)
MANIFESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                         "tests", "unit", "manifests", "translate")
NODE = "n1"

# A node as the agent sees it through netlink: transport and gateway up, a default route via a
# resolved gateway, a connected Pod network with one resolved Pod, another node's Pod CIDR.
_LINKS = (netlink.Link(1, "lo", "00:00:00:00:00:00", 65536, True),
          netlink.Link(2, "eth0", "02:00:00:00:00:02", 1500, True),
          netlink.Link(3, "gw0", "02:00:00:00:00:03", 1500, True))
_NET = netlink.NetState(
    links=_LINKS,
    addresses=(netlink.Address(2, "192.168.1.1", 24), netlink.Address(3, "10.1.0.1", 24)),
    routes=(netlink.Route("0.0.0.0/0", 2, "192.168.1.254"), netlink.Route("192.168.1.0/24", 2),
            netlink.Route("10.1.0.0/24", 3), netlink.Route("10.2.0.0/24", 2, "192.168.1.2")),
    neighbours=(netlink.Neighbour(2, "192.168.1.254", "02:00:00:00:01:fe", 0x02),
                netlink.Neighbour(2, "192.168.1.2", "02:00:00:00:01:02", 0x02),
                netlink.Neighbour(3, "10.1.0.50", "02:00:00:00:02:32", 0x02)))


def _options():
    from control.config import parse_config
    config = parse_config({"nodeName": NODE, "transportInterface": "eth0", "gatewayInterface": "gw0",
                           "source": "files", "manifestPath": MANIFESTS,
                           "antreaProxy": {"proxyAll": True, "proxyLoadBalancerIPs": True,
                                           "defaultLoadBalancerMode": "nat"}})
    return config, ProxyOptions.from_config(config)


def warm(cache_dir):
    started = time.perf_counter()
    config, options = _options()
    network = netlink.node_network(_NET, interfaces=("eth0", "gw0"))
    translator = Translator(options, fib_generation_base=1)
    state = load_state(MANIFESTS)
    translation = translator.translate(state, network)
    generation_store = store.GenerationStore()
    generation_store.publish(translation.tables, translation.generation, {})
    # a second generation, as a publish after the first sync makes it (incremental paths)
    translation = translator.translate(state, network, generation_store.oldest_in_use())
    generation_store.publish(translation.tables, translation.generation, {})

    with tempfile.TemporaryDirectory() as state_dir:
        flow_tables = store.open_flow_tables(state_dir, 0, config.tables.conntrack_entries,
                                             config.tables.affinity_entries)
        # the fast path's tables are BPF array maps mmapped by the agent: same dtypes here
        flows = np.zeros(next_pow2(config.tables.flow_entries), xsk.FLOW_V4_DTYPE)
        fast_config = np.zeros(1, xsk.FAST_CONFIG_DTYPE)
        flow_tables = with_fast_path(flow_tables, flows, fast_config, (2, 3), owner=0)
        reader = generation_store.reader("queue-0")
        state_tuple = (reader.pick().tables, flow_tables)
        forwarder.bind_native()
        frames = np.zeros(1 << 16, np.uint8)          # a UMEM's frames: one C-contiguous uint8 array

        class _Umem:                                   # what make_worker_buffers reads of a Umem
            frame_count, frame_size = 16, 4096

            def chunk_addresses(self):
                return np.arange(self.frame_count, dtype=np.uint64) * np.uint64(self.frame_size)

        buffers = tuple(forwarder.make_worker_buffers(_Umem(), [None, None]))
        frame_mask = np.uint64(~np.uint64(_Umem.frame_size - 1))
        counters = forwarder.make_pipeline_counters()
        # Worker.compile()'s call: one pass (the loop's later calls have the same types)
        forwarder.run_slice(frames, frame_mask, buffers, state_tuple, counters, 0)
        store.flush_flow_tables(flow_tables)
        reader.close()

    with open(os.path.join(cache_dir, ".stamp"), "w") as f:
        f.write(_jit._PACKAGE_STAMP + "\n")
    cpu = os.environ.get("NUMBA_CPU_NAME") or "host"
    if cpu == "host":
        import llvmlite.binding as ll
        with open(os.path.join(cache_dir, "cpu.json"), "w") as f:
            json.dump({"name": ll.get_host_cpu_name(), "features": ll.get_host_cpu_features().flatten()}, f)
    print(f"warm_numba_cache: cpu={cpu} seconds={time.perf_counter() - started:.1f} "
          f"files={len(os.listdir(cache_dir))}", flush=True)


if __name__ == "__main__":
    warm(sys.argv[1])
