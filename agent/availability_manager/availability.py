"""Availability layer: heartbeats, the join rule and failure detection.

`Availability` owns this node's view of who is alive: which peers it hears
(the *known* set, whose size it announces as `cluster_size`), which of them
are admitted (passed the join rule), and which are *up* (reported to the
layer above with NodeUp). It sends one Heartbeat per interval. It is sans-I/O:
time comes in as `now`, heartbeats come out of `messages_to_send(now)`,
events out of `next_event()`.

Per peer, as seen by this node (a row per input; events in brackets):

    state            input                                   next state
    ---------------  --------------------------------------  -------------------------------
    unknown          heartbeat not echoing our life          unchanged (counted "unproven"; our
                                                             next heartbeat, at once, echoes it)
    unknown          heartbeat, same fingerprint             known (announced size grows)
    known            heartbeat with cluster_size == ours     admitted; up if links up [NodeUp]
    admitted, up     heartbeat with own_status=0             admitted, not up [NodeDown links-down]
    admitted, not up heartbeat with own_status=1             up [NodeUp]
    up               heartbeat, other state or weight        up [NodeStateChanged]
    any              higher incarnation (echoing our life,   known, re-checked
                     <= 2**32 more, one per timeout)         [NodeDown restarted, if it was up]
    any              lower incarnation than ever seen        unchanged (counted "stale")
    any              no heartbeat for misses*interval+tol    unknown [NodeDown timeout, or
                                                             leaving if it announced LEAVING]
    any              other fingerprint                       unchanged [PeerRefused, once]
    any              wire_version < WIRE_VERSION_MIN         unchanged [PeerRefused, once]

Join rule (the seed's): a peer is admitted only once it announces the cluster
size this node sees, the peer included. The announced size counts every peer
heard (admitted or not), so nodes that start together converge: each one's
announced size grows as it hears the others until all agree.

Own links down (`set_own_status(False)`): this node keeps sending heartbeats
with own_status=0; peers report it NodeDown("links-down") and drop it from
`members()`, and so does the node itself, so that every node computes the
bucket distribution without it (a node whose links are down must own no
buckets). It stays admitted: when its links come back it is NodeUp again at
once. A peer is never evicted for disagreeing on the cluster size once
admitted; that rule only gates entry.

Wire version negotiation: every heartbeat announces the highest wire version
its sender speaks. `cluster_wire_version()` is the lowest of our own and of
every peer heard (known, admitted or not: a node that is only joining already
receives our broadcasts), so it falls as soon as an older node is heard and
rises again when the last one is gone or announces a higher version.
"""

from __future__ import annotations

import collections
import dataclasses
import struct
from collections.abc import Iterable, Iterator
from enum import IntEnum
from typing import ClassVar

from . import wire
from .types import MAX_NODE_ID, NodeId

FINGERPRINT_SIZE = 8
# Largest step up of a peer's incarnation while it is heard (incarnations are
# milliseconds of wall clock: about 49 days), and at most one step per
# timeout. Any key holder can speak for any node, so a single heartbeat with
# incarnation 2**64 - 1 would otherwise make the real node's heartbeats stale
# for good; with the bound that takes billions of steps of one timeout each.
MAX_INCARNATION_JUMP = 1 << 32
# The echo (see `Heartbeat.echo`): 8 bytes per node heard, at most this many.
ECHO_ENTRY = struct.Struct("!II")
MAX_ECHO = 128
MAX_WEIGHT = 1000
# A heartbeat arriving exactly `misses * interval` after the last one must not
# kill: the peer is declared dead this fraction of an interval later.
DEADLINE_TOLERANCE = 0.2


class NodeState(IntEnum):
    ACTIVE = 0
    DRAINING = 1
    LEAVING = 2


@wire.message(wire.MsgType.HEARTBEAT)
@dataclasses.dataclass(frozen=True, slots=True)
class Heartbeat:
    MSG_TYPE: ClassVar[wire.MsgType]

    incarnation: int = wire.attr(1, wire.Kind.U64)
    cluster_size: int = wire.attr(2, wire.Kind.U16)
    fingerprint: bytes = wire.attr(3, wire.Kind.BYTES, max_len=FINGERPRINT_SIZE)
    wire_version: int = wire.attr(4, wire.Kind.U8)
    state: int = wire.attr(5, wire.Kind.U8)
    weight: int = wire.attr(6, wire.Kind.U16)
    rb_next_seq: int = wire.attr(7, wire.Kind.U32)
    own_status: int = wire.attr(8, wire.Kind.U8)
    # Freshness proof (issue 18.4): zero or one value, the (node id, low 32
    # bits of its incarnation) of the sender itself and of every node it
    # hears. A receiver starts to count a peer's life only from a heartbeat
    # that echoes the receiver's own current life, which no recording of an
    # earlier one can. Empty from releases before it (decoders skip it).
    echo: tuple[bytes, ...] = wire.attr(
        9, wire.Kind.BYTES, repeated=True, max_len=MAX_ECHO * ECHO_ENTRY.size
    )
    # 1: every next hop the sender watches answers (or it watches none). A node
    # that lost one steps back only while a peer still reaches its own, so a
    # next hop lost by every node does not empty the cluster. Optional: an
    # older peer skips it and is taken to reach its next hops.
    nexthops_ok: int = wire.attr(10, wire.Kind.U8, required=False, default=1)

    def __post_init__(self) -> None:
        if not 0 <= self.incarnation <= 2**64 - 1:
            raise ValueError(f"incarnation {self.incarnation} is not a u64")
        if not 1 <= self.cluster_size <= 0xFFFF:
            raise ValueError(f"cluster_size {self.cluster_size} is not 1..65535")
        if len(self.fingerprint) != FINGERPRINT_SIZE:
            raise ValueError(f"fingerprint must be {FINGERPRINT_SIZE} bytes")
        if not 1 <= self.wire_version <= 0xFF:
            raise ValueError(f"wire_version {self.wire_version} is not 1..255")
        if self.state not in _STATES:
            raise ValueError(f"state {self.state} is not one of {sorted(_STATES)}")
        if not 1 <= self.weight <= MAX_WEIGHT:
            raise ValueError(f"weight {self.weight} is not 1..{MAX_WEIGHT}")
        if not 0 <= self.rb_next_seq <= 0xFFFFFFFF:
            raise ValueError(f"rb_next_seq {self.rb_next_seq} is not a u32")
        if self.own_status not in (0, 1):
            raise ValueError(f"own_status {self.own_status} is not 0 or 1")
        if len(self.echo) > 1 or any(len(e) % ECHO_ENTRY.size for e in self.echo):
            raise ValueError("echo is at most one value of 8-byte entries")
        if self.nexthops_ok not in (0, 1):
            raise ValueError(f"nexthops_ok {self.nexthops_ok} is not 0 or 1")

    def echoes(self, node: NodeId, incarnation: int) -> bool:
        """Whether the sender heard `node` in life `incarnation` (its echo)."""
        if not self.echo:
            return False
        entry = ECHO_ENTRY.pack(node, incarnation & 0xFFFFFFFF)
        data = self.echo[0]
        return any(data[i : i + 8] == entry for i in range(0, len(data), 8))


def echo_entry(node: NodeId, incarnation: int) -> bytes:
    return ECHO_ENTRY.pack(node, incarnation & 0xFFFFFFFF)


_STATES = frozenset(int(s) for s in NodeState)


# -- events -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class NodeUp:
    """A peer is admitted and eligible: count it in the membership."""

    node: NodeId
    incarnation: int
    state: NodeState
    weight: int
    rb_next_seq: int


@dataclasses.dataclass(frozen=True, slots=True)
class NodeDown:
    """A peer reported up is gone: "timeout", "leaving" (it announced LEAVING
    and then went silent), "restarted" (a higher incarnation; a NodeUp
    follows once it is admitted again) or "links-down" (its own status)."""

    node: NodeId
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class NodeStateChanged:
    node: NodeId
    state: NodeState
    weight: int


@dataclasses.dataclass(frozen=True, slots=True)
class PeerRefused:
    """A peer that can never be admitted (log it): emitted once per peer and
    reason until that peer is accepted again."""

    node: NodeId
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class OwnStatusChanged:
    up: bool


AvailabilityEvent = NodeUp | NodeDown | NodeStateChanged | PeerRefused | OwnStatusChanged


@dataclasses.dataclass(frozen=True, slots=True)
class MemberInfo:
    node: NodeId
    incarnation: int
    state: NodeState
    weight: int
    rb_next_seq: int
    wire_version: int


class _Peer:
    """What this node knows of one peer (mutable, private)."""

    __slots__ = (
        "admitted",
        "deadline",
        "incarnation",
        "nexthops_ok",
        "own_up",
        "rb_next_seq",
        "state",
        "up",
        "weight",
        "wire_version",
    )

    def __init__(self, hb: Heartbeat) -> None:
        self.incarnation = hb.incarnation
        self.admitted = False
        self.up = False
        self.deadline = 0.0
        self.state = NodeState(hb.state)
        self.weight = hb.weight
        self.rb_next_seq = hb.rb_next_seq
        self.own_up = bool(hb.own_status)
        self.nexthops_ok = bool(hb.nexthops_ok)
        self.wire_version = hb.wire_version


class Availability:
    """One node's heartbeat sender and failure detector (see the module
    docstring for the per-peer transitions).

    Inputs: `receive(hb, source, now)`, `handle_timer(now)`, and
    `set_own_status`, `set_nexthops_ok`, `set_state`, `set_weight`, `set_rb_next_seq`.
    Outputs: `messages_to_send(now)`, `next_timer()`, `next_event()`;
    views: `members()`, `cluster_size()`, `settled()`, `stats`.
    """

    def __init__(
        self,
        node_id: NodeId,
        incarnation: int,
        fingerprint: bytes,
        *,
        interval: float = 0.05,
        misses: int = 3,
        weight: int = 1,
        wire_version: int = wire.WIRE_VERSION,
        now: float,
    ) -> None:
        if not 0 <= node_id <= MAX_NODE_ID:
            raise ValueError(f"node_id {node_id} is not a u32")
        if not interval > 0:
            raise ValueError(f"interval must be positive, got {interval}")
        if misses < 1:
            raise ValueError(f"misses must be at least 1, got {misses}")
        # Validates incarnation, fingerprint, weight and wire_version once, the
        # same way a peer's decoder will.
        Heartbeat(incarnation, 1, fingerprint, wire_version, 0, weight, 0, 1)
        self.node_id = node_id
        self.incarnation = incarnation
        self.fingerprint = bytes(fingerprint)
        self.interval = interval
        self.misses = misses
        self.wire_version = wire_version
        self.timeout = misses * interval + DEADLINE_TOLERANCE * interval
        self.stats: collections.Counter[str] = collections.Counter()
        self._weight = weight
        self._state = NodeState.ACTIVE
        self._own_up = True
        self._nexthops_ok = True
        self._rb_next_seq = 0
        self._next_send = now
        self._peers: dict[NodeId, _Peer] = {}
        # Highest incarnation ever seen per node, kept after it times out, so a
        # late heartbeat of a previous life is still recognised as stale.
        self._incarnations: dict[NodeId, int] = {}
        self._refused: dict[NodeId, set[str]] = {}  # reasons already reported
        self._restarted_at: dict[NodeId, float] = {}  # last higher incarnation accepted
        # Heard but not yet proven fresh (their echo lacks our life): echoed
        # in our next heartbeat so that theirs can prove it.
        # Per peer: its incarnation and when it was last heard (it keeps a
        # joining node unsettled only while it could still be alive).
        self._unproven: dict[NodeId, tuple[int, float]] = {}
        self._echo_cache: bytes | None = None
        # Derived from the peers, asked for after every input: kept until a
        # peer comes, goes or changes them (None: compute again), so an idle
        # node's cost per heartbeat does not grow with the cluster.
        self._wire_version_low: int | None = None
        self._earliest_deadline: float | None = None
        self._events: collections.deque[AvailabilityEvent] = collections.deque()
        # When the last heartbeat was handed out: the peers' deadlines for this
        # node run from it (the data plane's fence is anchored there).
        self.last_sent: float | None = None

    # -- inputs ---------------------------------------------------------------

    def set_own_status(self, up: bool, now: float) -> None:
        if up == self._own_up:
            return
        self._own_up = up
        self._events.append(OwnStatusChanged(up))
        self._next_send = min(self._next_send, now)  # tell the peers at once

    def set_nexthops_ok(self, ok: bool, now: float) -> None:
        """Whether every next hop this node watches answers (daemon/health.py)."""
        if ok == self._nexthops_ok:
            return
        self._nexthops_ok = ok
        self._next_send = min(self._next_send, now)  # tell the peers at once

    def set_state(self, state: NodeState, now: float) -> None:
        state = NodeState(state)
        if state == self._state:
            return
        self._state = state
        self._next_send = min(self._next_send, now)

    def set_weight(self, weight: int, now: float) -> None:
        if not 1 <= weight <= MAX_WEIGHT:
            raise ValueError(f"weight {weight} is not 1..{MAX_WEIGHT}")
        if weight == self._weight:
            return
        self._weight = weight
        self._next_send = min(self._next_send, now)

    def send_soon(self, now: float) -> None:
        """The next heartbeat goes out at once (a path to a peer is in doubt)."""
        self._next_send = min(self._next_send, now)

    def peers_heard(self) -> Iterable[NodeId]:
        """Every peer heard within its timeout, admitted or not."""
        return self._peers.keys()

    def set_rb_next_seq(self, seq: int) -> None:
        if not 0 <= seq <= 0xFFFFFFFF:
            raise ValueError(f"rb_next_seq {seq} is not a u32")
        self._rb_next_seq = seq

    def receive(self, hb: Heartbeat, source: NodeId, now: float) -> None:
        if source == self.node_id:
            self.stats["own"] += 1
            return
        # Expire first: a heartbeat arriving after the deadline finds the peer
        # already gone and makes it join again, rather than silently reviving it.
        self._expire(now)
        self.stats["heartbeats_received"] += 1
        if hb.fingerprint != self.fingerprint:
            self._refuse(source, "fingerprint-mismatch")
            return
        if hb.wire_version < wire.WIRE_VERSION_MIN:
            self._refuse(source, "wire-version-too-old")
            return
        if hb.incarnation < self._incarnations.get(source, 0):
            self.stats["stale"] += 1
            return
        peer = self._peers.get(source)
        if peer is not None and hb.incarnation > peer.incarnation:
            if not self._proves_freshness(hb, source, now):
                return
            if not self._incarnation_step_allowed(source, peer, hb.incarnation, now):
                return
            if peer.up:
                self._events.append(NodeDown(source, "restarted"))
            peer = None
        if peer is None:
            if not self._proves_freshness(hb, source, now):
                return
            if source not in self._peers:
                self._next_send = min(self._next_send, now)  # our announced size grew
            peer = self._peers[source] = _Peer(hb)
            self._peers_changed()
        if self._refused:
            self._refused.pop(source, None)  # report a later refusal again
        self._incarnations[source] = hb.incarnation
        self._update(source, peer, hb, now)

    def handle_timer(self, now: float) -> None:
        self._expire(now)

    def host_stalled(self, since: float, now: float) -> None:
        """The host did not run this layer from `since` to `now` (its event
        loop or CPU was taken): the peers' silence in that time proves
        nothing, as their heartbeats wait unread. Every peer deadline still
        ahead at `since` moves on by the stall, so the first heartbeat read
        afterwards does not find all of them expired at once (a starved node
        would otherwise declare every peer dead, claim every bucket and
        starve further)."""
        if now <= since:
            return
        self.stats["host_stalls"] += 1
        for peer in self._peers.values():
            if peer.deadline > since:
                peer.deadline += now - since
        self._earliest_deadline = None  # recomputed from the moved deadlines

    # -- outputs --------------------------------------------------------------

    def messages_to_send(self, now: float) -> list[Heartbeat]:
        if now < self._next_send:
            return []
        self._next_send = now + self.interval
        self.last_sent = now
        self.stats["heartbeats_sent"] += 1
        return [
            Heartbeat(
                incarnation=self.incarnation,
                cluster_size=self.cluster_size(),
                fingerprint=self.fingerprint,
                wire_version=self.wire_version,
                state=int(self._state),
                weight=self._weight,
                rb_next_seq=self._rb_next_seq,
                own_status=int(self._own_up),
                echo=self._echo(),
                nexthops_ok=int(self._nexthops_ok),
            )
        ]

    def next_timer(self) -> float:
        earliest = self._earliest()
        return self._next_send if earliest is None else min(self._next_send, earliest)

    def _earliest(self) -> float | None:
        """A lower bound of the first peer deadline, exact when computed: kept
        while other peers are heard (deadlines only move later), recomputed
        when a peer comes or goes, the peer it belongs to is heard, or the
        bound is reached (in `_expire`)."""
        if self._earliest_deadline is None and self._peers:
            self._earliest_deadline = min(p.deadline for p in self._peers.values())
        return self._earliest_deadline

    def _peers_changed(self) -> None:
        self._wire_version_low = None
        self._earliest_deadline = None
        self._echo_cache = None

    def next_event(self) -> AvailabilityEvent | None:
        return self._events.popleft() if self._events else None

    def iter_events(self) -> Iterator[AvailabilityEvent]:
        """Pop every pending event (a convenience for drivers and tests)."""
        while self._events:
            yield self._events.popleft()

    # -- views ----------------------------------------------------------------

    @property
    def own_status(self) -> bool:
        return self._own_up

    @property
    def state(self) -> NodeState:
        return self._state

    def cluster_size(self) -> int:
        """The size announced in heartbeats: this node and every peer heard
        within the timeout with our fingerprint, admitted or not."""
        return min(len(self._peers) + 1, 0xFFFF)

    def cluster_wire_version(self) -> int:
        """The wire version to send: the lowest any node heard announces, ours included."""
        if self._wire_version_low is None:
            self._wire_version_low = min(
                [self.wire_version, *(p.wire_version for p in self._peers.values())]
            )
        return self._wire_version_low

    def settled(self, now: float) -> bool:
        """Every peer heard is admitted: the membership is not about to grow.
        A peer heard within the timeout but not yet proven fresh (its
        heartbeat did not echo our life yet: a restarted node's first
        moments) counts as heard: a node that took it for absence joined
        alone and claimed every bucket its peers forwarded."""
        if any(now - heard < self.timeout for _, heard in self._unproven.values()):
            return False
        return all(p.admitted for p in self._peers.values())

    def peers_reaching_nexthops(self) -> frozenset[NodeId]:
        """Up peers whose last heartbeat said they reach every next hop they watch."""
        return frozenset(n for n, p in self._peers.items() if p.up and p.nexthops_ok)

    def members(self) -> dict[NodeId, MemberInfo]:
        """The admitted, eligible members (this node included unless its own
        links are down), as every layer above must see them."""
        out = {
            node: MemberInfo(node, p.incarnation, p.state, p.weight, p.rb_next_seq, p.wire_version)
            for node, p in self._peers.items()
            if p.up
        }
        if self._own_up:
            out[self.node_id] = MemberInfo(
                self.node_id,
                self.incarnation,
                self._state,
                self._weight,
                self._rb_next_seq,
                self.wire_version,
            )
        return dict(sorted(out.items()))

    # -- internals ------------------------------------------------------------

    def _proves_freshness(self, hb: Heartbeat, source: NodeId, now: float) -> bool:
        """A peer's life is counted from a heartbeat that echoes ours: sent
        after it heard this life of ours, so not a recording replayed to a
        restarted receiver (whose replay windows start empty). Until then we
        make sure it hears us at once. Heartbeats without any echo come from
        a release before it and are taken as they always were."""
        if not hb.echo or hb.echoes(self.node_id, self.incarnation):
            if self._unproven.pop(source, None) is not None:
                self._echo_cache = None
            return True
        self.stats["unproven"] += 1
        known = self._unproven.get(source)
        if known is None:
            if len(self._unproven) >= MAX_ECHO * 8:
                self._unproven.clear()  # bounded: only a hint to answer at once
            self._echo_cache = None
            self._next_send = min(self._next_send, now)  # echo it: it learns we are here
        incarnation = hb.incarnation if known is None else known[0]  # the first one heard
        self._unproven[source] = (incarnation, now)
        return False

    def _echo(self) -> tuple[bytes, ...]:
        """Our echo: ourselves, then every peer heard (cached per peer set)."""
        if self._echo_cache is None:
            entries = [echo_entry(self.node_id, self.incarnation)]
            entries += [echo_entry(n, p.incarnation) for n, p in self._peers.items()]
            entries += [echo_entry(n, inc) for n, (inc, _) in self._unproven.items()]
            self._echo_cache = b"".join(entries[:MAX_ECHO])
        return (self._echo_cache,)

    def _incarnation_step_allowed(
        self, source: NodeId, peer: _Peer, incarnation: int, now: float
    ) -> bool:
        """A higher incarnation of a peer we hear: a restart, bounded in size
        and to one per timeout (MAX_INCARNATION_JUMP says why). A peer not
        heard for a timeout (unknown again) may come back with any higher one."""
        if incarnation - peer.incarnation > MAX_INCARNATION_JUMP:
            self.stats["incarnation_jump"] += 1
            return False
        last = self._restarted_at.get(source)
        if last is not None and now - last < self.timeout:
            self.stats["incarnation_too_soon"] += 1
            return False
        self._restarted_at[source] = now
        return True

    def _refuse(self, source: NodeId, reason: str) -> None:
        self.stats["refused"] += 1
        reported = self._refused.setdefault(source, set())
        if reason not in reported:
            reported.add(reason)
            self._events.append(PeerRefused(source, reason))

    def _update(self, source: NodeId, peer: _Peer, hb: Heartbeat, now: float) -> None:
        changed = peer.state != hb.state or peer.weight != hb.weight
        peer.state = NodeState(hb.state)
        peer.weight = hb.weight
        peer.rb_next_seq = hb.rb_next_seq
        peer.own_up = bool(hb.own_status)
        peer.nexthops_ok = bool(hb.nexthops_ok)
        if peer.wire_version != hb.wire_version:
            peer.wire_version = hb.wire_version
            self._wire_version_low = None
        # A deadline only moves later: the cached first deadline stays a lower
        # bound. When it was this peer's, it is dropped (recomputed when next
        # asked, a pass over the peers): a stale bound woke the node for
        # nothing, 6 of its 26 timer wakeups per second in an idle 3-node
        # cluster (issue 19), each costing far more than the pass.
        if peer.deadline == self._earliest_deadline:
            self._earliest_deadline = None
        peer.deadline = now + self.timeout
        if not peer.admitted and hb.cluster_size == self.cluster_size():
            peer.admitted = True
        eligible = peer.admitted and peer.own_up
        if eligible and not peer.up:
            peer.up = True
            self._events.append(
                NodeUp(source, peer.incarnation, peer.state, peer.weight, peer.rb_next_seq)
            )
        elif peer.up and not eligible:
            peer.up = False
            self._events.append(NodeDown(source, "links-down"))
        elif peer.up and changed:
            self._events.append(NodeStateChanged(source, peer.state, peer.weight))

    def _expire(self, now: float) -> None:
        earliest = self._earliest()
        if earliest is None or now < earliest:
            return
        dead = sorted(node for node, p in self._peers.items() if now >= p.deadline)
        self._earliest_deadline = None  # the bound was reached: the next one, exact
        if dead:
            self._peers_changed()
        for node in dead:
            peer = self._peers.pop(node)
            if peer.up:
                reason = "leaving" if peer.state == NodeState.LEAVING else "timeout"
                self._events.append(NodeDown(node, reason))
        if dead:
            self._next_send = min(self._next_send, now)  # our announced size shrank
