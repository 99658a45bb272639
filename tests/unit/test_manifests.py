"""Manifest files: kubectl-style lists and multi-document YAML, reload on change, last good state kept."""
import os
import time

import pytest

from control.manifests import ManifestError, ManifestSource, load_state

KUBECTL_LIST = """\
apiVersion: v1
items:
- apiVersion: v1
  kind: Service
  metadata:
    name: web
    namespace: default
    resourceVersion: "1234"
    uid: 6f0b9a34-0000-0000-0000-000000000001
  spec:
    clusterIP: 10.96.0.20
    clusterIPs: [10.96.0.20]
    internalTrafficPolicy: Cluster
    ipFamilies: [IPv4]
    ipFamilyPolicy: SingleStack
    ports:
    - port: 80
      protocol: TCP
      targetPort: 8080
    selector: {app: web}
    sessionAffinity: None
    type: ClusterIP
  status:
    loadBalancer: {}
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses: [10.1.0.5]
    conditions: {ready: true, serving: true, terminating: false}
    nodeName: node-a
    targetRef: {kind: Pod, name: web-1, namespace: default}
  kind: EndpointSlice
  metadata:
    labels:
      kubernetes.io/service-name: web
      endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
    name: web-x7k2p
    namespace: default
  ports:
  - name: ""
    port: 8080
    protocol: TCP
- apiVersion: v1
  kind: Node
  metadata:
    name: node-a
  spec:
    podCIDR: 10.1.0.0/24
    podCIDRs: [10.1.0.0/24]
  status:
    addresses:
    - {address: 192.168.77.1, type: InternalIP}
    - {address: node-a, type: Hostname}
kind: List
metadata:
  resourceVersion: ""
"""

EXTRA_SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: kube-system}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]
---
# an unrelated kind in the same directory is skipped, not an error
apiVersion: apps/v1
kind: Deployment
metadata: {name: whatever}
"""


def write(path, text):
    path.write_text(text)
    # make the change visible even on filesystems with coarse timestamps
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_kubectl_list_output_loads_every_kind(tmp_path):
    """What `kubectl get svc,endpointslices,nodes -o yaml` prints gives a Service, a slice and a Node."""
    f = tmp_path / "cluster.yaml"
    write(f, KUBECTL_LIST)
    state = load_state(f)
    assert set(state.services) == {("default", "web")}
    assert state.services[("default", "web")].cluster_ips == ("10.96.0.20",)
    assert [s.name for s in state.slices_of(("default", "web"))] == ["web-x7k2p"]
    assert state.nodes["node-a"].internal_ips() == ("192.168.77.1",)


def test_kubectl_json_output_loads_the_same_and_bad_json_names_the_file(tmp_path):
    """`kubectl get ... -o json` (a .json file) gives the same state as the YAML; a broken .json
    file is one error naming the file."""
    import json
    import yaml
    f = tmp_path / "cluster.json"
    write(f, json.dumps(yaml.safe_load(KUBECTL_LIST)))
    yaml_file = tmp_path / "other" / "cluster.yaml"
    yaml_file.parent.mkdir()
    write(yaml_file, KUBECTL_LIST)
    assert load_state(f) == load_state(yaml_file)
    write(f, '{"apiVersion": "v1", "items": [')
    with pytest.raises(ManifestError) as err:
        load_state(f)
    assert str(f) in str(err.value) and "not valid JSON" in str(err.value)


def test_directory_of_multi_document_files(tmp_path):
    """A directory's files are all read, multi-document files included; other kinds are skipped."""
    write(tmp_path / "a.yaml", KUBECTL_LIST)
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "b.yml", EXTRA_SERVICE)
    write(tmp_path / ".hidden.yaml", "not: [valid")            # editor files are not read
    write(tmp_path / "notes.txt", "kind: Service")              # nor other suffixes
    state = load_state(tmp_path)
    assert set(state.services) == {("default", "web"), ("kube-system", "dns")}
    assert len(state.services[("kube-system", "dns")].ports) == 2


def test_bad_document_names_file_document_and_field(tmp_path):
    """A bad field is reported with the file, the document index, the object and the field path."""
    f = tmp_path / "svc.yaml"
    write(f, EXTRA_SERVICE.replace("port: 53, protocol: UDP", "port: 99999, protocol: UDP"))
    with pytest.raises(ManifestError) as err:
        load_state(f)
    text = str(err.value)
    assert f"{f} document 0 (Service kube-system/dns): spec.ports[0].port: 99999" in text


def test_bad_list_item_names_the_item(tmp_path):
    """Inside a kind: List, the error says which item."""
    f = tmp_path / "list.yaml"
    write(f, KUBECTL_LIST.replace("addresses: [10.1.0.5]", "addresses: [not-an-ip]"))
    with pytest.raises(ManifestError) as err:
        load_state(f)
    assert "document 0 items[1] (EndpointSlice default/web-x7k2p): endpoints[0].addresses[0]" in str(err.value)


def test_duplicate_object_is_an_error(tmp_path):
    """The same Service in two files is reported with both places."""
    write(tmp_path / "a.yaml", EXTRA_SERVICE)
    write(tmp_path / "b.yaml", EXTRA_SERVICE)
    with pytest.raises(ManifestError, match="duplicate Service"):
        load_state(tmp_path)


def test_source_reloads_on_change_and_keeps_last_good_state(tmp_path):
    """A change is picked up by poll(); a broken edit keeps the previous state and records the error;
    fixing it clears the error."""
    f = tmp_path / "m.yaml"
    write(f, KUBECTL_LIST)
    changes = []
    source = ManifestSource(f, on_change=lambda: changes.append(1), interval=0.05)
    assert source.poll() is True and len(changes) == 1
    assert source.poll() is False                              # nothing changed: no reload
    good = source.state

    write(f, KUBECTL_LIST.replace("port: 80\n", "port: eighty\n"))
    assert source.poll() is False
    assert source.state is good
    assert "spec.ports[0].port: 'eighty'" in source.error and source.failures == 1

    write(f, KUBECTL_LIST.replace("port: 80\n", "port: 81\n"))
    assert source.poll() is True
    assert source.error is None
    assert source.state.services[("default", "web")].ports[0].port == 81
    assert len(changes) == 2


def test_source_thread_picks_up_a_new_file(tmp_path):
    """With the poll thread running, a file added to the directory shows up in the state."""
    write(tmp_path / "a.yaml", KUBECTL_LIST)
    source = ManifestSource(tmp_path, interval=0.02)
    source.start()
    try:
        write(tmp_path / "b.yaml", EXTRA_SERVICE)
        deadline = time.time() + 5
        while ("kube-system", "dns") not in source.state.services and time.time() < deadline:
            time.sleep(0.02)
        assert ("kube-system", "dns") in source.state.services
        assert source.staleness() == 0.0
    finally:
        source.stop()


def test_missing_path_is_reported_not_raised(tmp_path):
    """A source on a path that does not exist has an empty state and an error, and poll() does not raise."""
    source = ManifestSource(tmp_path / "nowhere")
    assert source.poll() is False
    assert "no such file or directory" in source.error
    assert source.state.services == {}


# --- hostile or careless files: bounded work, clear errors (issue 13) ---

def alias_bomb(levels=9):
    """About 1 KB of YAML whose metadata.labels value expands to 9**levels strings."""
    lines = ["apiVersion: v1", "kind: Service", 'anchors:', '  l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"  l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]")
    lines += ["metadata:", "  name: web", "  namespace: default", "  labels:", f"    big: *l{levels - 1}",
              "spec:", "  clusterIP: 10.96.0.20", "  ports: [{port: 80}]"]
    return "\n".join(lines) + "\n"


BOMB_CHILD = """
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))    # the unbounded load took 3 GB
from control.manifests import ManifestError, load_state
started = time.perf_counter()
try:
    load_state(sys.argv[1])
    error = None
except ManifestError as e:
    error = str(e)
peak_kb = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")]
print(json.dumps({"seconds": time.perf_counter() - started, "error": error, "peak_rss_kb": peak_kb[0]}))
"""


def test_yaml_alias_bomb_is_refused_at_once_naming_file_and_document(tmp_path):
    """A 1 KB alias bomb in metadata.labels is refused in well under a second, with a small
    memory peak and an error naming the file and the document, before any object is built."""
    import json
    import subprocess
    import sys
    f = tmp_path / "bomb.yaml"
    write(f, EXTRA_SERVICE.split("---")[0] + "---\n" + alias_bomb())
    assert f.stat().st_size < 1500
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", BOMB_CHILD, str(f)], cwd=root, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["seconds"] < 0.2
    assert result["peak_rss_kb"] < 100_000       # VmHWM: ru_maxrss would start at pytest's RSS
    assert f"{f} document 1" in result["error"] and "alias" in result["error"]
    assert len(result["error"]) < 400


def test_duplicate_yaml_key_is_refused_naming_key_line_and_file(tmp_path):
    """A key written twice in one mapping is an error (the second would silently win)."""
    f = tmp_path / "dup.yaml"
    write(f, EXTRA_SERVICE.replace("metadata: {name: dns, namespace: kube-system}",
                                   "metadata: {name: dns, namespace: kube-system}\nmetadata: {name: other}"))
    with pytest.raises(ManifestError) as err:
        load_state(f)
    assert f"{f} document 0" in str(err.value)
    assert "duplicate key 'metadata'" in str(err.value) and "line 4" in str(err.value)


def test_merge_keys_may_be_overridden(tmp_path):
    """`<<: *anchor` followed by one of the anchor's keys is an override, not a duplicate."""
    f = tmp_path / "merge.yaml"
    write(f, EXTRA_SERVICE.replace("metadata: {name: dns, namespace: kube-system}",
                                   "x-meta: &m {name: dns, namespace: default}\n"
                                   "metadata: {<<: *m, namespace: kube-system}"))
    assert set(load_state(f).services) == {("kube-system", "dns")}


@pytest.mark.parametrize("kind", ["[Service]", "{a: Service}"])
def test_kind_that_is_not_a_string_is_one_clear_error(tmp_path, kind):
    """kind as a list or a mapping names the field, the file and the document (no TypeError)."""
    f = tmp_path / "kind.yaml"
    write(f, EXTRA_SERVICE.replace("kind: Service", f"kind: {kind}"))
    with pytest.raises(ManifestError) as err:
        load_state(f)
    assert f"{f} document 0" in str(err.value) and "kind: " in str(err.value)
    assert "is not a string" in str(err.value)


def test_errors_never_print_a_whole_huge_value(tmp_path):
    """A 100,000-item metadata.name is reported in a few hundred characters, with its length."""
    f = tmp_path / "big.yaml"
    write(f, EXTRA_SERVICE.replace("{name: dns,", "{name: [" + ", ".join(["x"] * 100_000) + "],"))
    with pytest.raises(ManifestError) as err:
        load_state(f)
    assert len(str(err.value)) < 400 and "metadata.name" in str(err.value)
    assert "100000 items" in str(err.value)


def test_manifest_file_above_the_size_limit_is_refused(tmp_path, monkeypatch):
    """A file above MAX_MANIFEST_BYTES is refused by its size, naming the file and the limit."""
    from control import manifests
    monkeypatch.setattr(manifests, "MAX_MANIFEST_BYTES", 1000)
    f = tmp_path / "big.yaml"
    write(f, KUBECTL_LIST)
    with pytest.raises(ManifestError) as err:
        load_state(f)
    assert str(f) in str(err.value) and "1000 bytes" in str(err.value)


def test_deeply_nested_json_is_a_manifest_error(tmp_path):
    """JSON nested deeper than Python recurses is reported as a bad file, not a RecursionError."""
    f = tmp_path / "deep.json"
    write(f, "[" * 100_000 + "]" * 100_000)
    with pytest.raises(ManifestError) as err:
        load_state(f)
    assert str(f) in str(err.value)
