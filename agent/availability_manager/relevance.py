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

from collections.abc import Callable

from .connection import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Connection

SYNCED_PROTOCOLS = frozenset({PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_ICMPV6})


def synced_connections(
    protocols: frozenset[int] = SYNCED_PROTOCOLS, mark_mask: int = 0
) -> Callable[[Connection], bool]:
    """The predicate: of one of `protocols` and, unless `mark_mask` is 0 (no
    data plane classifies: the simulator, tests), with a bucket in the mark."""
    protocols = frozenset(protocols)
    if not mark_mask:

        def by_protocol(conn: Connection) -> bool:
            return conn.proto in protocols

        return by_protocol

    def classified(conn: Connection) -> bool:
        return conn.proto in protocols and bool(conn.mark & mark_mask)

    return classified


default_is_relevant = synced_connections()
