"""The njit flavour of every function on the packet path: cached, GIL-free, and compiled without
numba's reference counting (NRT), so that neither can happen per packet.

With NRT, each call between compiled functions increfs and decrefs every array it passes (the
ServiceTables and FlowTables tuples hold a dozen): atomic operations that cost a CT hit ~1.2 us
instead of ~0.2 us (measured with the unit fixtures, 64-frame batches). Without NRT a packet-path
function cannot allocate an array either: such code fails to compile instead of allocating.
The arrays passed in stay owned by the Python caller, which keeps them alive.
"""
from numba import njit


def packet_njit(func=None, **options):
    """@packet_njit or @packet_njit(inline="always"): njit(cache=True, nogil=True, _nrt=False)."""
    jit = njit(cache=True, nogil=True, _nrt=False, **options)
    return jit(func) if func is not None else jit
