"""Tagged frames with real traffic (root): what the steering program does with a SYN tagged VLAN
10 to a NodePort, in generic (skb) and native XDP on veth, and in upcall mode (tc). A tag in the
frame's data is seen and left to the kernel in every mode; a tag carried in skb metadata (a veth
peer's tx VLAN offload, or a NIC's rx VLAN offload) is not visible to XDP at all (xdp_md has no
VLAN field), which the xfails below measure until the program reads
bpf_xdp_metadata_rx_vlan_tag; tc sees it (skb->vlan_present), so upcall mode leaves it alone."""
import shutil
import subprocess
import time

import pytest

from xsk_test_support import REPO, in_netns, needs_native, needs_root

pytestmark = [needs_root, needs_native]

NODE, CLIENT, NODE_PORT = "10.0.0.1", "10.0.0.100", 30080
METADATA_TAG_INVISIBLE = ("a tag in skb metadata is invisible to XDP (generic mode, and native veth "
                          "without the rx_vlan_tag kfunc): the SYN is steered as untagged")
VLAN_PUSH_BPF = r"""
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
SEC("tc")
int vlan_push(struct __sk_buff *skb)
{
	if (skb->protocol == bpf_htons(0x0800))
		bpf_skb_vlan_push(skb, bpf_htons(0x8100), 10);   /* into skb->vlan_tci, not the data */
	return TC_ACT_OK;
}
char _license[] SEC("license") = "GPL";
"""


def _counted(lab, topo, mode, send):
    """Counters the steering program (attached to tr0 in `mode`, NodePort on the node address)
    changed while `send()` ran in the client namespace. Upcall mode: tr0's upcall pair, the tc
    program at tr0 with a live heartbeat."""
    from control import netlink
    from dataplane import abi, xsk
    with in_netns(topo.node):
        program = xsk.SteeringProgram()
        try:
            pair = netlink.ensure_upcall_pair("tr0", abi.lib.XSKP_UPCALL_MTU) if mode == "upcall" else None
            program.prepare("tr0", "transport", upcall_pair=pair)
            program.add_frontend(NODE, NODE_PORT, "tcp", "transport")
            assert program.attach("tr0", mode=mode) == mode
            if mode == "upcall":
                program.attach_fast_path("tr0")
                flows, config = program.fast_tables()
                config[0]["flow_mask"] = flows.shape[0] - 1
                config[0]["alive_until_ns"] = time.monotonic_ns() + 60 * 10**9
            before = program.counters()
            send()
            time.sleep(0.2)
            after = program.counters()
        finally:
            program.close()
            if mode == "upcall":
                netlink.remove_upcall_pair("tr0")
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def _tagged_syn_from_client(lab, topo):
    """A SYN tagged VLAN 10 in its data, sent on the client's eth0 with a packet socket."""
    code = ("import socket\nfrom scapy.all import Ether, Dot1Q, IP, TCP\n"
            f"f = bytes(Ether(dst='{topo.transport.mac}', src='{topo.client_if.mac}') / Dot1Q(vlan=10)"
            f" / IP(src='{CLIENT}', dst='{NODE}') / TCP(sport=40000, dport={NODE_PORT}, flags='S'))\n"
            "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind(('eth0', 0)); s.send(f)")
    lab.run(topo.client, [f"{REPO}/.venv/bin/python", "-c", code])


@pytest.mark.parametrize("mode", ["skb", "native"])
def test_a_syn_tagged_in_its_data_goes_to_the_kernel(mode):
    """A SYN tagged VLAN 10 (tag in the data) to a NodePort is passed to the kernel, counted
    STEER_PASS_VLAN, never redirected, in generic and native mode."""
    from lab import Lab, forwarder_lab
    with Lab("xvlan") as lab:
        topo = forwarder_lab(lab)
        counted = _counted(lab, topo, mode, lambda: _tagged_syn_from_client(lab, topo))
    assert counted.get("STEER_PASS_VLAN") == 1, counted
    assert not any(k.startswith("STEER_REDIRECT") for k in counted), counted


def test_in_upcall_mode_a_syn_tagged_in_its_data_goes_to_the_kernel():
    """Upcall mode: the kernel moves an in-data tag into skb metadata before tc, and the tc
    program leaves tagged frames to the kernel: nothing is steered."""
    from lab import Lab, forwarder_lab
    with Lab("xvlan") as lab:
        topo = forwarder_lab(lab)
        counted = _counted(lab, topo, "upcall", lambda: _tagged_syn_from_client(lab, topo))
    assert counted.get("FAST_PASS_NO_MATCH", 0) >= 1, counted
    assert not any(k.startswith("STEER_REDIRECT") for k in counted), counted


@pytest.mark.parametrize("mode", [
    pytest.param("skb", marks=pytest.mark.xfail(strict=True, reason=METADATA_TAG_INVISIBLE)),
    pytest.param("native", marks=pytest.mark.xfail(strict=True, reason=METADATA_TAG_INVISIBLE)),
    "upcall"])
def test_a_syn_whose_tag_travels_in_skb_metadata_goes_to_the_kernel(mode, tmp_path):
    """The client's tc pushes VLAN 10 into skb->vlan_tci (as a VLAN device with tx offload does);
    the node's steering program must not steer the connect() SYN to the NodePort."""
    from lab import Lab, forwarder_lab
    clang = shutil.which("clang")
    if clang is None:
        pytest.skip("clang is needed to build the VLAN-pushing tc program")
    src, obj = tmp_path / "vlan_push.bpf.c", tmp_path / "vlan_push.bpf.o"
    src.write_text(VLAN_PUSH_BPF)
    multiarch = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True).stdout.strip()
    subprocess.run([clang, "-O2", "-g", "-target", "bpf", f"-I/usr/include/{multiarch}", "-c", str(src),
                    "-o", str(obj)], check=True)
    with Lab("xvlan") as lab:
        topo = forwarder_lab(lab)
        lab.run(topo.client, ["tc", "qdisc", "add", "dev", "eth0", "clsact"])
        lab.run(topo.client, ["tc", "filter", "add", "dev", "eth0", "egress", "bpf", "da", "obj", str(obj),
                              "sec", "tc"])
        connect = ("import socket\ns = socket.socket(); s.settimeout(0.3)\n"
                   f"try: s.connect(('{NODE}', {NODE_PORT}))\nexcept OSError: pass")
        counted = _counted(lab, topo, mode,
                           lambda: lab.run(topo.client, [f"{REPO}/.venv/bin/python", "-c", connect]))
    assert not any(k.startswith("STEER_REDIRECT") for k in counted), counted
