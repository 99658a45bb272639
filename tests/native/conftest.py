"""As root, the native tests' steering programs and agents pin into a bpffs of the session's own
(lab/bpffs.py: this machine's /sys/fs/bpf is none, and a private one is freed at the end)."""
import pytest


@pytest.fixture(scope="session", autouse=True)
def bpf_pin_dir():
    """XSKPROXY_BPF_PIN_DIR inside a private bpffs for the session (None when not root)."""
    from lab.bpffs import session_pins
    with session_pins() as pin_dir:
        yield pin_dir
