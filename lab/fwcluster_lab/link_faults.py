"""One link of one node fails while the node itself stays up.

Two places a link can fail, both on the veth pair between a node and its
switch (a bridge in the switch namespace):
- `node`: the node's own interface is set down (an operator's `ip link set
  down`, a driver reset); the agent sees IFF_UP cleared.
- `switch`: the switch port is set down (a cable pulled, a switch port shut);
  the node's interface stays administratively up but loses its carrier (a
  veth reports carrier only while its peer is up).
Unlike faults.kill, nothing else changes: the agent keeps running and keeps
its other links, so it must notice on its own and step back.
"""

from __future__ import annotations

from .netns import LabError, ip
from .state import LabState

WHERE = ("node", "switch")


def set_link(state: LabState, node: str, bridge: str, up: bool, where: str = "node") -> None:
    """Set one link of `node` (the one on `bridge`: outside, inside, sync) up
    or down, at the node's interface or at the switch port."""
    if where not in WHERE:
        raise LabError(f"link: where must be one of {', '.join(WHERE)}, got {where!r}")
    topo = state.topology()
    host = topo.node(node)
    link = host.link(bridge)
    ns, ifname = (host.ns, link.ifname) if where == "node" else (topo.switch_ns, link.sw_ifname)
    ip(ns, "link", "set", ifname, "up" if up else "down")
