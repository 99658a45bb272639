"""Pins a handover left for an interface that is gone (root): the next steering program removes
them at start, so that their programs and flow tables do not stay alive for nobody; the pins
of interfaces still there are kept for the next attach to take over."""
import os
import subprocess

from xsk_test_support import LAB_PREFIX, in_netns, needs_native, needs_root

pytestmark = [needs_root, needs_native]


def test_a_new_program_unpins_what_a_handover_left_for_an_interface_that_is_gone(bpf_pin_dir):
    from dataplane import xsk
    from lab import Lab, forwarder_lab
    with Lab(LAB_PREFIX + "s") as lab:
        topo = forwarder_lab(lab)
        with in_netns(topo.node):
            netns = str(os.stat("/proc/self/ns/net").st_ino)
            tr0, gw0 = xsk.ifindex_of("tr0"), xsk.ifindex_of("gw0")
            first = xsk.SteeringProgram(flow_entries=1024)
            assert first.pin_dir == bpf_pin_dir, first.pin_error
            first.attach("tr0", "transport", mode="native")
            first.attach("gw0", "gateway", mode="native")
            first.hold(1)
            first.release()                              # a handover: attached, pinned

            def pins(ifindex):
                return sorted(n for n in os.listdir(bpf_pin_dir) if n.split("-")[1:3] == [netns, str(ifindex)])

            left = pins(gw0)
            subprocess.run(["ip", "link", "del", "gw0"], check=True)
            second = xsk.SteeringProgram(flow_entries=1024)
            try:
                assert left and pins(gw0) == [] and sorted(second.stale_pins_removed) == left
                assert pins(tr0), "the pins of an interface still there were removed"
                second.attach("tr0", "transport", mode="native")    # takes the pinned program over
                assert xsk.attached_program("tr0")[1] == "native"
            finally:
                second.close()
            assert pins(tr0) == []
