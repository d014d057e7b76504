"""Names, paths and addresses of the test hosts: no I/O here.

The data-plane wiring (outside, inside and sync bridges in a switch
namespace, firewall node namespaces, a client and a server) is the lab's own
topology (fwcluster_lab.topology), built with our prefix `fwh-` so test hosts
and a developer's lab (`fwl-`) can exist side by side. On top of it comes a
management network for SSH from the controller in the root namespace:
a `mgmt` bridge in the switch namespace, one veth from the root namespace
(`fwh-mgmt`, 198.18.0.1/24) and a `mgmt0` link in every node (198.18.0.1N).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

from fwcluster_lab.topology import Host, Topology, build_topology

PREFIX = "fwh-"
REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "testhosts"
RUN_DIR = Path("/run/fwcluster-testhosts")
SSH_DIR = CACHE / "ssh"
SSH_KEY = SSH_DIR / "id_ed25519"

MGMT_NET = ipaddress.IPv4Network("198.18.0.0/24")
MGMT_CONTROLLER = ipaddress.IPv4Interface("198.18.0.1/24")
MGMT_BRIDGE = "mgmt"
MGMT_ROOT_IF = PREFIX + "mgmt"  # the controller's side, in the root namespace
MGMT_SW_IF = "ctl-mgmt"  # its peer, a port of the mgmt bridge
MGMT_NODE_IF = "mgmt0"
MGMT_HOST_BASE = 10  # fw1 is 198.18.0.11, like its other addresses


@dataclasses.dataclass(frozen=True)
class NodeLayout:
    """One firewall test host: its lab host plus what booting it needs."""

    host: Host
    mgmt_address: ipaddress.IPv4Interface
    mgmt_sw_if: str  # its management port on the mgmt bridge
    dir: Path  # upper, work and merged overlay directories live here

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def ns(self) -> str:
        return self.host.ns

    @property
    def upper(self) -> Path:
        return self.dir / "upper"

    @property
    def work(self) -> Path:
        return self.dir / "work"

    @property
    def merged(self) -> Path:
        return self.dir / "merged"

    @property
    def log(self) -> Path:
        return RUN_DIR / f"{self.name}.console.log"


def topology(nodes: int) -> Topology:
    return build_topology(nodes=nodes, clients=1, servers=1, prefix=PREFIX)


def node_layouts(topo: Topology, cache: Path = CACHE) -> list[NodeLayout]:
    out = []
    for i, host in enumerate(topo.nodes, start=1):
        addr = ipaddress.IPv4Interface(
            f"{MGMT_NET.network_address + MGMT_HOST_BASE + i}/{MGMT_NET.prefixlen}"
        )
        out.append(NodeLayout(host, addr, f"{host.name}-mgmt", cache / "nodes" / host.name))
    return out
