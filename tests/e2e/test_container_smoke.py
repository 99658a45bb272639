"""The image (`make image`) in the e2e lab: each node's agent runs in a podman container as the
DaemonSet runs it (read-only root, emptyDirs /tmp and the numba cache as tmpfs, the stateDir and
bpffs from the host, the DaemonSet's capabilities, no privilege escalation, podman's default
seccomp profile with the CAP_BPF/CAP_PERFMON rules of containerd's RuntimeDefault, its memory
limit) and real traffic goes through it; a SIGTERM handover between two containers keeps the
streams and the fast path's flow table (the pins in bpffs, without CAP_SYS_ADMIN).

Opt-in: skipped unless the image exists (XSKPROXY_IMAGE, default xskproxy:dev). `make image-smoke`
runs it. XSKP_IMAGE_COLD=1 adds a start with the baked cache left out (slow: it compiles).
"""
import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import yaml

from lab import lifecycle, scenarios
from lab.netns import Lab

IMAGE = os.environ.get("XSKPROXY_IMAGE", "xskproxy:dev")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(REPO, "deploy")
HEALTHZ_PORT = 10257            # healthzBindAddress in the ConfigMap, the DaemonSet's probes
START_TIMES = []                # (node, seconds to /healthz 200, cache) for the summary


def _podman_available():
    if os.geteuid() != 0 or shutil.which("podman") is None:
        return False
    return subprocess.run(["podman", "image", "exists", IMAGE]).returncode == 0


pytestmark = pytest.mark.skipif(not _podman_available(),
                                reason=f"needs root, podman and the image {IMAGE} (make image)")


def _daemonset():
    with open(os.path.join(DEPLOY, "daemonset.yaml")) as f:
        return yaml.safe_load(f)


def _configmap_config():
    with open(os.path.join(DEPLOY, "configmap.yaml")) as f:
        return yaml.safe_load(yaml.safe_load(f)["data"]["xskproxy.yaml"])


def podman_global_options():
    """crun refuses hybrid cgroups (this lab machine's): runc then, with rlimits a root without
    CAP_SYS_RESOURCE may set (scripts/build_image.sh makes the same choice)."""
    if os.path.isdir("/sys/fs/cgroup/unified") and not os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        hard = os.sysconf("SC_OPEN_MAX")
        return ["--runtime", "runc"], ["--ulimit", f"nofile={hard}:{hard}", "--ulimit", "nproc=32768:32768"]
    return [], []


PODMAN_SECCOMP = "/usr/share/containers/seccomp.json"


def runtime_default_seccomp(path):
    """podman's default seccomp profile plus what containerd's and Docker's RuntimeDefault also
    allow: bpf() to a holder of CAP_BPF, perf_event_open() to one of CAP_PERFMON (podman's
    allows both to CAP_SYS_ADMIN only, which the DaemonSet does not grant). Written to `path`."""
    with open(PODMAN_SECCOMP) as f:
        profile = json.load(f)
    for rule in profile["syscalls"]:          # the denial for want of CAP_SYS_ADMIN would win
        if rule["action"] == "SCMP_ACT_ERRNO" and rule.get("excludes", {}).get("caps") == ["CAP_SYS_ADMIN"]:
            rule["names"] = [n for n in rule["names"] if n not in ("bpf", "perf_event_open")]
    profile["syscalls"] += [{"names": ["bpf"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_BPF"]}},
                            {"names": ["perf_event_open"], "action": "SCMP_ACT_ALLOW",
                             "includes": {"caps": ["CAP_PERFMON"]}}]
    with open(path + ".tmp", "w") as f:     # each node's container is set up with the same path: a
        json.dump(profile, f)                 # rewrite in place let a starting podman read it empty
    os.replace(path + ".tmp", path)
    return path


def daemonset_run_options(workdir):
    """podman run options for what the DaemonSet's container spec says (read from the manifest,
    so that a change there changes the smoke)."""
    container = _daemonset()["spec"]["template"]["spec"]["containers"][0]
    ctx = container["securityContext"]
    opts = ["--read-only", "--read-only-tmpfs=false"] if ctx.get("readOnlyRootFilesystem") else []
    if ctx.get("allowPrivilegeEscalation") is False:
        opts += ["--security-opt", "no-new-privileges"]
    if ctx.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        raise AssertionError("the smoke maps seccomp RuntimeDefault only")
    opts += ["--security-opt", f"seccomp={runtime_default_seccomp(os.path.join(workdir, 'seccomp.json'))}"]
    caps = ctx.get("capabilities", {})
    opts += [f"--cap-drop={c}" for c in caps.get("drop", [])]
    opts += [f"--cap-add={c}" for c in caps.get("add", [])]
    opts += ["--memory", container["resources"]["limits"]["memory"].replace("Gi", "g").replace("Mi", "m")]
    return opts


class ContainerServiceLab(scenarios.ServiceLab):
    """ServiceLab whose agents are containers of IMAGE in the nodes' network namespaces."""

    def __init__(self, lab, bpffs, **kwargs):
        self.bpffs = bpffs           # the host's bpffs for the containers' /sys/fs/bpf (a hostPath)
        self.containers = {}
        self.cold = set()            # nodes whose next start leaves the baked cache out
        self.started_at = {}
        super().__init__(lab, **kwargs)

    def agent_config(self, node):
        config = _configmap_config()
        config.update({"nodeName": node.name, "source": "files",
                       "manifestPath": "/etc/xskproxy-manifests",
                       "transportInterface": node.transport.name, "gatewayInterface": node.gateway.name,
                       "tables": {"conntrackEntries": 1 << 16, "affinityEntries": 1 << 12}})
        config["antreaProxy"].update({"skipServices": ["default/skipped"]})
        return config

    def state_dir(self, node):
        return os.path.join(self.workdir, f"state-{node.name}")

    def start_agent(self, node, wait=True):
        config_dir = os.path.join(self.workdir, f"config-{node.name}")
        os.makedirs(config_dir, exist_ok=True)
        with open(os.path.join(config_dir, "xskproxy.yaml"), "w") as f:
            yaml.safe_dump(self.agent_config(node), f)
        # hostPath DirectoryOrCreate: kubelet makes it 0755 when it is missing
        os.makedirs(self.state_dir(node), mode=0o755, exist_ok=True)
        try:
            os.unlink(self.stats_path(node))
        except FileNotFoundError:
            pass
        name = f"{self.lab.run_id}-{node.name}"
        subprocess.run(["podman", "rm", "-f", name], capture_output=True)
        global_opts, run_opts = podman_global_options()
        env = ["-e", "NUMBA_DEBUG_CACHE=1", "-e", "PYTHONUNBUFFERED=1"]
        if node.name in self.cold:
            env += ["-e", "XSKPROXY_BAKED_NUMBA_CACHE=off"]
        argv = (["podman", *global_opts, "run", "--name", name, "--network", f"ns:/run/netns/{node.ns}",
                 "--hostname", node.name, *run_opts, *daemonset_run_options(self.workdir),
                 "--tmpfs", "/tmp", "--tmpfs", "/var/cache/xskproxy-numba",
                 "-v", f"{config_dir}:/etc/xskproxy:ro", "-v", f"{self.manifest_dir}:/etc/xskproxy-manifests:ro",
                 "-v", f"{self.state_dir(node)}:/run/xskproxy", "-v", f"{self.bpffs}:/sys/fs/bpf",
                 "-e", f"NODE_NAME={node.name}", *env, IMAGE,
                 "run", "--config", "/etc/xskproxy/xskproxy.yaml"])
        log = open(os.path.join(self.workdir, f"{node.name}.log"), "a")
        self.started_at[node.name] = time.monotonic()
        proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        self.containers[node.name] = name
        self.agents[node.name] = proc
        if wait:
            self.wait_for_agent(node)
        return proc

    def stats_path(self, node):
        return os.path.join(self.state_dir(node), "stats.json")

    def health(self, node, path="/healthz"):
        """HTTP status of the agent's health endpoint, asked from the node's namespace (0: none)."""
        proc = self.lab.run(node.ns, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "1",
                                      f"http://127.0.0.1:{HEALTHZ_PORT}{path}"], check=False, timeout=5)
        return int(proc.stdout or 0)

    def wait_until_healthy(self, node, timeout=240.0):
        """Seconds from `podman run` to the first 200 of /healthz (the readiness probe)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.agents[node.name].poll() is not None:
                log = "\n".join(line for line in self.node_log(node).splitlines() if not line.startswith("[cache]"))
                raise RuntimeError(f"container on {node.name} exited: {log[-3000:]}")
            if self.health(node) == 200:
                return time.monotonic() - self.started_at[node.name]
            time.sleep(0.05)
        raise TimeoutError(f"/healthz on {node.name} not 200 within {timeout}s")

    def stop_containers(self):
        for node_name, name in list(self.containers.items()):
            proc = self.agents.pop(node_name, None)
            subprocess.run(["podman", "stop", "-t", "5", name], capture_output=True)
            subprocess.run(["podman", "rm", "-f", name], capture_output=True)
            if proc is not None:
                proc.wait(10)
            self.containers.pop(node_name)


@pytest.fixture(scope="module")
def container_lab(tmp_path_factory, bpf_pin_dir):
    """The lab with each node's agent in a container; /sys/fs/bpf in the containers is the
    session's private bpffs (this machine's /sys/fs/bpf is no bpffs; a node's is, mounted by systemd)."""
    if bpf_pin_dir is None:
        pytest.skip("no bpffs could be mounted for the containers' /sys/fs/bpf")
    workdir = str(tmp_path_factory.mktemp("container-lab"))
    with Lab("ximg") as lab:
        sl = ContainerServiceLab(lab, os.path.dirname(bpf_pin_dir), workdir=workdir)
        try:
            for node in sl.cluster.nodes:
                sl.start_agent(node, wait=False)
            for node in sl.cluster.nodes:
                START_TIMES.append((node.name, sl.wait_until_healthy(node), "baked"))
                sl.wait_for_agent(node)
            yield sl
        finally:
            for node in sl.cluster.nodes:
                path = os.path.join(workdir, f"{node.name}.log")
                if os.path.exists(path):
                    print(f"--- {node.name}.log (tail) ---\n" + open(path).read()[-1500:])
            sl.stop_containers()
    shutil.rmtree(workdir, ignore_errors=True)


def _compiled(log):
    """numba cache entries an agent wrote (it compiled them) per its NUMBA_DEBUG_CACHE output."""
    return [line for line in log.splitlines() if line.startswith("[cache] data saved to")]


def test_agent_in_the_container_is_ready_well_within_handover_seconds(container_lab):
    """Each container's /healthz answers 200 sooner than handoverSeconds after `podman run`,
    and its agent compiled nothing: every packet-path function came from the baked cache."""
    handover = _configmap_config()["handoverSeconds"]
    for node_name, seconds, _ in START_TIMES:
        assert seconds < handover, f"{node_name}: ready after {seconds:.1f}s (handoverSeconds {handover})"
    for node in container_lab.cluster.nodes:
        log = container_lab.node_log(node)
        entry = next(line for line in log.splitlines() if "event=numba_cache" in line)
        assert "copied=" in entry, entry                    # the emptyDir took the baked cache
        assert _compiled(log) == [], f"{node.name} compiled at start: {_compiled(log)[:5]}"


def test_livez_and_healthz_answer(container_lab):
    """The DaemonSet's probes (/livez liveness, /healthz readiness on healthzBindAddress) answer 200."""
    for node in container_lab.cluster.nodes:
        assert container_lab.health(node, "/livez") == 200
        assert container_lab.health(node, "/healthz") == 200


@pytest.mark.parametrize("scenario", [scenarios.clusterip_tcp, scenarios.nodeport_cluster,
                                      scenarios.clusterip_udp], ids=lambda s: s.__name__)
def test_traffic_through_the_containerised_agents(container_lab, scenario):
    """The scenario's promise (its docstring) holds with the agents in containers."""
    result = scenario(container_lab)
    assert result.ok, f"{scenario.__doc__.strip()} -> {result.detail}"


def test_the_containers_forwarded_it(container_lab):
    """The traffic above went through the containers' pipelines and steering programs."""
    for node in container_lab.cluster.nodes:
        stats = container_lab.agent_stats(node)
        pipeline = stats["queues"]["0"]["pipeline"]
        assert pipeline.get("XSKP_CNT_TX_TRANSPORT", 0) + pipeline.get("XSKP_CNT_TX_GATEWAY", 0) > 0, stats
        # XDP mode counts STEER_REDIRECT_*, upcall mode (auto on veth) its UPCALL_* and FAST_*
        steered = {k: v for k, v in stats["steering"].items()
                   if v and ("REDIRECT" in k or k.startswith(("UPCALL_", "FAST_")))}
        assert steered, stats["steering"]


def test_a_handover_restart_between_containers_keeps_the_flows(container_lab):
    """SIGTERM to node0's container (a rolling update) and a new container: the new agent, with
    the DaemonSet's capabilities (no CAP_SYS_ADMIN), takes over the programs from the pins in
    bpffs, adopts the fast path's flow table (adopted=True), and the streams carried by the fast
    path survive without a reset (lifecycle.restart_without_loss)."""
    node0 = container_lab.cluster.nodes[0]
    result = lifecycle.restart_without_loss(container_lab)
    log = container_lab.node_log(node0)
    fast = [line for line in log.splitlines() if "event=fast_path" in line]
    assert len(fast) >= 2 and "adopted=True" in fast[-1], fast
    assert "bpf_pins_unavailable" not in log
    assert result.ok, result.detail


def test_state_files_are_for_root_only(container_lab):
    """Every file the agent wrote in its stateDir is 0600 (the image's umask 077)."""
    for node in container_lab.cluster.nodes:
        state = container_lab.state_dir(node)
        modes = {name: oct(os.stat(os.path.join(state, name)).st_mode & 0o777) for name in os.listdir(state)
                 if os.path.isfile(os.path.join(state, name))}
        assert modes and set(modes.values()) == {"0o600"}, modes


def test_container_runs_as_the_daemonset_says(container_lab):
    """The running container has a read-only root, no privilege escalation, a seccomp filter,
    the DaemonSet's capabilities only, and its memory limit."""
    name = next(iter(container_lab.containers.values()))
    info = json.loads(subprocess.run(["podman", "inspect", name], capture_output=True, text=True,
                                     check=True).stdout)[0]
    host = info["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert "no-new-privileges" in " ".join(host.get("SecurityOpt") or [])
    with open(f"/proc/{info['State']['Pid']}/status") as f:
        status = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
    assert status["Seccomp"].strip() == "2" and status["NoNewPrivs"].strip() == "1", status
    assert host["Memory"] == 2 * 1024 ** 3
    caps = {c.removeprefix("CAP_") for c in info["EffectiveCaps"]}
    assert caps == {"NET_ADMIN", "NET_RAW", "BPF", "PERFMON", "IPC_LOCK"}, caps


@pytest.mark.skipif(os.environ.get("XSKP_IMAGE_COLD") != "1",
                    reason="a cold start compiles for minutes here: XSKP_IMAGE_COLD=1")
def test_cold_start_for_comparison(container_lab):
    """Without the baked cache (a fresh emptyDir, XSKPROXY_BAKED_NUMBA_CACHE=off) node0's agent
    compiles at start; measured, then node0 restarts with the cache (its time is measured again)."""
    node = container_lab.cluster.nodes[0]
    container_lab.stop_containers()
    container_lab.cold.add(node.name)
    container_lab.start_agent(node, wait=False)
    START_TIMES.append((node.name, container_lab.wait_until_healthy(node, timeout=900), "cold"))
    assert _compiled(container_lab.node_log(node))
    container_lab.stop_containers()
    container_lab.cold.clear()
    for n in container_lab.cluster.nodes:
        container_lab.start_agent(n, wait=False)
    for n in container_lab.cluster.nodes:
        START_TIMES.append((n.name, container_lab.wait_until_healthy(n), "baked, restarted"))
    assert scenarios.clusterip_tcp(container_lab).ok


@pytest.fixture(scope="module", autouse=True)
def _report_start_times():
    yield
    for node_name, seconds, cache in START_TIMES:
        print(f"container start to /healthz 200: {node_name} {seconds:.2f}s ({cache} cache)")
