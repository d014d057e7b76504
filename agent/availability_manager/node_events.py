"""Events a `Node` hands to its driver (the daemon or the simulator).

The first three are data-plane orders and must be performed in the order they
come out of `Node.next_event()`: an `InjectConnections` always precedes the
`OwnedBucketsChanged` that claims its buckets (a claimed bucket never lacks a
connection this node knew about), and a `DeleteConnections` always follows the
`OwnedBucketsChanged` that released its buckets (a released bucket keeps its
entries until the data plane no longer accepts NEW packets for it).

The rest are lifecycle notices for logs, metrics and service managers. Every
event has `describe()`, a one-line human-readable text used by the daemon's log
and by the simulator's trace and demo.
"""

from __future__ import annotations

import dataclasses

from .connection import Connection
from .ct_messages import Expectation
from .types import NodeId, format_node_id


def format_buckets(buckets: frozenset[int]) -> str:
    """Compact text of a bucket set: ``0-20,64,70-79`` (ranges of consecutive ids)."""
    if not buckets:
        return "-"
    parts: list[str] = []
    ordered = sorted(buckets)
    start = prev = ordered[0]
    for b in ordered[1:]:
        if b == prev + 1:
            prev = b
            continue
        parts.append(f"{start}-{prev}" if prev != start else str(start))
        start = prev = b
    parts.append(f"{start}-{prev}" if prev != start else str(start))
    return ",".join(parts)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class InjectConnections:
    """Write these entries into the local conntrack table, now, before the
    following `OwnedBucketsChanged` is programmed."""

    conns: tuple[Connection, ...]
    buckets: frozenset[int]  # the buckets about to be claimed that these belong to

    def describe(self) -> str:
        return f"inject {len(self.conns)} connections of buckets {format_buckets(self.buckets)}"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class InjectExpectations:
    """A Node event for the driver (like InjectConnections, which it always
    follows): write these expectations into the local conntrack
    table; their masters are already there."""

    exps: tuple[Expectation, ...]
    buckets: frozenset[int]

    def describe(self) -> str:
        return f"inject {len(self.exps)} expectations"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class OwnedBucketsChanged:
    """Program the data plane atomically with this complete set of owned buckets."""

    owned: frozenset[int]
    claimed: frozenset[int] = frozenset()  # compared with the previous set, for logs
    released: frozenset[int] = frozenset()

    def describe(self) -> str:
        text = f"owns {len(self.owned)} buckets"
        if self.claimed:
            text += f", claimed {format_buckets(self.claimed)}"
        if self.released:
            text += f", released {format_buckets(self.released)}"
        return text


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Switch:
    """Buckets whose forwarding starts (`start`) or stops at wall-clock time
    `at` (seconds since the epoch): one side of a make-before-break handoff,
    the same instant on the giver and on the taker."""

    buckets: frozenset[int]
    at: float
    start: bool

    def describe(self) -> str:
        verb = "starts" if self.start else "stops"
        return f"{verb} {format_buckets(self.buckets)} at {self.at:.3f}"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ActiveBucketsChanged:
    """Program the data plane atomically: forward NEW and known connections of
    exactly these buckets (owned, and claimed by no other live node), plus
    the timed `switches` of a handoff in progress (a bucket of a stop switch
    is forwarded until its time, one of a start switch from its time).
    Follows the `InjectConnections` of a claim and precedes the
    `DeleteConnections` of a release. `OwnedBucketsChanged` is the protocol's
    view (claims), this is what the kernel must do. `removed` lists the
    buckets no longer forwarded unconditionally (a stop switch counts): the
    daemon must have programmed that before its next datagram leaves."""

    active: frozenset[int]
    added: frozenset[int] = frozenset()
    removed: frozenset[int] = frozenset()
    switches: tuple[Switch, ...] = ()

    def describe(self) -> str:
        text = f"forwards {len(self.active)} buckets"
        if self.added:
            text += f", now also {format_buckets(self.added)}"
        if self.removed:
            text += f", no longer {format_buckets(self.removed)}"
        for switch in self.switches:
            text += f"; {switch.describe()}"
        return text

    def forwards(self, bucket: int, wall: float) -> bool:
        """Whether this programming forwards `bucket` at wall-clock time `wall`
        (the reference the data planes and the simulator follow)."""
        if bucket in self.active:
            return True
        for switch in self.switches:
            if bucket in switch.buckets:
                return wall >= switch.at if switch.start else wall < switch.at
        return False


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeleteConnections:
    """Another node has claimed these buckets: remove these local entries."""

    conns: tuple[Connection, ...]
    buckets: frozenset[int]

    def describe(self) -> str:
        return f"delete {len(self.conns)} connections of buckets {format_buckets(self.buckets)}"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NodeUp:
    node: NodeId
    incarnation: int

    def describe(self) -> str:
        return f"peer {format_node_id(self.node)} up (incarnation {self.incarnation})"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NodeDown:
    node: NodeId
    reason: str  # e.g. "timeout", "left", "restarted"

    def describe(self) -> str:
        return f"peer {format_node_id(self.node)} down ({self.reason})"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PeerRefused:
    node: NodeId
    reason: str  # e.g. "settings-mismatch"

    def describe(self) -> str:
        return f"peer {format_node_id(self.node)} refused: {self.reason}"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class OutOfSync:
    """The reliable broadcast with `peer` lost messages it cannot repair; a full
    conntrack resync follows."""

    peer: NodeId

    def describe(self) -> str:
        return f"out of sync with {format_node_id(self.peer)}: full resync"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Ready:
    """The first stable configuration was reached (emitted once)."""

    owned: frozenset[int]
    members: tuple[NodeId, ...]

    def describe(self) -> str:
        names = ", ".join(format_node_id(m) for m in self.members)
        return f"ready: stable with members {names}, owns {len(self.owned)} buckets"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LeaveComplete:
    """After `leave()`: this node owns nothing and the others claimed everything."""

    def describe(self) -> str:
        return "leave complete: owns nothing, the others hold every bucket"


NodeEvent = (
    InjectConnections
    | InjectExpectations
    | OwnedBucketsChanged
    | ActiveBucketsChanged
    | DeleteConnections
    | NodeUp
    | NodeDown
    | PeerRefused
    | OutOfSync
    | Ready
    | LeaveComplete
)
