"""The `xskproxy` inspection commands as a shell uses them."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_services_piped_into_head_ends_quietly(tmp_path):
    """`xskproxy services | head -1`: the reader closes the pipe early; no BrokenPipeError
    traceback, and the exit status of a command killed by SIGPIPE, as cat's would be."""
    services = {f"default/svc-{i}": {"flags": [], "frontends": [f"10.96.{i // 250}.{i % 250}:80/tcp"],
                                     "backends": {f"10.1.0.{j}:8080": 16 for j in range(20)},
                                     "local_backends": {}, "service_id": i}
                for i in range(5000)}                  # several pipe buffers of output
    (tmp_path / "services.json").write_text(json.dumps(services))
    proc = subprocess.Popen([sys.executable, "-m", "control.cli", "services", "--state-dir", str(tmp_path)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=30) == -13 and first.startswith(b"default/svc-")
    assert stderr == ""
