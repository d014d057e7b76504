"""Background traffic from the client to the server through the cluster, with
the lab's generator (fwcluster_lab.traffic_control), and its exact counters.

Kinds of traffic (`--to`), each its own background client with its own
summary, so several run at once:
- `ipv4`: client -> server (203.0.113.100:7001), no translation;
- `dnat`: client -> the outside cluster address's port forward
  (192.0.2.1:8001, which the lab inventory forwards to the server's 7001);
- `masquerade`: server -> client (192.0.2.100:7001, the traffic server `up`
  starts on the client too), leaving from the outside cluster address with
  the forwarding node's NAT ports (the lab inventory masquerades inside ->
  outside).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fwcluster_lab import traffic_control
from fwcluster_lab.build import TRAFFIC_PORT
from fwcluster_lab.netns import LabError
from fwcluster_lab.state import LabState
from fwcluster_lab.traffic_control import Target
from fwcluster_lab.traffic_stats import human_line

from .hosts import load_state


def _state() -> Any:
    state = load_state()
    if state is None:
        raise LabError("no test hosts are up: run `python -m testhosts up`")
    return state


KINDS = ("ipv4", "dnat", "masquerade")
# The port forward on the outside cluster address (inventories/lab's
# dataplane_dnat): the lab's own NAT port, so the two never disagree.
DNAT_PORT = 8001


def target(state: LabState, kind: str) -> Target:
    """Where a client of this kind runs and what it connects to."""
    topo = state.topology()
    client, server = topo.clients[0], topo.servers[0]
    if kind == "ipv4":
        return traffic_control.default_target(state)
    if kind == "dnat":
        return Target(client.name, server.name, str(topo.zones[0].cluster_ip.ip), DNAT_PORT)
    if kind == "masquerade":
        return Target(server.name, client.name, str(client.links[0].address.ip), TRAFFIC_PORT)
    raise LabError(f"unknown kind of traffic {kind!r}: one of {', '.join(KINDS)}")


def start(
    tcp: int, udp: int, ping: int, interval_ms: int, drain: float | None = None, kind: str = "ipv4"
) -> dict[str, Any]:
    """`drain`: seconds the generator waits for late answers once stopped."""
    options = ["--tcp", str(tcp), "--udp", str(udp), "--ping", str(ping)]
    options += ["--interval-ms", str(interval_ms)]
    if drain is not None:
        options += ["--drain", str(drain)]
    state = _state()
    return traffic_control.start(
        state, options, name=traffic_control.client_name(kind), target=target(state, kind)
    )


def stop(json_path: str | None = None, kind: str = "ipv4") -> dict[str, Any]:
    if kind not in KINDS:
        raise LabError(f"unknown kind of traffic {kind!r}: one of {', '.join(KINDS)}")
    summary = traffic_control.stop_background(_state(), name=traffic_control.client_name(kind))
    if json_path:
        Path(json_path).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def counts_line(summary: dict[str, Any]) -> str:
    """The connection counts a scenario prints: measured, lost, duplicates."""
    tcp = summary.get("tcp", {})
    return (
        f"connections: {summary.get('connections')} measured, "
        f"{tcp.get('established')} established, {summary.get('lost')} lost, "
        f"{summary.get('lost_packets')} packets lost, {summary.get('duplicates')} duplicates, "
        f"longest stall {summary.get('longest_stall_ms')} ms | {human_line(summary)}"
    )
