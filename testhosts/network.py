"""Create and remove the namespaces, bridges and links of the test hosts.

The data-plane part follows the lab's topology exactly (same bridges, port
names, interface names and addresses), so everything the lab documents about
addresses holds here too. Nodes get their addresses from outside, before they
boot: the container shares the namespace and keeps what it finds (there is no
network manager in the root), and the agent adds the cluster addresses itself.
"""

from __future__ import annotations

from fwcluster_lab import build
from fwcluster_lab.netns import ip_batch, list_namespaces, ns_run, run
from fwcluster_lab.state import LabState
from fwcluster_lab.topology import Host, Topology

from .layout import (
    MGMT_BRIDGE,
    MGMT_CONTROLLER,
    MGMT_NODE_IF,
    MGMT_ROOT_IF,
    MGMT_SW_IF,
    PREFIX,
    NodeLayout,
)


def create_fabric(state: LabState, topo: Topology, nodes: list[NodeLayout]) -> None:
    """The lab's cabling (build.make_fabric) plus the management network: a
    bridge, the controller's link from the root namespace, a link per node."""
    build.make_fabric(state, topo, extra_bridges=(MGMT_BRIDGE,))
    wire_controller(topo)
    for node in nodes:
        wire_management(topo, node)


def wire_controller(topo: Topology) -> None:
    """The controller's management link: root namespace <-> mgmt bridge."""
    run(["ip", "link", "add", MGMT_ROOT_IF, "type", "veth", "peer", "name", MGMT_SW_IF])
    run(["ip", "link", "set", MGMT_SW_IF, "netns", topo.switch_ns])
    ip_batch(topo.switch_ns, [f"link set {MGMT_SW_IF} master {MGMT_BRIDGE} up"])
    run(["ip", "address", "add", str(MGMT_CONTROLLER), "dev", MGMT_ROOT_IF])
    run(["ip", "link", "set", MGMT_ROOT_IF, "up"])


def wire_management(topo: Topology, node: NodeLayout) -> None:
    """A node's management link: its namespace <-> mgmt bridge, addressed."""
    ip_batch(
        topo.switch_ns,
        [
            f"link add {node.mgmt_sw_if} type veth peer name {MGMT_NODE_IF} netns {node.ns}",
            f"link set {node.mgmt_sw_if} master {MGMT_BRIDGE} up",
        ],
    )
    ip_batch(
        node.ns,
        [f"address add {node.mgmt_address} dev {MGMT_NODE_IF}", f"link set {MGMT_NODE_IF} up"],
    )


def base_address_lines(host: Host, node: NodeLayout | None) -> list[str]:
    """The host's own addresses (no cluster address): a cold node."""
    lines = ["link set lo up"]
    for link in host.links:
        lines.append(f"address add {link.address} dev {link.ifname}")  # first: primary
    if node is not None:
        lines.append(f"address add {node.mgmt_address} dev {MGMT_NODE_IF}")
    return lines


def link_lines(host: Host, node: NodeLayout | None, up: bool) -> list[str]:
    names = [link.ifname for link in host.links]
    if node is not None:
        names.append(MGMT_NODE_IF)
    return [f"link set {n} {'up' if up else 'down'}" for n in names]


def set_data_links(host: Host, up: bool) -> None:
    """Data-plane links only: a powered-off node keeps no management link either,
    but management is separate so that `status` can tell the two apart."""
    ip_batch(host.ns, link_lines(host, None, up))


def reset_node_namespace(host: Host, node: NodeLayout) -> None:
    """What a power cycle does to a machine's network state: nothing survives.

    The namespace outlives the container, so the agent's tables, conntrack
    entries and cluster addresses are removed here before the node boots again."""
    ns_run(host.ns, ["nft", "flush", "ruleset"])
    ns_run(host.ns, ["conntrack", "-F"], check=False)
    names = [link.ifname for link in host.links] + [MGMT_NODE_IF]
    lines = [f"address flush dev {n}" for n in names]
    ip_batch(host.ns, lines)
    # Nodes have no routes of their own: the cold-node addresses are all there is.
    ip_batch(host.ns, [line for line in base_address_lines(host, node) if line != "link set lo up"])


def leftover_namespaces() -> list[str]:
    return [ns for ns in list_namespaces() if ns.startswith(PREFIX)]


def remove_controller_link() -> bool:
    """Delete the root-namespace end of the management link if it still exists."""
    proc = run(["ip", "link", "del", MGMT_ROOT_IF], check=False)
    return proc.returncode == 0
