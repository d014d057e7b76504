"""The simulated kernel of one node: its conntrack table and its data plane.

Owns what the driver programmed, and when: the conntrack table (key ->
Connection) and the set of buckets whose NEW connections the data plane
accepts. `perform` applies the Node's data-plane events in the order they are
given, exactly as the daemon does against the real kernel, and keeps a record
of each act with its virtual time, so the invariants can check ordering (an
entry written before its bucket was claimed) after the fact.
"""

from __future__ import annotations

import dataclasses

from ..connection import Connection
from ..node_events import (
    ActiveBucketsChanged,
    DeleteConnections,
    InjectConnections,
    OwnedBucketsChanged,
)
from ..types import NodeId


@dataclasses.dataclass
class KernelStats:
    created: int = 0  # NEW connections the data plane accepted here
    injected: int = 0
    deleted: int = 0
    destroyed: int = 0  # connections that closed here
    programs: int = 0  # OwnedBucketsChanged performed


class Kernel:
    def __init__(self, node: NodeId) -> None:
        self.node = node
        self.table: dict[bytes, Connection] = {}
        self.owned: frozenset[int] = frozenset()
        # What the data plane forwards, if the node tells (ActiveBucketsChanged:
        # owned and claimed by nobody else); the owned set is the protocol's view.
        self.active: frozenset[int] = frozenset()
        # the last programming, with its timed switches (make-before-break):
        # what `forwards` reads
        self.programming = ActiveBucketsChanged(active=frozenset())
        # When each key was last written (created or injected) and when each
        # bucket was last claimed: what the injection invariant compares.
        self.written_at: dict[bytes, float] = {}
        self.claimed_at: dict[int, float] = {}
        self.stats = KernelStats()
        self.drop_injections = False  # known-bad variant: pretend injection is broken
        # The data plane's fence expires at this time and stays down (a
        # stalled agent, Cluster.stall); None: up.
        self.fenced_at: float | None = None

    # -- the data plane's own traffic ---------------------------------------

    def accepts_new(self, bucket: int) -> bool:
        return bucket in self.owned

    def create(self, conn: Connection, now: float) -> None:
        self.table[conn.key] = conn
        self.written_at[conn.key] = now
        self.stats.created += 1

    def update(self, conn: Connection) -> bool:
        if conn.key not in self.table:
            return False
        self.table[conn.key] = conn
        return True

    def destroy(self, key: bytes) -> Connection | None:
        conn = self.table.pop(key, None)
        if conn is not None:
            self.written_at.pop(key, None)
            self.stats.destroyed += 1
        return conn

    # -- orders from the node --------------------------------------------------

    def inject(self, event: InjectConnections, now: float) -> None:
        if self.drop_injections:
            return
        for conn in event.conns:
            if conn.key not in self.table:
                self.table[conn.key] = conn
                self.written_at[conn.key] = now
                self.stats.injected += 1

    def program(
        self, event: OwnedBucketsChanged, now: float
    ) -> tuple[frozenset[int], frozenset[int]]:
        """Returns (claimed, released) compared with what was programmed."""
        claimed = event.owned - self.owned
        released = self.owned - event.owned
        for bucket in claimed:
            self.claimed_at[bucket] = now
        self.owned = event.owned
        self.stats.programs += 1
        return claimed, released

    def set_active(self, event: ActiveBucketsChanged) -> frozenset[int]:
        """Returns the buckets newly forwarded unconditionally."""
        added = event.active - self.active
        self.active = event.active
        self.programming = event
        return added

    def fenced(self, now: float) -> bool:
        """Whether the fence stops every packet at `now`."""
        return self.fenced_at is not None and now >= self.fenced_at

    def forwards(self, bucket: int, now: float) -> bool:
        """Whether the data plane forwards `bucket`'s packets at `now` (the
        simulator's wall clock is its virtual clock)."""
        return not self.fenced(now) and self.programming.forwards(bucket, now)

    def delete(self, event: DeleteConnections) -> None:
        for conn in event.conns:
            if self.table.pop(conn.key, None) is not None:
                self.written_at.pop(conn.key, None)
                self.stats.deleted += 1
