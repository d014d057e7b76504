"""Which conntrack entries the cluster syncs: decided here and nowhere else.

An entry is synced when its protocol is one of the configured ones and, where
a data plane classifies the traffic (the daemon), when its mark carries a
bucket. Related entries (IPS_EXPECTED: an FTP data connection) are synced
too: the kernel copies the master's mark into them, so they carry their
master's bucket, and syncing them is what lets a transfer survive a
failover (the seed did not sync those). The node's own traffic (sync
datagrams, SSH to it) carries no bucket, so it is never synced.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable

from .connection import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Connection

SYNCED_PROTOCOLS = frozenset({PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_ICMPV6})


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclasses.dataclass(frozen=True)
class SyncFilter:
    """The operator's narrowing of what is synced (nothing by default)."""

    tcp_states: frozenset[int] | None = None  # None: every state
    ignore: tuple[Network, ...] = ()  # by the original tuple's source or destination

    def __post_init__(self) -> None:
        if self.tcp_states is not None and not all(0 <= s <= 255 for s in self.tcp_states):
            raise ValueError("tcp_states must be conntrack TCP state numbers")

    @property
    def narrows(self) -> bool:
        return self.tcp_states is not None or bool(self.ignore)

    def accepts(self) -> Callable[[Connection], bool]:
        """The filter as a predicate (built once: it runs for every event)."""
        states = self.tcp_states
        # (address length, network as int, mask as int): one AND and compare each
        nets = tuple(
            (n.max_prefixlen // 8, int(n.network_address), int(n.netmask)) for n in self.ignore
        )

        def ignored(addr: bytes) -> bool:
            value = int.from_bytes(addr, "big")
            return any(len(addr) == size and value & mask == net for size, net, mask in nets)

        def accepts(conn: Connection) -> bool:
            if states is not None and conn.proto == PROTO_TCP and conn.state not in states:
                return False
            return not nets or not (ignored(conn.orig.src) or ignored(conn.orig.dst))

        return accepts


def synced_connections(
    protocols: frozenset[int] = SYNCED_PROTOCOLS,
    mark_mask: int = 0,
    sync_filter: SyncFilter | None = None,
) -> Callable[[Connection], bool]:
    """The predicate: of one of `protocols` and, unless `mark_mask` is 0 (no
    data plane classifies: the simulator, tests), with a bucket in the mark;
    and accepted by `sync_filter` if one narrows it."""
    protocols = frozenset(protocols)
    if not mark_mask:

        def by_protocol(conn: Connection) -> bool:
            return conn.proto in protocols

        base = by_protocol
    else:

        def classified(conn: Connection) -> bool:
            return conn.proto in protocols and bool(conn.mark & mark_mask)

        base = classified
    if sync_filter is None or not sync_filter.narrows:
        return base  # the common case stays one call
    accepts = sync_filter.accepts()

    def filtered(conn: Connection) -> bool:
        return base(conn) and accepts(conn)

    return filtered


default_is_relevant = synced_connections()
