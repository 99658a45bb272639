"""A bpffs of the lab's own, where agents pin what a handover passes on (XSKPROXY_BPF_PIN_DIR).

This machine's /sys/fs/bpf is no bpffs, and a shared one would keep every lab's pinned programs
and flow tables alive after the lab is gone: a private instance is mounted for a test session
and unmounted after it, which frees whatever is still pinned there. Never touches /sys/fs/bpf.
"""
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager

from dataplane.xsk import PIN_DIR_ENV


@contextmanager
def private_bpffs(set_env=True):
    """Mount a fresh bpffs on a temporary directory; yields the pin directory inside it
    (<mount>/xskproxy, made by the agent) and, with set_env, points XSKPROXY_BPF_PIN_DIR there
    for this process and the agents it starts."""
    mount = tempfile.mkdtemp(prefix="xskproxy-bpffs-")
    subprocess.run(["mount", "-t", "bpf", "bpf", mount], check=True, capture_output=True)
    pin_dir = os.path.join(mount, "xskproxy")
    previous = os.environ.get(PIN_DIR_ENV)
    if set_env:
        os.environ[PIN_DIR_ENV] = pin_dir
    try:
        yield pin_dir
    finally:
        if set_env:
            if previous is None:
                os.environ.pop(PIN_DIR_ENV, None)
            else:
                os.environ[PIN_DIR_ENV] = previous
        subprocess.run(["umount", "-l", mount], capture_output=True)
        shutil.rmtree(mount, ignore_errors=True)


@contextmanager
def session_pins():
    """private_bpffs() for a test session as root; None (nothing pinned) when not root or when no
    bpffs can be mounted."""
    if os.geteuid() != 0:
        yield None
        return
    try:
        mounted = private_bpffs()
        pin_dir = mounted.__enter__()
    except (OSError, subprocess.CalledProcessError):
        yield None
        return
    try:
        yield pin_dir
    finally:
        mounted.__exit__(None, None, None)
