"""Network-namespace topologies for tests, the demo and benchmarks (see lab/netns.py)."""
from lab.netns import (ClusterLab, ForwarderLab, Iface, Lab, LabError, Node, Pod, cleanup_stale,
                       cluster_lab, forwarder_lab, list_namespaces)

__all__ = ["ClusterLab", "ForwarderLab", "Iface", "Lab", "LabError", "Node", "Pod", "cleanup_stale",
           "cluster_lab", "forwarder_lab", "list_namespaces"]
