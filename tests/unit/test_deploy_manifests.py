"""deploy/ manifests checked against the Kubernetes OpenAPI schema as the official client models it.

Every field must exist in the model of its kind (unknown or misspelt keys fail), every value must
have the model's type, and required fields must be present (the models' own validation).
"""
import glob
import os
import re

import kubernetes.client as k8s
import pytest
import yaml

DEPLOY_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "deploy")
MODEL_OF_KIND = {
    ("v1", "ServiceAccount"): k8s.V1ServiceAccount,
    ("v1", "ConfigMap"): k8s.V1ConfigMap,
    ("apps/v1", "DaemonSet"): k8s.V1DaemonSet,
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): k8s.V1ClusterRole,
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): k8s.V1ClusterRoleBinding,
}
_SCALARS = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object,
            "bytes": (str, bytes)}


def schema_errors(value, type_name, path):
    """Every mismatch between value and the client's model type_name, as 'path: problem'."""
    if type_name in _SCALARS:
        return [] if isinstance(value, _SCALARS[type_name]) else [f"{path}: {value!r} is not {type_name}"]
    if m := re.fullmatch(r"List\[(.+)\]", type_name):
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [e for i, v in enumerate(value) for e in schema_errors(v, m.group(1), f"{path}[{i}]")]
    if m := re.fullmatch(r"Dict\[str, (.+)\]", type_name):
        if not isinstance(value, dict):
            return [f"{path}: expected a map"]
        return [e for k, v in value.items() for e in schema_errors(v, m.group(1), f"{path}.{k}")]
    model = getattr(k8s, type_name)
    if not isinstance(value, dict):
        return [f"{path}: expected an object ({type_name})"]
    python_name = {json: py for py, json in model.attribute_map.items()}
    errors = []
    for key, item in value.items():
        if key not in python_name:
            errors.append(f"{path}.{key}: unknown field of {type_name}")
        else:
            errors += schema_errors(item, model.openapi_types[python_name[key]], f"{path}.{key}")
    return errors


def deploy_documents():
    for path in sorted(glob.glob(os.path.join(DEPLOY_DIR, "*.yaml"))):
        with open(path) as f:
            for index, doc in enumerate(yaml.safe_load_all(f)):
                if doc is not None:
                    yield f"{os.path.basename(path)}#{index}", doc


DOCUMENTS = list(deploy_documents())


def test_deploy_has_every_kind_a_node_needs():
    """deploy/ holds the DaemonSet, its RBAC, ServiceAccount and ConfigMap."""
    kinds = {doc["kind"] for _, doc in DOCUMENTS}
    assert {"DaemonSet", "ClusterRole", "ClusterRoleBinding", "ServiceAccount", "ConfigMap"} <= kinds


@pytest.mark.parametrize("name,doc", DOCUMENTS, ids=[n for n, _ in DOCUMENTS])
def test_manifest_matches_the_openapi_schema(name, doc):
    """Each deploy manifest uses only fields of its kind's schema, with the right types."""
    model = MODEL_OF_KIND[(doc["apiVersion"], doc["kind"])]
    assert schema_errors(doc, model.__name__, doc["kind"]) == []
    k8s.ApiClient()._ApiClient__deserialize(doc, model.__name__)   # required fields


def test_schema_check_rejects_a_misspelt_field():
    """The checker itself fails on an unknown key and on a wrong type (so the test above can fail)."""
    bad = {"apiVersion": "apps/v1", "kind": "DaemonSet",
           "spec": {"selectr": {}, "template": {"spec": {"hostNetwork": "yes"}}}}
    errors = schema_errors(bad, "V1DaemonSet", "DaemonSet")
    assert "DaemonSet.spec.selectr: unknown field of V1DaemonSetSpec" in errors
    assert any("hostNetwork" in e and "bool" in e for e in errors)


def test_daemonset_asks_for_capabilities_not_privileged():
    """The DaemonSet lists the capabilities AF_XDP needs instead of running privileged."""
    ds = next(doc for _, doc in DOCUMENTS if doc["kind"] == "DaemonSet")
    ctx = ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert ctx.get("privileged") is False
    assert {"NET_ADMIN", "NET_RAW", "BPF"} <= set(ctx["capabilities"]["add"])
    assert ds["spec"]["template"]["spec"]["hostNetwork"] is True


def test_configmap_holds_a_valid_agent_config():
    """The ConfigMap's xskproxy.yaml parses with the agent's own configuration loader."""
    config = pytest.importorskip("control.config")
    cm = next(doc for _, doc in DOCUMENTS if doc["kind"] == "ConfigMap")
    raw = yaml.safe_load(cm["data"]["xskproxy.yaml"])
    raw.setdefault("nodeName", "node-a")
    config.parse_config(raw)
