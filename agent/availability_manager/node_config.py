"""`NodeConfig`: everything a Node is built from, validated on construction."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from . import wire
from .connection import Connection
from .conntrack_sync import MAX_CACHE_ENTRIES
from .crypto import MAX_SENDERS, Keyring
from .relevance import SYNCED_PROTOCOLS, SyncFilter, synced_connections
from .types import MAX_NODE_ID, ClusterSettings, NodeId

JOIN_TIMEOUT = 3.0  # seconds: join anyway if a peer's table never arrives


@dataclasses.dataclass(frozen=True)
class NodeConfig:
    """Everything a Node is built from. Validated on construction."""

    node_id: NodeId
    settings: ClusterSettings
    keyring: Keyring
    incarnation: int
    initial_counter: int
    heartbeat_interval: float = 0.05
    heartbeat_misses: int = 3
    weight: int = 1
    protocols: frozenset[int] = SYNCED_PROTOCOLS
    # the bits of the conntrack mark that hold the bucket: an entry is synced
    # only with a bucket there (0: marks not looked at; see relevance.py)
    mark_mask: int = 0
    join_timeout: float = JOIN_TIMEOUT
    forget_after: float = 60.0  # seconds a dead peer's cache is kept
    # The highest wire version this node speaks: below wire.WIRE_VERSION only
    # to run exactly as an older release does (rolling-upgrade tests).
    max_wire_version: int = wire.WIRE_VERSION
    # Send a copy of the heartbeat (and range state) to the zone links too
    # (Destination.ZONES) while the sync network is in doubt (Node module
    # docstring, "Zone heartbeats"); only when the driver has zone links.
    zone_heartbeats: bool = False
    # What the operator chose not to sync (relevance.py), and how old an entry
    # must be before it is synced (conntrack_sync.py; 0: at once).
    sync_filter: SyncFilter = dataclasses.field(default_factory=SyncFilter)
    sync_delay: float = 0.0
    # The cluster's node ids (this one included), if configured: datagrams
    # sealed under any other id are dropped before any state is kept.
    members: frozenset[NodeId] | None = None
    # Per-sender state kept at most (replay windows; every per-peer table
    # above is keyed by senders that passed that gate), and entries cached per
    # peer: what one key holder inventing ids or entries can make us hold.
    max_peers: int = MAX_SENDERS
    max_cache_entries: int = MAX_CACHE_ENTRIES
    # Payloads of our own stream kept for repairs (a cluster-wide setting: a
    # receiver further behind than this skips and resyncs). Smaller only in
    # the simulator, so that a short partition outruns it.
    rb_buffer_size: int = 16384
    # Make-before-break handovers (ranges.py): a giver forwards a bucket until
    # this long after the taker's claim, and the taker starts at that instant
    # (wall clock, set with Node.set_clock_offset). 0: break-before-make, the
    # taker starts when it hears the release.
    handover_delay: float = 0.0
    # Switch instants rounded up to a multiple of this many seconds of wall
    # clock (0: exact): the nftables data plane compares whole seconds.
    handover_quantum: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.node_id <= MAX_NODE_ID:
            raise ValueError(f"node_id must be a 32-bit unsigned integer, got {self.node_id}")
        if not 0 <= self.incarnation < 1 << 64:
            raise ValueError(f"incarnation must be a u64, got {self.incarnation}")
        if not 0 <= self.initial_counter < 1 << 64:
            raise ValueError(f"initial_counter must be a u64, got {self.initial_counter}")
        if not 0.001 <= self.heartbeat_interval <= 10.0:
            raise ValueError(
                f"heartbeat_interval must be 0.001..10 s, got {self.heartbeat_interval}"
            )
        if not 1 <= self.heartbeat_misses <= 100:
            raise ValueError(f"heartbeat_misses must be 1..100, got {self.heartbeat_misses}")
        if not 1 <= self.weight <= 1000:
            raise ValueError(f"weight must be 1..1000, got {self.weight}")
        if not self.protocols or not all(0 <= p <= 255 for p in self.protocols):
            raise ValueError("protocols must be a non-empty set of IP protocol numbers")
        if not 0 <= self.mark_mask <= 0xFFFFFFFF:
            raise ValueError(f"mark_mask must be a 32-bit unsigned integer, got {self.mark_mask}")
        if not 0 <= self.sync_delay <= 3600:
            raise ValueError(f"sync_delay must be 0..3600 s, got {self.sync_delay}")
        if not 0.0 <= self.handover_delay <= 5.0:
            raise ValueError(f"handover_delay must be 0..5 s, got {self.handover_delay}")
        if not 0.0 <= self.handover_quantum <= 5.0:
            raise ValueError(f"handover_quantum must be 0..5 s, got {self.handover_quantum}")
        if self.join_timeout <= 0 or self.forget_after <= 0:
            raise ValueError("join_timeout and forget_after must be positive")
        if self.members is not None and (
            self.node_id not in self.members or not all(0 <= m <= MAX_NODE_ID for m in self.members)
        ):
            raise ValueError("members must be node ids and include this node's own id")
        if not 1 <= self.rb_buffer_size <= 1 << 20:
            raise ValueError(f"rb_buffer_size must be 1..{1 << 20}, got {self.rb_buffer_size}")
        if not 1 <= self.max_peers <= 1 << 20 or self.max_cache_entries < 1:
            raise ValueError("max_peers must be 1..1048576 and max_cache_entries at least 1")
        if not wire.WIRE_VERSION_MIN <= self.max_wire_version <= wire.WIRE_VERSION:
            raise ValueError(
                f"max_wire_version must be {wire.WIRE_VERSION_MIN}..{wire.WIRE_VERSION}, "
                f"got {self.max_wire_version}"
            )

    def relevance(self) -> Callable[[Connection], bool]:
        """Which local entries this node syncs (relevance.py decides)."""
        return synced_connections(self.protocols, self.mark_mask, self.sync_filter)
