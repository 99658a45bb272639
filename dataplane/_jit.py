"""The njit flavour of every function on the packet path: cached, GIL-free, and compiled without
numba's reference counting (NRT), so that neither can happen per packet.

With NRT, each call between compiled functions increfs and decrefs every array it passes (the
ServiceTables and FlowTables tuples hold a dozen): atomic operations that cost a CT hit ~1.2 us
instead of ~0.2 us (measured with the unit fixtures, 64-frame batches). Without NRT a packet-path
function cannot allocate an array either: such code fails to compile instead of allocating.
The arrays passed in stay owned by the Python caller, which keeps them alive.

Caching: numba keys a cached function on its own file's timestamp only, while the worker loop
inlines code from every module of this package and constants from native/xskproxy_abi.h; an
edit elsewhere would leave a stale compiled loop in use. So functions of this package are keyed
on a digest of all those sources together (_PackageCacheLocator).
"""
import glob
import hashlib
import os

from numba import njit
from numba.core import caching

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_HEADER = os.path.join(os.path.dirname(_PACKAGE_DIR), "native", "xskproxy_abi.h")


def _package_digest():
    digest = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(_PACKAGE_DIR, "*.py"))) + [_HEADER]:
        try:
            with open(path, "rb") as f:
                digest.update(path.encode() + b"\0" + f.read())
        except OSError:
            digest.update(path.encode() + b"\0missing")
    return digest.hexdigest()


_PACKAGE_STAMP = _package_digest()


class _PackageCacheLocator(caching.InTreeCacheLocator):
    """numba's in-tree cache for this package's functions, stamped with the package digest."""

    @classmethod
    def from_function(cls, py_func, py_file):
        if os.path.dirname(os.path.abspath(py_file)) != _PACKAGE_DIR:
            return None
        return super().from_function(py_func, py_file)

    def get_source_stamp(self):
        return _PACKAGE_STAMP


if _PackageCacheLocator not in caching.CacheImpl._locator_classes:
    caching.CacheImpl._locator_classes.insert(0, _PackageCacheLocator)


def packet_njit(func=None, **options):
    """@packet_njit or @packet_njit(inline="always"): njit(cache=True, nogil=True, _nrt=False)."""
    jit = njit(cache=True, nogil=True, _nrt=False, **options)
    return jit(func) if func is not None else jit
