"""Configuration: defaults, antrea-agent.conf-style keys, and errors that name field and value."""
import pytest

from control.config import (
    CONNTRACK_ENTRIES_DEFAULT, Config, ConfigError, config_to_dict, load_config, parse_config,
)


def test_empty_file_gives_documented_defaults():
    """An empty config is valid: files source, loopback metrics, 1 Mi conntrack entries, nat mode."""
    config = parse_config(None)
    assert config == Config()
    assert config.source == "files"
    assert config.metrics_address.startswith("127.0.0.1:")
    assert config.state_dir == "/run/xskproxy"
    assert config.tables.conntrack_entries == CONNTRACK_ENTRIES_DEFAULT == 1048576
    assert config.antrea_proxy.default_load_balancer_mode == "nat"
    assert config.antrea_proxy.proxy_load_balancer_ips is True
    assert config.antrea_proxy.proxy_all is False


def test_full_file_is_parsed(tmp_path):
    """Every key of a complete file lands in its field, lists become tuples, CIDRs normalised."""
    path = tmp_path / "xskproxy.yaml"
    path.write_text("""
nodeName: node-a
transportInterface: eth0
gatewayInterface: antrea-gw0
queues: 2
source: kube
kubeconfig: /etc/kubeconfig
metricsAddress: 127.0.0.1:9999
stateDir: /tmp/xskp
snatPortRange: 62000-63000
logLevel: debug
tables:
  conntrackEntries: 2048
  affinityEntries: 4096
  maxServices: 100
  maxBackends: 1000
antreaProxy:
  proxyAll: true
  skipServices: [kube-system/kube-dns, 10.96.0.10]
  proxyLoadBalancerIPs: false
  defaultLoadBalancerMode: dsr
  nodePortAddresses: [192.168.1.7/24]
""")
    config = load_config(path)
    assert (config.node_name, config.transport_interface, config.gateway_interface) == \
        ("node-a", "eth0", "antrea-gw0")
    assert config.queues == 2 and config.source == "kube" and config.kubeconfig == "/etc/kubeconfig"
    assert config.snat_port_range == (62000, 63000)
    assert config.tables.conntrack_entries == 2048 and config.tables.max_backends == 1000
    ap = config.antrea_proxy
    assert ap.proxy_all and not ap.proxy_load_balancer_ips
    assert ap.skip_services == ("kube-system/kube-dns", "10.96.0.10")
    assert ap.default_load_balancer_mode == "dsr"
    assert ap.node_port_addresses == ("192.168.1.0/24",)
    assert parse_config(config_to_dict(config)) == config


@pytest.mark.parametrize("data, message", [
    ({"antreaProxy": {"defaultLoadBalancerMode": "dsrr"}},
     "antreaProxy.defaultLoadBalancerMode: 'dsrr' is not one of nat, dsr"),
    ({"antreaProxy": {"proxyAll": "yes"}}, "antreaProxy.proxyAll: 'yes' is not a boolean"),
    ({"antreaProxy": {"skipServices": ["kube-system/dns", "nonsense"]}},
     "antreaProxy.skipServices[1]: 'nonsense' is neither namespace/name nor an IP address"),
    ({"antreaProxy": {"nodePortAddresses": ["10.0.0.0/33"]}},
     "antreaProxy.nodePortAddresses[0]: '10.0.0.0/33' is not a CIDR"),
    ({"antreaProxy": {"proxyEverything": True}}, "antreaProxy.proxyEverything: unknown key"),
    ({"transportIface": "eth0"}, "transportIface: unknown key"),
    ({"queues": 0}, "queues: 0 is not between 1 and 256"),
    ({"queues": True}, "queues: True is not an integer"),
    ({"tables": {"conntrackEntries": "many"}}, "tables.conntrackEntries: 'many' is not an integer"),
    ({"tables": []}, "tables: [] is not a mapping"),
    ({"source": "etcd"}, "source: 'etcd' is not one of files, kube"),
    ({"metricsAddress": "localhost"}, "metricsAddress: 'localhost' is not host:port"),
    ({"snatPortRange": "65000-61000"}, "snatPortRange: '65000-61000' is not a port range"),
    ({"stateDir": ""}, "stateDir: must not be empty"),
])
def test_bad_value_error_names_field_and_value(data, message):
    """A bad value raises ConfigError whose message starts with the field path and shows the value."""
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert str(err.value).startswith(message), str(err.value)


def test_top_level_must_be_a_mapping():
    """A YAML list as the whole file is rejected, not read as defaults."""
    with pytest.raises(ConfigError, match="is not a mapping"):
        parse_config(["nodeName", "x"])


def test_load_config_reports_file_and_yaml_errors(tmp_path):
    """A missing file and broken YAML each give one ConfigError naming the file."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("antreaProxy: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(broken)
    bad = tmp_path / "bad.yaml"
    bad.write_text("antreaProxy:\n  defaultLoadBalancerMode: dsrr\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert err.value.path == "antreaProxy.defaultLoadBalancerMode"
    assert "bad.yaml" in str(err.value)


def test_duplicate_key_is_refused_naming_key_line_and_file(tmp_path):
    """A key written twice is an error (the second silently won), with the key, line and file."""
    path = tmp_path / "dup.yaml"
    path.write_text("tables:\n  conntrackEntries: 2048\n  conntrackEntries: 4096\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "dup.yaml" in str(err.value) and "line 3" in str(err.value)
    assert "duplicate key 'conntrackEntries'" in str(err.value)


def test_alias_bomb_is_refused_at_once(tmp_path):
    """A YAML alias bomb is refused before it is built, in well under a second."""
    import time
    levels = ['&a0 ["x","x","x","x","x","x","x","x","x"]']
    levels += [f"&a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 8)]
    path = tmp_path / "bomb.yaml"
    path.write_text("nodeName: [" + ", ".join(levels) + "]\n")
    started = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert time.perf_counter() - started < 0.2
    assert "bomb.yaml" in str(err.value) and "alias" in str(err.value) and len(str(err.value)) < 300


def test_error_shows_a_huge_value_shortened_with_its_length(tmp_path):
    """A 100,000-item value is shown in a few dozen characters with its length."""
    path = tmp_path / "big.yaml"
    path.write_text("nodeName: [" + ", ".join(["node"] * 100_000) + "]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith("nodeName: ['node', 'node'")
    assert "(list of 100000 items) is not a string" in str(err.value) and len(str(err.value)) < 300


def test_config_file_above_the_size_limit_is_refused(tmp_path):
    """A configuration file above MAX_CONFIG_BYTES is refused by its size."""
    from control.config import MAX_CONFIG_BYTES
    path = tmp_path / "huge.yaml"
    path.write_text("# " + "x" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(ConfigError, match=f"huge.yaml: .*limit of {MAX_CONFIG_BYTES} bytes"):
        load_config(path)


def test_unknown_key_of_a_megabyte_is_shown_shortened():
    """An unknown key is named, but a huge one only by its start and length."""
    with pytest.raises(ConfigError) as err:
        parse_config({"k" * 1_000_000: 1})
    assert "(1000000 characters): unknown key" in str(err.value) and len(str(err.value)) < 500


def test_snat_port_range_overlapping_the_local_port_range_is_refused_naming_both():
    """snatPortRange inside net.ipv4.ip_local_port_range is refused with the field, the range and
    the sysctl's value; a range beside it is accepted."""
    from control.config import check_snat_port_range
    with pytest.raises(ConfigError) as err:
        check_snat_port_range((40000, 40999), (32768, 60999))
    assert err.value.path == "snatPortRange"
    assert "40000-40999" in str(err.value) and "ip_local_port_range 32768-60999" in str(err.value)
    with pytest.raises(ConfigError):
        check_snat_port_range((60999, 61999), (32768, 60999))     # one port in common
    check_snat_port_range((61000, 65535), (32768, 60999))
    check_snat_port_range((20000, 32767), (32768, 60999))


def test_local_port_range_is_read_from_the_sysctl_file(tmp_path):
    """The sysctl's two tab-separated numbers are read as (lo, hi)."""
    from control.config import read_local_port_range
    path = tmp_path / "ip_local_port_range"
    path.write_text("32768\t60999\n")
    assert read_local_port_range(str(path)) == (32768, 60999)


def test_an_empty_node_name_comes_from_node_name_env_then_the_host_name():
    """As a DaemonSet needs (one ConfigMap for every node): NODE_NAME (the Pod's spec.nodeName),
    else the host name in lower case; a configured name is kept."""
    from control.config import with_node_name
    empty = parse_config({})
    assert with_node_name(empty, {"NODE_NAME": "worker-3"}, "Host.Example").node_name == "worker-3"
    assert with_node_name(empty, {"NODE_NAME": " "}, "Host-7").node_name == "host-7"
    assert with_node_name(empty, {}, "node0").node_name == "node0"
    named = parse_config({"nodeName": "node1"})
    assert with_node_name(named, {"NODE_NAME": "worker-3"}, "h").node_name == "node1"
