"""The image's entrypoint: readies numba's cache, then runs `xskproxy` (control.cli) in this
process. Never touches the network, the state directory or anything the agent owns.

numba only uses a cache directory it can write, and the root filesystem is read-only, so the
cache warmed at build time (/opt/xskproxy/numba-cache) is copied into the writable emptyDir
(NUMBA_CACHE_DIR; app/dataplane/__pycache__ links to its dataplane/), unless the emptyDir already
holds it (a restarted container of the same Pod). Its entries are tuned for the build machine's CPU and for any x86-64 CPU:
XSKPROXY_NUMBA_CPU=auto (default) takes the first on the same CPU, else the generic ones;
host or generic force one (host on another CPU compiles at start: 20 s or more). Setting
XSKPROXY_BAKED_NUMBA_CACHE=off leaves the cache cold (to measure a first start).

The agent's state files are meant for root alone: umask 077 (stateDir 0700, its files 0600).
"""
import json
import os
import shutil
import sys

BAKED = "/opt/xskproxy/numba-cache"
RUNTIME = "/var/cache/xskproxy-numba"      # NUMBA_CACHE_DIR; its dataplane/ is app/dataplane/__pycache__
STAMP = ".stamp"


def _log(**fields):
    print("entrypoint " + " ".join(f"{k}={v}" for k, v in fields.items()), file=sys.stderr, flush=True)


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def choose_cpu(mode, baked_cpu):
    """'host' or 'generic': which of the baked entries numba is to use on this CPU."""
    if mode in ("host", "generic"):
        return mode
    if baked_cpu is None:
        return "generic"
    import llvmlite.binding as ll               # the same two values numba keys its entries on
    here = {"name": ll.get_host_cpu_name(), "features": ll.get_host_cpu_features().flatten()}
    return "host" if here == baked_cpu else "generic"


def fill_cache(baked=BAKED, runtime=RUNTIME):
    """Copy the baked cache into `runtime` unless it holds the same one; returns the files copied,
    or None when `runtime` cannot be written (no emptyDir: numba then compiles at every start)."""
    try:
        os.makedirs(runtime, exist_ok=True)
        if not os.access(runtime, os.W_OK):
            return None
    except OSError:
        return None
    stamp = _read(os.path.join(baked, STAMP))
    if stamp is not None and _read(os.path.join(runtime, STAMP)) == stamp:
        return 0
    copied = 0
    for root, _dirs, files in os.walk(baked):
        into = os.path.join(runtime, os.path.relpath(root, baked))
        os.makedirs(into, exist_ok=True)
        for name in files:
            if root != baked or name != STAMP:
                shutil.copy2(os.path.join(root, name), os.path.join(into, name))
                copied += 1
    if stamp is not None:
        shutil.copy2(os.path.join(baked, STAMP), os.path.join(runtime, STAMP))   # last: complete
    return copied


def main():
    os.umask(0o077)
    if "NUMBA_CPU_NAME" not in os.environ:
        baked_cpu = _read(os.path.join(BAKED, "cpu.json"))
        cpu = choose_cpu(os.environ.get("XSKPROXY_NUMBA_CPU", "auto"),
                         json.loads(baked_cpu) if baked_cpu else None)
        if cpu == "generic":
            os.environ["NUMBA_CPU_NAME"] = "generic"
    else:
        cpu = os.environ["NUMBA_CPU_NAME"]
    if os.environ.get("XSKPROXY_BAKED_NUMBA_CACHE", "on") == "off":
        try:
            os.makedirs(os.path.join(RUNTIME, "dataplane"), exist_ok=True)   # the same layout, empty
        except OSError:
            pass
        _log(event="numba_cache", cpu=cpu, baked="off")
    else:
        copied = fill_cache()
        if copied is None:
            _log(event="numba_cache", cpu=cpu, warning=f"{RUNTIME}_not_writable_compiling_at_start")
        else:
            _log(event="numba_cache", cpu=cpu, copied=copied)
    sys.argv[0] = "xskproxy"
    from control.cli import main as xskproxy
    return xskproxy(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
