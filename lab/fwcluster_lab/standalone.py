"""Forwarding plumbing for a node when no agent runs (`lab up --no-agent`).

It is the part of the cluster data plane that does not depend on buckets:
the shared cluster IPs and multicast MAC on the node's zone interfaces, ARP
answers that carry the cluster MAC (so clients and servers send to a MAC the
bridges flood), and the pkttype rewrite without which the kernel drops a
frame addressed to a multicast MAC instead of routing it. No bucket check: a
node with this plumbing forwards everything, so `--no-agent` keeps only fw1's
links up. Bringing a second one up (`revive fw2`) makes both forward every
packet, which is how the lab produces duplicates on purpose.
"""

from __future__ import annotations

from .netns import ip, ip_batch, nft
from .topology import Host, Topology

TABLE = "fwl_standalone"


def ruleset(topo: Topology) -> str:
    arp_rules = "\n".join(
        f"    arp saddr ip {z.cluster_ip.ip} arp saddr ether set {z.cluster_mac}"
        for z in topo.zones
    )
    pkttype_rules = "\n".join(
        f"    ether daddr {z.cluster_mac} meta pkttype set host" for z in topo.zones
    )
    # The tables are declared empty first and then deleted, so loading twice replaces.
    return f"""
table arp {TABLE}
delete table arp {TABLE}
table ip {TABLE}
delete table ip {TABLE}
table arp {TABLE} {{
  chain arp_out {{
    type filter hook output priority 0; policy accept;
{arp_rules}
  }}
}}
table ip {TABLE} {{
  chain cluster_mac_in {{
    type filter hook prerouting priority -150; policy accept;
{pkttype_rules}
  }}
}}
"""


def add_cluster_addresses(topo: Topology, node: Host) -> None:
    """Cluster IPs (after the node IP, so that one stays primary) and cluster MACs."""
    ip_batch(node.ns, [f"address add {z.cluster_ip} dev {z.node_ifname}" for z in topo.zones])
    # Not in the batch: iproute2 6.1 silently ends a batch after a `maddress` line.
    for z in topo.zones:
        ip(node.ns, "maddress", "add", z.cluster_mac, "dev", z.node_ifname)


def install(topo: Topology, node: Host) -> None:
    add_cluster_addresses(topo, node)
    nft(node.ns, ruleset(topo))
