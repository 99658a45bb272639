"""The Service and EndpointSlice fields kube-proxy reads and xskproxy used to miss (issue 14,
items 2-4): the selection labels in both sources, LoadBalancer ipMode, node hints and the zone
label, checked at the converter, the Kubernetes source's requests and the translation."""
import pytest
import yaml

from control import kube
from control.convert import ManifestError, endpoint_slice_from_dict, node_from_dict, service_from_dict
from control.convert import state_from_models
from control.model import PROXY_LABEL_SELECTOR
from control.translate import ProxyOptions, Translator, describe_tables


def service(name="web", labels=None, spec=None, status=None):
    body = {"clusterIP": "10.96.5.1", "ports": [{"name": "http", "protocol": "TCP", "port": 80}]}
    body.update(spec or {})
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "labels": labels or {}},
            "spec": body, "status": status or {}}


def endpoint_slice(name, service_name, endpoints, labels=None):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": name, "namespace": "default",
                         "labels": dict(labels or {}, **{"kubernetes.io/service-name": service_name})},
            "endpoints": endpoints, "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]}


def node(name, address, zone_labels=None):
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": zone_labels or {}},
            "spec": {"podCIDRs": [f"10.{address.split('.')[-1]}.0.0/24"]},
            "status": {"addresses": [{"type": "InternalIP", "address": address}]}}


NODES = [node("n1", "192.168.1.1", {"topology.kubernetes.io/zone": "zone-a"}),
         node("n2", "192.168.1.2", {"topology.kubernetes.io/zone": "zone-b"})]
CONVERT = {"Service": service_from_dict, "EndpointSlice": endpoint_slice_from_dict, "Node": node_from_dict}


def backends_on(objects, node_name="n1", **options):
    """{"ns/name:port/proto": set of cluster-ring backends} of the objects translated on node_name."""
    state = state_from_models(CONVERT[o["kind"]](o) for o in objects)
    result = Translator(ProxyOptions(node_name=node_name, **options)).translate(state)
    return {k: set(v["backends"]) for k, v in describe_tables(result.tables, result.service_names).items()}


def ep(address, node_name, zone=None, for_zones=(), for_nodes=(), ready=True):
    e = {"addresses": [address], "nodeName": node_name, "conditions": {"ready": ready}}
    if zone:
        e["zone"] = zone
    hints = {}
    if for_zones:
        hints["forZones"] = [{"name": z} for z in for_zones]
    if for_nodes:
        hints["forNodes"] = [{"name": n} for n in for_nodes]
    if hints:
        e["hints"] = hints
    return e


# --- item 4: the labels kube-proxy selects on ---------------------------------------------------

@pytest.mark.parametrize("labels", [{"service.kubernetes.io/service-proxy-name": "other-proxy"},
                                    {"service.kubernetes.io/service-proxy-name": ""},
                                    {"service.kubernetes.io/headless": ""},
                                    {"service.kubernetes.io/headless": "true"}])
def test_services_labelled_for_another_proxy_or_headless_are_left_alone(labels):
    """A Service carrying service-proxy-name (whatever its value, empty included) or the headless
    label gets nothing, as kube-proxy's `!label` selector leaves it out, ClusterIP or not."""
    objects = NODES + [service(labels=labels), endpoint_slice("web-1", "web", [ep("10.1.0.5", "n1")])]
    assert backends_on(objects) == {}


def test_endpoint_slices_carrying_a_selection_label_are_not_used():
    """kube-proxy's selector applies to EndpointSlices too: a slice labelled headless or for
    another proxy contributes no endpoint, the Service's other slices do."""
    objects = NODES + [service(),
                       endpoint_slice("web-1", "web", [ep("10.1.0.5", "n1")]),
                       endpoint_slice("web-2", "web", [ep("10.1.0.6", "n1")],
                                      labels={"service.kubernetes.io/headless": ""}),
                       endpoint_slice("web-3", "web", [ep("10.1.0.7", "n1")],
                                      labels={"service.kubernetes.io/service-proxy-name": "x"})]
    assert backends_on(objects) == {"default/web:http/TCP": {"10.1.0.5:8080"}}


def test_the_kube_source_lists_and_watches_with_kube_proxys_label_selector(monkeypatch):
    """Services and EndpointSlices are listed and watched with
    `!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless` (the API server
    leaves the rest out, and a Service gaining a label is DELETED from the watch); Nodes without."""
    calls = []

    class Stop(Exception):
        pass

    def list_function(api_client, resource):
        def call(**kwargs):
            calls.append((resource, kwargs))
            raise Stop()
        return call

    monkeypatch.setattr(kube, "_list_function", list_function)
    source = kube.KubeSource(client_factory=lambda: None)
    for resource, reflector in source.reflectors.items():
        reflector._api_client = object()
        for step in (reflector._list, reflector._watch):
            with pytest.raises(Stop):
                step()
    assert PROXY_LABEL_SELECTOR == "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"
    selectors = {(resource, kwargs.get("watch", False)): kwargs.get("label_selector") for resource, kwargs in calls}
    assert selectors == {("services", False): PROXY_LABEL_SELECTOR, ("services", True): PROXY_LABEL_SELECTOR,
                         ("endpointslices", False): PROXY_LABEL_SELECTOR,
                         ("endpointslices", True): PROXY_LABEL_SELECTOR,
                         ("nodes", False): None, ("nodes", True): None}


# --- item 3: LoadBalancer ingress ipMode --------------------------------------------------------

def lb_service(*ingress):
    return service("lb", spec={"type": "LoadBalancer",
                               "ports": [{"name": "http", "protocol": "TCP", "port": 80, "nodePort": 30080}]},
                   status={"loadBalancer": {"ingress": list(ingress)}})


def test_ipmode_proxy_ingress_gets_no_frontend_and_vip_is_the_default():
    """ipMode Proxy: the load balancer proxies, so its IP is no frontend of ours (traffic to it
    goes out to the LB); ipMode VIP and no ipMode are frontends as before."""
    s = service_from_dict(lb_service({"ip": "203.0.113.1"}, {"ip": "203.0.113.2", "ipMode": "VIP"},
                                     {"ip": "203.0.113.3", "ipMode": "Proxy"}))
    assert s.load_balancer_ips == ("203.0.113.1", "203.0.113.2")
    assert s.load_balancer_proxy_ips == ("203.0.113.3",)
    state = state_from_models([s] + [node_from_dict(n) for n in NODES])
    result = Translator(ProxyOptions(node_name="n1")).translate(state)
    frontends = describe_tables(result.tables, result.service_names)["default/lb:http/TCP"]["frontends"]
    assert frontends == ["ClusterIP 10.96.5.1:80/TCP", "LoadBalancer 203.0.113.1:80/TCP",
                         "LoadBalancer 203.0.113.2:80/TCP"]
    assert not any(key[0] == "203.0.113.3" for key in result.steering.add_frontends)


def test_an_unknown_ipmode_names_the_field():
    """ipMode other than VIP or Proxy is refused with its path (the API server refuses it too)."""
    with pytest.raises(ManifestError, match=r"status.loadBalancer.ingress\[0\].ipMode"):
        service_from_dict(lb_service({"ip": "203.0.113.1", "ipMode": "proxy"}))


# --- item 2: trafficDistribution, zone and node hints -------------------------------------------

def test_traffic_distribution_and_node_hints_are_read():
    """spec.trafficDistribution is kept as given; hints.forNodes lands next to forZones."""
    s = service_from_dict(service(spec={"trafficDistribution": "PreferSameNode"}))
    assert s.traffic_distribution == "PreferSameNode"
    sl = endpoint_slice_from_dict(endpoint_slice("web-1", "web", [
        ep("10.1.0.5", "n1", "zone-a", for_zones=["zone-a"], for_nodes=["n1"])]))
    assert sl.endpoints[0].hint_nodes == ("n1",) and sl.endpoints[0].hint_zones == ("zone-a",)
    with pytest.raises(ManifestError, match=r"endpoints\[0\].hints.forNodes\[0\].name"):
        endpoint_slice_from_dict(endpoint_slice("web-1", "web", [
            {"addresses": ["10.1.0.5"], "hints": {"forNodes": [{}]}}]))


def test_prefer_same_node_uses_this_nodes_hinted_endpoints():
    """Every ready endpoint hinted forNodes, one for n1: n1 uses it alone (PreferSameNode);
    n2, with none hinted for it, falls back to the zone hints; a node in neither falls back to all."""
    slices = [endpoint_slice("web-1", "web", [
        ep("10.1.0.5", "n1", "zone-a", for_zones=["zone-a"], for_nodes=["n1"]),
        ep("10.3.0.5", "n3", "zone-a", for_zones=["zone-a"], for_nodes=["n3"]),
        ep("10.4.0.5", "n4", "zone-b", for_zones=["zone-b"], for_nodes=["n4"])])]
    objects = NODES + [service(spec={"trafficDistribution": "PreferSameNode"})] + slices
    assert backends_on(objects, "n1") == {"default/web:http/TCP": {"10.1.0.5:8080"}}
    assert backends_on(objects, "n2") == {"default/web:http/TCP": {"10.4.0.5:8080"}}
    zoneless = [node("n1", "192.168.1.1", {"topology.kubernetes.io/zone": "zone-c"})]
    assert backends_on(zoneless + objects[2:]) == {"default/web:http/TCP": {"10.1.0.5:8080"}}
    assert backends_on([node("n9", "192.168.1.9")] + objects[2:], "n9") == {
        "default/web:http/TCP": {"10.1.0.5:8080", "10.3.0.5:8080", "10.4.0.5:8080"}}


def test_node_hints_are_ignored_unless_every_ready_endpoint_has_one():
    """One ready endpoint without a node hint: no same-node filtering (zone hints still apply);
    a not-ready endpoint without hints does not count."""
    slices = [endpoint_slice("web-1", "web", [
        ep("10.1.0.5", "n1", "zone-a", for_zones=["zone-a"], for_nodes=["n1"]),
        ep("10.3.0.5", "n3", "zone-a", for_zones=["zone-a"]),
        ep("10.4.0.5", "n4", "zone-b", for_zones=["zone-b"], for_nodes=["n4"])])]
    assert backends_on(NODES + [service()] + slices) == {
        "default/web:http/TCP": {"10.1.0.5:8080", "10.3.0.5:8080"}}
    not_ready = [endpoint_slice("web-1", "web", [
        ep("10.1.0.5", "n1", "zone-a", for_zones=["zone-a"], for_nodes=["n1"]),
        ep("10.4.0.5", "n4", "zone-b", for_zones=["zone-b"], for_nodes=["n4"]),
        ep("10.3.0.6", "n3", ready=False)])]
    assert backends_on(NODES + [service()] + not_ready) == {"default/web:http/TCP": {"10.1.0.5:8080"}}


def test_the_zone_comes_from_topology_kubernetes_io_zone_only():
    """kube-proxy reads the node's zone from topology.kubernetes.io/zone alone: a node with only
    the retired failure-domain.beta label has no zone, and zone hints are not applied there."""
    beta = node("n1", "192.168.1.1", {"failure-domain.beta.kubernetes.io/zone": "zone-a"})
    assert node_from_dict(beta).zone is None
    slices = [endpoint_slice("web-1", "web", [ep("10.1.0.5", "n1", "zone-a", for_zones=["zone-a"]),
                                              ep("10.2.0.5", "n2", "zone-b", for_zones=["zone-b"])])]
    assert backends_on([beta, NODES[1], service()] + slices) == {
        "default/web:http/TCP": {"10.1.0.5:8080", "10.2.0.5:8080"}}


def test_manifest_files_and_yaml_give_the_same_selection(tmp_path):
    """The file source converts the same objects the same way (one code path): a labelled
    Service in a manifest is loaded and then left alone by translate."""
    from control.manifests import load_state
    (tmp_path / "svc.yaml").write_text(yaml.safe_dump_all(
        NODES + [service(labels={"service.kubernetes.io/headless": ""}),
                 endpoint_slice("web-1", "web", [ep("10.1.0.5", "n1")])]))
    state = load_state(str(tmp_path))
    assert state.services[("default", "web")].headless_label is True
    result = Translator(ProxyOptions(node_name="n1")).translate(state)
    assert result.service_names == {} and result.stats["skipped_services"] == 1


def test_labels_and_hints_changing_between_translations_give_what_a_fresh_translator_gives():
    """A slice gaining the headless label, then the Service gaining service-proxy-name, then
    hints changing: the incremental translator follows each step as a fresh one would."""
    def state(*objects):
        return state_from_models(CONVERT[o["kind"]](o) for o in NODES + list(objects))

    def described(translation):
        return {k: set(v["backends"]) for k, v in describe_tables(translation.tables,
                                                                     translation.service_names).items()}
    hinted = [ep("10.1.0.5", "n1", for_nodes=["n1"]), ep("10.2.0.5", "n2", for_nodes=["n2"])]
    steps = [state(service(), endpoint_slice("web-1", "web", [ep("10.1.0.5", "n1")]),
                   endpoint_slice("web-2", "web", [ep("10.2.0.5", "n2")])),
             state(service(), endpoint_slice("web-1", "web", [ep("10.1.0.5", "n1")]),
                   endpoint_slice("web-2", "web", [ep("10.2.0.5", "n2")],
                                  labels={"service.kubernetes.io/headless": ""})),
             state(service(labels={"service.kubernetes.io/service-proxy-name": ""}),
                   endpoint_slice("web-1", "web", hinted)),
             state(service(), endpoint_slice("web-1", "web", hinted))]
    expected = [{"default/web:http/TCP": {"10.1.0.5:8080", "10.2.0.5:8080"}},
                {"default/web:http/TCP": {"10.1.0.5:8080"}}, {},
                {"default/web:http/TCP": {"10.1.0.5:8080"}}]
    translator = Translator(ProxyOptions(node_name="n1"))
    for step, wanted in zip(steps, expected):
        incremental = described(translator.translate(step))
        assert incremental == described(Translator(ProxyOptions(node_name="n1")).translate(step)) == wanted
