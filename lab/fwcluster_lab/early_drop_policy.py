"""The lab's `early_drop` agent setting (with FWLAB_EARLY_DROP=1 in the
environment of `lab up` or of the lab tests): the early chain on, with the
slow path an operator of this lab would list (docs/dataplane.md, "Early drop").

The agent cannot know the NAT and helper policies beside its tables, so the
configuration names the traffic whose owner is not given by its own hash:

- the helper servers' data connections (the first server runs the FTP and
  TFTP servers of the helper tests): their server side is an ephemeral port
  (passive listeners, active connects, TFTP transfer ports), and a RELATED
  data connection carries its master's bucket, not its own;
- with `nat`, the port forwards' target (nat_policy.py): its replies carry
  the translated tuple while the connection was hashed on the original
  (TCP and UDP port 7001, FTP 21, ICMP echo).

Replies to SNAT and masquerade are to a cluster IP, a local address: the
early chain always leaves those to the cluster chain.
"""

from __future__ import annotations

from typing import Any

from .nat_policy import DNAT_TARGET_PORT, FTP_PORT
from .topology import Topology

EPHEMERAL_PORTS = "32768-60999"  # Linux's default ip_local_port_range


def early_drop(topo: Topology) -> dict[str, Any]:
    server = topo.servers[0]
    addresses = [str(server.links[0].address.ip)]
    if server.address6 is not None:
        addresses.append(str(server.address6))
    slow: list[dict[str, Any]] = [
        {"network": a, "protocol": proto, "ports": EPHEMERAL_PORTS}
        for a in addresses
        for proto in ("tcp", "udp")
    ]
    if topo.nat:
        target = addresses[0]
        slow += [
            {"network": target, "protocol": "tcp", "ports": DNAT_TARGET_PORT},
            {"network": target, "protocol": "udp", "ports": DNAT_TARGET_PORT},
            {"network": target, "protocol": "tcp", "ports": FTP_PORT},
            {"network": target, "protocol": "icmp"},
        ]
    return {"enabled": True, "slow_path": slow}
