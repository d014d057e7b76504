"""The early decision: drop foreign packets before conntrack sees them.

Every node receives every frame sent to a cluster MAC and owns 1/N of the
connections. The cluster chain (nft_ruleset.py, prerouting -150) decides
after conntrack (-200), so a non-owner looks up, allocates and frees a
conntrack entry for each packet it then drops. The early chain runs at
prerouting priority -300 (raw): after defragmentation (-400), so it sees
whole datagrams, and before conntrack. It computes the same oriented hash as
the cluster chain and drops a packet whose bucket is not owned, but only for
the packets where that hash provably equals the bucket the cluster chain
would decide by (the conntrack mark of their connection, or the hash of a
NEW packet):

* forwarded packets between two different zones (the orientation map knows
  both directions of every such pair, so a reply hashes like its original);
* of a protocol hashed on its own tuple: TCP, UDP, SCTP, DCCP, UDP-Lite and
  ICMP/ICMPv6 echo;
* not to or from a `slow_path` entry of the configuration.

Everything else passes untouched and is decided by the cluster chain as
before (the slow path): packets to a local address (replies to SNAT and
masquerade to a cluster IP, replies to the node's own connections, traffic to
the cluster IPs including port forwards' first legs, neighbour discovery),
ICMP errors and other protocols, hairpin traffic within one zone, and
whatever the operator lists in `slow_path`: the DNAT targets (their replies
carry the translated tuple, the connection was hashed on the original), SNAT
pools that are not local addresses, and the servers of connection-tracking
helpers (their related data connections inherit the master's bucket). The
agent cannot know the operator's NAT and helper policy, so the early chain is
off by default; docs/dataplane.md ("Early drop") gives the proof and the
trade-off. The clusterdev backend applies the same rules (switch and
slow_path) in its kernel receive handler, before the IP stack
(kmod/clusterdev/clusterdev_early.c, docs/clusterdev.md).
"""

from __future__ import annotations

import dataclasses
import ipaddress

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PORT_PROTOCOLS = ("tcp", "udp", "sctp", "dccp", "udplite")
PROTOCOLS = (*PORT_PROTOCOLS, "icmp", "icmpv6")  # ICMP: echo of a port-forwarded ping
PRIORITY = -300  # after nf_defrag (-400), before conntrack (-200)


@dataclasses.dataclass(frozen=True)
class SlowPathEntry:
    """Traffic from or to `network` (any address if None), of `protocol` (any
    if None), from or to a port in `ports` (any if None): it passes the early
    chain and is decided after conntrack."""

    network: IPNetwork | None = None
    protocol: str | None = None
    ports: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.network is None and self.ports is None:
            raise ValueError("a slow_path entry needs a network, ports, or both")
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            raise ValueError(f"slow_path protocol {self.protocol!r}: one of {', '.join(PROTOCOLS)}")
        if self.ports is not None:
            if self.protocol not in PORT_PROTOCOLS:
                raise ValueError(f"slow_path ports need one of {', '.join(PORT_PROTOCOLS)}")
            lo, hi = self.ports
            if not 1 <= lo <= hi <= 65535:
                raise ValueError(f"slow_path ports {lo}-{hi}: a range within 1-65535")

    def rules(self) -> list[str]:
        """Match expressions (without the verdict): one per direction."""
        out = []
        for side in ("saddr", "daddr"):
            parts = []
            if self.network is not None:
                fam = "ip" if self.network.version == 4 else "ip6"
                parts.append(f"{fam} {side} {self.network}")
            if self.protocol is not None:
                parts.append(f"meta l4proto {self.protocol}")
            if self.ports is not None:
                lo, hi = self.ports
                port = str(lo) if lo == hi else f"{lo}-{hi}"
                parts.append(f"th {'sport' if side == 'saddr' else 'dport'} {port}")
            out.append(" ".join(parts))
        return out


@dataclasses.dataclass(frozen=True)
class EarlyDrop:
    """`enabled`: render the early chain; `slow_path`: what it must leave to
    the cluster chain beyond the classes it always leaves (see above)."""

    enabled: bool = False
    slow_path: tuple[SlowPathEntry, ...] = ()


def parse_slow_path(items: object) -> tuple[SlowPathEntry, ...]:
    """From the configuration's list of mappings {network, protocol, ports};
    raises ValueError naming the entry and what is wrong."""
    if not isinstance(items, list):
        raise ValueError(f"slow_path: expected a list, got {items!r}")
    out = []
    for i, item in enumerate(items):
        where = f"slow_path[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected a mapping, got {item!r}")
        unknown = sorted(set(item) - {"network", "protocol", "ports"})
        if unknown:
            raise ValueError(f"{where}.{unknown[0]}: unknown key (network, protocol, ports)")
        try:
            net = item.get("network")
            network = ipaddress.ip_network(str(net), strict=True) if net is not None else None
        except ValueError:
            raise ValueError(f"{where}.network: an address or network, got {net!r}") from None
        proto = item.get("protocol")
        if proto is not None and not isinstance(proto, str):
            raise ValueError(f"{where}.protocol: a protocol name, got {proto!r}")
        try:
            out.append(SlowPathEntry(network, proto, _ports(item.get("ports"))))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return tuple(out)


def _ports(value: object) -> tuple[int, int] | None:
    """A port (21) or a range ("30000-30100")."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, str):
        lo, sep, hi = value.partition("-")
        if lo.strip().isdigit() and (not sep or hi.strip().isdigit()):
            return int(lo), int(hi) if sep else int(lo)
    raise ValueError(f"ports: a port or a range like 30000-30100, got {value!r}")
