"""Faults the lab can inject: a node dies or comes back, the switch partitions
the sync or zone network, the sync network loses packets.

Partitions and loss live in one nftables table of the `bridge` family in the
switch namespace (`fwl_faults`), rebuilt whole from the state on every change,
so what is loaded is always exactly what state.json says. Partitions drop
frames between bridge ports; the links stay up, as when a switch or cable in
between fails, so nodes must notice by missing heartbeats, not by carrier.
Loss drops each frame a sync port would transmit with probability N%
(`numgen random`), independently per receiving node.
"""

from __future__ import annotations

import signal

from .build import set_links, start_agent
from .netns import LabError, nft, stop
from .state import LabState
from .topology import Topology

TABLE = "fwl_faults"
# Loaded in a node's own namespace while it is dead: drops every packet.
DEAD_TABLE = "fwl_dead"
PLANES = {"sync": ("sync",), "zone": ("outside", "inside")}


def _ports(topo: Topology, bridges: tuple[str, ...]) -> list[str]:
    return [link.sw_ifname for h in topo.hosts for link in h.links if link.bridge in bridges]


def _set(names: list[str]) -> str:
    return "{ " + ", ".join(f'"{n}"' for n in names) + " }"


def ruleset(state: LabState) -> str:
    topo = state.topology()
    partition_rules = []
    for part in state.partitions:
        bridges = PLANES[part["plane"]]
        group = [
            link.sw_ifname
            for name in part["nodes"]
            for link in topo.node(name).links
            if link.bridge in bridges
        ]
        rest = [p for p in _ports(topo, bridges) if p not in group]
        if group and rest:
            partition_rules.append(f"    iifname {_set(group)} oifname {_set(rest)} drop")
            partition_rules.append(f"    iifname {_set(rest)} oifname {_set(group)} drop")
    loss_rules = []
    if state.sync_loss_percent > 0:
        sync_ports = _ports(topo, PLANES["sync"])
        loss_rules.append(
            f"    oifname {_set(sync_ports)} numgen random mod 100 < {state.sync_loss_percent} drop"
        )
    nl = "\n"
    return f"""
table bridge {TABLE}
delete table bridge {TABLE}
table bridge {TABLE} {{
  chain partition {{
    type filter hook forward priority 0; policy accept;
{nl.join(partition_rules)}
  }}
  chain loss {{
    type filter hook forward priority 10; policy accept;
{nl.join(loss_rules)}
  }}
}}
"""


def apply(state: LabState) -> None:
    nft(state.topology().switch_ns, ruleset(state))
    state.save()


def _dead_ruleset(dead: bool) -> str:
    """Remove the dead node's drop-all table, and (dead=True) load it again."""
    script = f"table inet {DEAD_TABLE} {{}}\ndelete table inet {DEAD_TABLE}\n"
    if dead:
        script += f"""table inet {DEAD_TABLE} {{
  chain incoming {{
    type filter hook prerouting priority -500; policy drop;
  }}
  chain outgoing {{
    type filter hook output priority -500; policy drop;
  }}
}}
"""
    return script


def kill(state: LabState, node: str) -> None:
    """The node dies: its agent gets SIGKILL (no goodbye) and all its links go down.

    Between the agent's death and the links going down, the node first stops
    handling packets at all, in one nft transaction: links go down one after
    the other, and a kernel that still receives on one zone while the other is
    already down answers with ICMP net-unreachable, which a dead node never
    sends (and which the hosts would count against the cluster)."""
    host = state.topology().node(node)
    proc = state.procs.get(f"agent:{host.name}")
    if proc is not None:
        stop(proc, signal.SIGKILL)
        del state.procs[proc.what]
    nft(host.ns, _dead_ruleset(True))
    set_links(host, False)
    if host.name not in state.dead_nodes:
        state.dead_nodes.append(host.name)
    state.save()


def revive(state: LabState, node: str) -> None:
    """Links up again and, when the lab runs agents, a fresh agent process."""
    host = state.topology().node(node)
    nft(host.ns, _dead_ruleset(False))
    set_links(host, True)
    if host.name in state.dead_nodes:
        state.dead_nodes.remove(host.name)
    state.save()
    if state.agents:
        proc = state.procs.get(f"agent:{host.name}")
        if proc is None or not proc.alive():
            start_agent(state, host.name)


def partition(state: LabState, plane: str, nodes: list[str]) -> None:
    if plane not in PLANES:
        raise LabError(f"partition: plane must be one of {sorted(PLANES)}, got {plane!r}")
    topo = state.topology()
    names = [topo.node(n).name for n in nodes]  # validates every name before any change
    if not names:
        raise LabError("partition: name the node or nodes to cut off (--nodes fw1,fw2)")
    if len(set(names)) == len(topo.nodes) and plane == "sync":
        raise LabError("partition: the group would hold every node; nothing to cut")
    state.partitions.append({"plane": plane, "nodes": sorted(set(names))})
    apply(state)


def heal(state: LabState) -> None:
    state.partitions = []
    apply(state)


def loss(state: LabState, plane: str, percent: int) -> None:
    if plane != "sync":
        raise LabError("loss: only the sync network is supported")
    if not 0 <= percent <= 100:
        raise LabError(f"loss: percent must be 0..100, got {percent}")
    state.sync_loss_percent = percent
    apply(state)
