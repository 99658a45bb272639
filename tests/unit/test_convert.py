"""Kubernetes objects (client models and kubectl-style dicts) -> model, and errors naming the field."""
import dataclasses

import pytest
from kubernetes import client as k

from control.convert import (
    ManifestError, endpoint_slice_from_dict, model_from_dict, node_from_dict, service_from_dict,
    to_dict,
)
from control.model import Endpoint, EndpointPort, ServicePort


def svc(name="web", ns="default", annotations=None, labels=None, status=None, **spec):
    return k.V1Service(
        api_version="v1", kind="Service",
        metadata=k.V1ObjectMeta(name=name, namespace=ns, annotations=annotations, labels=labels),
        spec=k.V1ServiceSpec(**spec), status=status)


def test_client_model_and_kubectl_dict_give_the_same_service():
    """A V1Service model and the dict kubectl prints for it convert to the same, equal Service."""
    model = svc(cluster_ip="10.96.0.10", cluster_ips=["10.96.0.10"], type="NodePort",
                ports=[k.V1ServicePort(name="http", port=80, target_port=8080, node_port=30080),
                       k.V1ServicePort(name="dns", port=53, protocol="UDP", target_port="dns")])
    as_yaml_dict = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "type": "NodePort",
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080},
                           {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"}]},
    }
    a, b = service_from_dict(model), service_from_dict(as_yaml_dict)
    assert a == b
    assert a.cluster_ips == ("10.96.0.10",)
    assert a.ports == (ServicePort("http", "TCP", 80, 8080, 30080), ServicePort("dns", "UDP", 53, "dns", 0))
    assert a.type == "NodePort" and a.session_affinity == "None" and a.load_balancer_mode is None


def test_headless_and_external_name_have_no_cluster_ip():
    """clusterIP None (headless) and ExternalName Services carry no VIP to proxy."""
    assert service_from_dict(svc(cluster_ip="None", cluster_ips=["None"])).cluster_ips == ()
    ext = service_from_dict(svc(type="ExternalName", external_name="example.com"))
    assert ext.type == "ExternalName" and ext.cluster_ips == ()


def test_load_balancer_fields_annotation_and_proxy_name_label():
    """LB ingress IPs (hostname-only skipped), source ranges, DSR annotation and proxy-name label land."""
    s = service_from_dict(svc(
        type="LoadBalancer", cluster_ips=["10.96.1.1"], external_ips=["192.0.2.9"],
        load_balancer_source_ranges=["198.51.100.0/24"], external_traffic_policy="Local",
        internal_traffic_policy="Local", ports=[k.V1ServicePort(port=443)],
        annotations={"service.antrea.io/load-balancer-mode": "DSR"},
        labels={"service.kubernetes.io/service-proxy-name": "other", "app": "x"},
        status=k.V1ServiceStatus(load_balancer=k.V1LoadBalancerStatus(ingress=[
            k.V1LoadBalancerIngress(ip="203.0.113.5"), k.V1LoadBalancerIngress(hostname="lb.example")]))))
    assert s.load_balancer_ips == ("203.0.113.5",)
    assert s.external_ips == ("192.0.2.9",)
    assert s.load_balancer_source_ranges == ("198.51.100.0/24",)
    assert (s.external_traffic_policy, s.internal_traffic_policy) == ("Local", "Local")
    assert s.load_balancer_mode == "dsr"
    assert s.service_proxy_name == "other"
    assert ("app", "x") in s.labels


def test_client_ip_affinity_timeout_default_and_full_range():
    """ClientIP affinity defaults to 10800 s and accepts the full Kubernetes range up to 86400 s."""
    s = service_from_dict(svc(session_affinity="ClientIP", ports=[k.V1ServicePort(port=80)]))
    assert s.affinity_timeout_seconds == 10800
    long = svc(session_affinity="ClientIP", ports=[k.V1ServicePort(port=80)],
               session_affinity_config=k.V1SessionAffinityConfig(client_ip=k.V1ClientIPConfig(timeout_seconds=86400)))
    assert service_from_dict(long).affinity_timeout_seconds == 86400


@pytest.mark.parametrize("mutate, field, value_text", [
    (lambda d: d["spec"]["ports"][0].update(port=70000), "spec.ports[0].port", "70000"),
    (lambda d: d["spec"]["ports"][0].update(port="http"), "spec.ports[0].port", "'http'"),
    (lambda d: d["spec"]["ports"][0].update(protocol="ICMP"), "spec.ports[0].protocol", "'ICMP'"),
    (lambda d: d["spec"].update(clusterIPs=["10.0.0.300"]), "spec.clusterIPs[0]", "'10.0.0.300'"),
    (lambda d: d["spec"].update(type="Magic"), "spec.type", "'Magic'"),
    (lambda d: d["spec"].update(externalTrafficPolicy="Nearby"), "spec.externalTrafficPolicy", "'Nearby'"),
    (lambda d: d["spec"].update(sessionAffinity="ClientIP",
                                sessionAffinityConfig={"clientIP": {"timeoutSeconds": 86401}}),
     "spec.sessionAffinityConfig.clientIP.timeoutSeconds", "86401"),
    (lambda d: d["spec"].update(sessionAffinity="ClientIP",
                                sessionAffinityConfig={"clientIP": {"timeoutSeconds": 0}}),
     "spec.sessionAffinityConfig.clientIP.timeoutSeconds", "0"),
    (lambda d: d["metadata"].update(annotations={"service.antrea.io/load-balancer-mode": "dsrr"}),
     "metadata.annotations['service.antrea.io/load-balancer-mode']", "'dsrr'"),
    (lambda d: d["metadata"].pop("name"), "metadata.name", "required"),
    (lambda d: d["spec"].update(loadBalancerSourceRanges=["nowhere"]), "spec.loadBalancerSourceRanges[0]",
     "'nowhere'"),
    (lambda d: d["spec"].update(ports=[{"port": 80}, {"port": 81}]), "spec.ports[0].name", "required"),
])
def test_bad_service_names_the_field_and_value(mutate, field, value_text):
    """Each malformed Service raises ManifestError whose field is the full path and text shows the value."""
    d = {"kind": "Service", "metadata": {"name": "web", "namespace": "default"},
         "spec": {"clusterIPs": ["10.96.0.1"], "ports": [{"port": 80}]}}
    mutate(d)
    with pytest.raises(ManifestError) as err:
        service_from_dict(d)
    assert err.value.field == field
    assert value_text in str(err.value)


def test_endpoint_conditions_follow_the_api_defaults():
    """ready/serving nil mean true, terminating nil means false; explicit values are kept."""
    sl = k.V1EndpointSlice(
        api_version="discovery.k8s.io/v1", kind="EndpointSlice", address_type="IPv4",
        metadata=k.V1ObjectMeta(name="web-abc", namespace="default",
                                labels={"kubernetes.io/service-name": "web"}),
        endpoints=[
            k.V1Endpoint(addresses=["10.1.0.5"]),
            k.V1Endpoint(addresses=["10.1.0.6"], conditions=k.V1EndpointConditions()),
            k.V1Endpoint(addresses=["10.1.0.7"], node_name="n2", zone="z1",
                         conditions=k.V1EndpointConditions(ready=False, serving=True, terminating=True),
                         hints=k.V1EndpointHints(for_zones=[k.V1ForZone(name="z1")])),
        ],
        ports=[k.DiscoveryV1EndpointPort(name="http", port=8080, protocol="TCP")])
    s = endpoint_slice_from_dict(sl)
    assert s.service_key == ("default", "web") and s.address_type == "IPv4"
    assert s.endpoints[0] == Endpoint(("10.1.0.5",), ready=True, serving=True, terminating=False)
    assert s.endpoints[1] == dataclasses.replace(s.endpoints[0], addresses=("10.1.0.6",))
    assert s.endpoints[2] == Endpoint(("10.1.0.7",), ready=False, serving=True, terminating=True,
                                      node_name="n2", zone="z1", hint_zones=("z1",))
    assert s.ports == (EndpointPort("http", "TCP", 8080),)


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["endpoints"][0].update(addresses=["10.1.0.999"]), "endpoints[0].addresses[0]"),
    (lambda d: d["endpoints"][0].update(addresses=["fd00::1"]), "endpoints[0].addresses[0]"),
    (lambda d: d["endpoints"][0].update(addresses=[]), "endpoints[0].addresses"),
    (lambda d: d["endpoints"][0].update(conditions={"ready": "yes"}), "endpoints[0].conditions.ready"),
    (lambda d: d.pop("addressType"), "addressType"),
    (lambda d: d["ports"][0].update(port=-1), "ports[0].port"),
])
def test_bad_endpoint_slice_names_the_field(mutate, field):
    """A malformed EndpointSlice raises ManifestError with the path of the bad field."""
    d = {"kind": "EndpointSlice", "addressType": "IPv4",
         "metadata": {"name": "s", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
         "endpoints": [{"addresses": ["10.1.0.5"]}], "ports": [{"port": 80}]}
    mutate(d)
    with pytest.raises(ManifestError) as err:
        endpoint_slice_from_dict(d)
    assert err.value.field == field


def test_node_addresses_pod_cidrs_and_zone():
    """A Node gives its typed addresses, podCIDRs (or the single podCIDR) and topology zone."""
    node = k.V1Node(
        metadata=k.V1ObjectMeta(name="n1", labels={"topology.kubernetes.io/zone": "z1"}),
        spec=k.V1NodeSpec(pod_cidr="10.1.0.0/24", pod_cidrs=["10.1.0.0/24", "fd00:1::/64"]),
        status=k.V1NodeStatus(addresses=[k.V1NodeAddress(type="InternalIP", address="192.168.0.1"),
                                         k.V1NodeAddress(type="Hostname", address="n1")]))
    n = node_from_dict(node)
    assert n.addresses == (("InternalIP", "192.168.0.1"), ("Hostname", "n1"))
    assert n.internal_ips() == ("192.168.0.1",)
    assert n.pod_cidrs == ("10.1.0.0/24", "fd00:1::/64")
    assert n.zone == "z1"
    only_single = node_from_dict({"metadata": {"name": "n2"}, "spec": {"podCIDR": "10.2.0.0/24"}})
    assert only_single.pod_cidrs == ("10.2.0.0/24",)
    with pytest.raises(ManifestError) as err:
        node_from_dict({"metadata": {"name": "n3"}, "spec": {"podCIDRs": ["10.3.0.0/99"]}})
    assert err.value.field == "spec.podCIDRs[0]"


def test_model_from_dict_dispatches_on_kind_and_rejects_others():
    """model_from_dict picks the converter by kind; an unsupported kind is an error naming `kind`."""
    assert model_from_dict({"kind": "Node", "metadata": {"name": "n"}}).name == "n"
    with pytest.raises(ManifestError) as err:
        model_from_dict({"kind": "Pod", "metadata": {"name": "p"}})
    assert err.value.field == "kind"
    assert to_dict({"a": 1}) == {"a": 1}


@pytest.mark.parametrize("ep", [
    {"addresses": ["10.0.0.1"]},
    {"addresses": ["10.0.0.1"], "conditions": {}},
    {"addresses": ["10.0.0.1"], "conditions": {"ready": None, "serving": False, "terminating": True}},
    {"addresses": ["10.0.0.1"], "conditions": {"ready": False}, "nodeName": "n1", "zone": "z"},
    {"addresses": ["10.0.0.1"], "nodeName": "", "zone": ""},
    {"addresses": ["10.0.0.1"], "hints": {"forZones": [{"name": "z"}]}},
    {"addresses": ["10.0.0.1", "10.0.0.2"]},
])
def test_fast_endpoint_path_equals_the_checked_path(ep):
    """The fast endpoint conversion gives exactly what the fully checked one gives (or defers to it)."""
    import socket
    from control.convert import _FAST_ENDPOINT, _endpoint, _endpoint_fast
    assert _FAST_ENDPOINT, "the model's Endpoint fields changed: update _FAST_FIELDS"
    fast = _endpoint_fast(ep, socket.AF_INET)
    checked = _endpoint(ep, "endpoints[0]", "IPv4")
    assert fast is None or (fast == checked and hash(fast) == hash(checked) and repr(fast) == repr(checked))
