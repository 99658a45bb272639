"""The two object fields the health servers and kube-proxy's metrics read: a Service's
spec.healthCheckNodePort and an EndpointSlice's last-change-trigger-time annotation."""
import pytest

from control.convert import ManifestError, endpoint_slice_from_dict, node_from_dict, service_from_dict


def _lb_service(**spec):
    return {"metadata": {"name": "web", "namespace": "shop"},
            "spec": dict({"type": "LoadBalancer", "clusterIP": "10.96.0.10", "externalTrafficPolicy": "Local",
                          "ports": [{"port": 80, "nodePort": 30080}]}, **spec)}


def _slice(annotations=None):
    meta = {"name": "web-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"metadata": meta, "addressType": "IPv4", "endpoints": [{"addresses": ["10.1.0.5"]}]}


def test_health_check_node_port_is_read_and_defaults_to_none():
    """spec.healthCheckNodePort becomes health_check_node_port; without it the Service has 0."""
    assert service_from_dict(_lb_service(healthCheckNodePort=32000)).health_check_node_port == 32000
    assert service_from_dict(_lb_service()).health_check_node_port == 0


def test_bad_health_check_node_port_names_the_field():
    """A healthCheckNodePort outside 0..65535 is refused naming spec.healthCheckNodePort."""
    with pytest.raises(ManifestError, match=r"spec\.healthCheckNodePort: 70000 is not between"):
        service_from_dict(_lb_service(healthCheckNodePort=70000))


@pytest.mark.parametrize("value, expected", [
    ("2026-11-29T09:00:00Z", 1795942800.0),
    ("2026-11-29T09:00:00.250000Z", 1795942800.25),
    ("2026-11-29T10:00:00+01:00", 1795942800.0),
    ("2026-11-29T09:00:00", 1795942800.0),          # no zone: read as UTC
])
def test_trigger_time_annotation_is_unix_seconds(value, expected):
    """The EndpointSlice controller's RFC 3339 trigger time becomes Unix seconds."""
    annotations = {"endpoints.kubernetes.io/last-change-trigger-time": value}
    assert endpoint_slice_from_dict(_slice(annotations)).last_change_trigger_time == expected


@pytest.mark.parametrize("meta, spec, to_be_deleted", [
    ({}, {}, False),
    ({}, {"taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]}, False),
    ({}, {"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "value": "1700000000", "effect": "NoSchedule"}]}, True),
    ({"deletionTimestamp": "2026-11-29T09:00:00Z"}, {}, True),
])
def test_a_node_being_deleted_is_marked(meta, spec, to_be_deleted):
    """deletionTimestamp or the cluster autoscaler's taint: to_be_deleted (kube-proxy's /healthz fails)."""
    node = node_from_dict({"metadata": dict({"name": "node-a"}, **meta), "spec": spec})
    assert node.to_be_deleted is to_be_deleted


@pytest.mark.parametrize("annotations", [None, {}, {"endpoints.kubernetes.io/last-change-trigger-time": "soon"},
                                         {"endpoints.kubernetes.io/last-change-trigger-time": 5}])
def test_absent_or_unreadable_trigger_time_is_none(annotations):
    """No annotation, or one that is not a time, gives None (no latency recorded), never an error."""
    assert endpoint_slice_from_dict(_slice(annotations)).last_change_trigger_time is None
