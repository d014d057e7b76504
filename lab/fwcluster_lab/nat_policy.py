"""The user's NAT policy of a NAT lab (`lab up --nat`): one nftables table per
node, beside the agent's own, as an operator (or the Ansible dataplane role)
would load it. The agent never touches it.

What it translates (inside hosts are 203.0.113.0/24, outside 192.0.2.0/24):

- SNAT: inside -> outside connections leave from the outside cluster
  address 192.0.2.1, with ports (ICMP echo ids) from this node's own range.
- Masquerade: inside -> 198.18.0.0/24 connections are masqueraded, which
  takes out0's address in that subnet: the cluster address 198.18.0.1, the
  only one the nodes have there. Same per-node range.
- DNAT: 192.0.2.1:8001 (TCP and UDP) and ICMP echo to 192.0.2.1 are
  forwarded to the first server, 203.0.113.100:7001; 192.0.2.1:21 (FTP) to
  its port 21 (the FTP helper follows: its PASV replies name 203.0.113.100
  and are rewritten to the cluster address).

Per-node port ranges: node i of the lab (fw1 is 1) translates only to
ports NAT_PORT_BASE + (i-1)*NAT_PORTS_PER_NODE ... + NAT_PORTS_PER_NODE - 1.
Two live nodes choose ports concurrently and see each other's choices only
after the sync (or never, for a connection that has not been synced yet when
they choose), so from one shared range both could give two connections to
the same destination the same translated tuple: their replies could not be
told apart. Disjoint ranges make every translated tuple name exactly one
node's connection; after a takeover the new owner keeps the inherited
connections' ports (injected with the connection) and its kernel's
uniqueness check, which covers injected entries too, keeps its own new
choices off them. The ranges lie below the kernel's ephemeral port range
(32768-60999) so no local socket of a node ever sits on a translated port.

The guard chain (forward_reply_guard): a reply of a port-forwarded UDP connection reaching a node
that does not own the connection is a NEW packet there, hashed on the
untranslated tuple into an unrelated bucket; the owner of that bucket would
forward it (a duplicate at the client) and keep a stray entry that collides
with the synced one on a later takeover. The forward target's replies never
start a connection, so the policy drops them when they would. (Replies to
SNAT and masquerade are covered by the agent's own input rule.)
"""

from __future__ import annotations

from .netns import nft
from .topology import MASQ_NET, Host, Topology

TABLE = "fwlab_nat"
NAT_PORT_BASE = 20000
NAT_PORTS_PER_NODE = 750  # 16 nodes: 20000-31999, below the ephemeral range
DNAT_PORT = 8001  # on the outside cluster address
DNAT_TARGET_PORT = 7001  # the traffic server's port
FTP_PORT = 21  # forwarded to the same port of the first server


def node_index(topo: Topology, node: Host) -> int:
    return topo.nodes.index(node) + 1


def port_range(index: int) -> tuple[int, int]:
    """The translated ports of node `index` (1-based): disjoint for every index."""
    if not 1 <= index <= 16:
        raise ValueError(f"node index must be 1..16, got {index}")
    lo = NAT_PORT_BASE + (index - 1) * NAT_PORTS_PER_NODE
    return lo, lo + NAT_PORTS_PER_NODE - 1


def ruleset(topo: Topology, node: Host) -> str:
    outside, inside = topo.zones
    out_if, in_if = outside.node_ifname, inside.node_ifname
    lo, hi = port_range(node_index(topo, node))
    cip = outside.cluster_ip.ip
    from_inside = f'oif "{out_if}" ip saddr {inside.cluster_ip.network}'
    to_cip = f'iif "{out_if}" ip daddr {cip}'
    target = topo.servers[0].links[0].address.ip
    protos = "meta l4proto { tcp, udp, icmp }"  # the range is the echo id's too
    chains = {
        "port_forward": (
            "type nat hook prerouting priority dstnat; policy accept;",
            f"{to_cip} meta l4proto {{ tcp, udp }} th dport {DNAT_PORT}"
            f" dnat to {target}:{DNAT_TARGET_PORT}",
            f"{to_cip} icmp type echo-request dnat to {target}",
            f"{to_cip} tcp dport {FTP_PORT} dnat to {target}:{FTP_PORT}",
        ),
        "forward_reply_guard": (
            "type filter hook prerouting priority -160; policy accept;",
            f'iif "{in_if}" ip saddr {target} udp sport {DNAT_TARGET_PORT} ct state new drop',
        ),
        "source_nat": (
            "type nat hook postrouting priority srcnat; policy accept;",
            f"{from_inside} ip daddr {MASQ_NET} {protos} masquerade to :{lo}-{hi}",
            f"{from_inside} {protos} snat to {cip}:{lo}-{hi}",
        ),
    }
    out = [f"table ip {TABLE} {{}}", f"delete table ip {TABLE}", f"table ip {TABLE} {{"]
    for name, rules in chains.items():
        out.append(f"  chain {name} {{")
        out += [f"    {r}" for r in rules]
        out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"


def install(topo: Topology, node: Host) -> None:
    nft(node.ns, ruleset(topo, node))
