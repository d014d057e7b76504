"""Range distribution (the seed's "clusterdev protocol"): who owns which buckets.

`RangeDistribution` owns this node's set of owned buckets, its view of every
peer's last claim and the aim computed from the membership (assignment.py). It
does not own the membership (the availability layer decides who is a member
and tells us through set_members/peer_down) nor the data plane (the Node acts
on our Claim/Release events).

The rule, from the seed, with the release condition made strict:

    on every membership change:   owned := owned | aimed          (Claim)
    on RangeState(claim) from S:  for b in owned & claim, b not in aimed:
                                      release b if S is the node that aims
                                      for b, S computes from our membership
                                      (same digest) and the claim arrived
                                      since our last membership change (Release)
    on peer_down(S):              forget S's claim; S leaves the membership,
                                  so the survivors' aims grow and they claim.

A bucket is only released after another node has claimed it, so ownership is
doubled in transit and never missing.

Make-before-break (`handover_delay` > 0): a release is not immediate. The
giver schedules a *handoff*: it keeps forwarding the buckets until a switch
time `at` (now + handover_delay), announces them with that time in its claim
(`RangeState.handoff`, `handoff_at` in wall-clock nanoseconds), and releases
them at `at`. The taker, which claimed them after injecting their entries,
starts forwarding at the same instant (the Node turns the announcement into a
timed switch of its data plane), so there is no moment where both forward
and none where nobody does (up to the clocks' skew). An announced handoff is
irrevocable: at `at` the giver releases every bucket of it whose taker is
still up (and claims again what it aims for meanwhile, e.g. after an
undrain). Buckets that become releasable while a handoff is pending join it
while at least half the delay is left, else they wait for the next one.

What a peer's claim counts for (`owners`, `holes`, so the Node's active
set): only the buckets the peer aims for under our membership, or held in a
claim of it believed before (in transit to their new owner). A node only
ever takes buckets it aims for, so an honest claim is all believed; a claim
beyond that (a buggy or hostile member claiming every bucket) is counted
(`buckets_not_honoured`) and would otherwise stop every other owner
forwarding those buckets. A node that is not a member (draining,
leaving) aims for nothing and keeps its buckets until their new owners claim
them. Range state is idempotent: the whole claim is sent (unreliable
broadcast, with a heartbeat) at once after a change, and on the next
`CHANGE_REPEATS` heartbeats after a change of ours or of a peer's claim (so a
peer that adopted a new membership after we sent ours hears our claim in its
new view, and a claim lost or overtaken on the way is repaired within a
heartbeat while the cluster settles), and unchanged on every `REPEAT_EVERY`-th
heartbeat, which repairs a loss at any other time. An idle cluster thus sends
and judges a claim per node every half second, not every heartbeat.

Transitions of the stability flag (events in brackets):

    unstable --(owned == aim, every member claims exactly its aim with our
                digest, no non-member claims a bucket)--> stable   [Stable]
    stable   --(anything else)--> unstable                         [Unstable]

The release rule lives in two hooks, `_on_new_view` and `_on_claim`, so that
a known-bad variant (the simulator's `ImmediateRelease`, which drops buckets as
soon as they leave the aim and so opens holes in transit) is a subclass the
tests inject, not an option of this class.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter, deque
from collections.abc import Mapping

from . import assignment
from .types import MAX_NODE_ID, NodeId
from .wire import Kind, MsgType, attr, message

# Heartbeat ticks between two sends of an unchanged claim: how late a lost
# RangeState is repaired (10 x 50 ms). Changes never wait for it.
REPEAT_EVERY = 10
# Heartbeats that carry our claim after a change (ours or a peer's): while a
# membership change settles, claims go out as often as they always did.
CHANGE_REPEATS = 3


def bitmap_size(buckets: int) -> int:
    return (buckets + 7) // 8


def encode_bitmap(owned: frozenset[int] | set[int], buckets: int) -> bytes:
    """Bucket b is bit (0x80 >> b % 8) of byte b // 8."""
    out = bytearray(bitmap_size(buckets))
    for b in owned:
        if not 0 <= b < buckets:
            raise ValueError(f"bucket {b} out of range 0..{buckets - 1}")
        out[b >> 3] |= 0x80 >> (b & 7)
    return bytes(out)


def decode_bitmap(bitmap: bytes, buckets: int) -> frozenset[int]:
    return frozenset(b for b in range(buckets) if bitmap[b >> 3] & (0x80 >> (b & 7)))


@message(MsgType.RANGE_STATE)
@dataclasses.dataclass(frozen=True)
class RangeState:
    """The sender's whole claim: every bucket it owns, as a bitmap."""

    buckets: int = attr(1, Kind.U16)  # bucket count the bitmap covers
    bitmap: bytes = attr(2, Kind.BYTES, max_len=bitmap_size(assignment.MAX_BUCKETS))
    digest: int = attr(3, Kind.U64)  # membership_digest() of the sender's members
    # Buckets of the bitmap the sender stops forwarding at `handoff_at`
    # (wall-clock nanoseconds) and then releases; empty: no handoff pending.
    # Optional: a node that predates them skips both (it then starts
    # forwarding only on the release, as before: a gap, never a double).
    handoff: bytes = attr(
        4, Kind.BYTES, required=False, default=b"", max_len=bitmap_size(assignment.MAX_BUCKETS)
    )
    handoff_at: int = attr(5, Kind.U64, required=False, default=0)

    def __post_init__(self) -> None:
        if not 1 <= self.buckets <= assignment.MAX_BUCKETS:
            raise ValueError(f"bucket count {self.buckets} out of 1..{assignment.MAX_BUCKETS}")
        if len(self.bitmap) != bitmap_size(self.buckets):
            raise ValueError(f"bitmap of {len(self.bitmap)} bytes for {self.buckets} buckets")
        pad = self.buckets & 7
        if pad and self.bitmap[-1] & (0xFF >> pad):
            raise ValueError("bits set beyond the last bucket")
        if not 0 <= self.digest < 1 << 64:
            raise ValueError("digest must be a u64")
        if self.handoff:
            if len(self.handoff) != len(self.bitmap):
                raise ValueError(
                    f"handoff bitmap of {len(self.handoff)} bytes, claim of {len(self.bitmap)}"
                )
            if any(h & ~o for h, o in zip(self.handoff, self.bitmap, strict=True)):
                raise ValueError("handoff names buckets the claim does not hold")
            if not 0 < self.handoff_at < 1 << 64:
                raise ValueError("handoff_at must be a non-zero u64 with a handoff")

    @classmethod
    def of(
        cls,
        owned: frozenset[int] | set[int],
        buckets: int,
        digest: int,
        handoff: frozenset[int] | set[int] = frozenset(),
        handoff_at: int = 0,
    ) -> RangeState:
        if not handoff:
            return cls(buckets, encode_bitmap(owned, buckets), digest)
        return cls(
            buckets,
            encode_bitmap(owned, buckets),
            digest,
            encode_bitmap(handoff, buckets),
            handoff_at,
        )

    def owned(self) -> frozenset[int]:
        return decode_bitmap(self.bitmap, self.buckets)

    def handed_off(self) -> frozenset[int]:
        return decode_bitmap(self.handoff, self.buckets) if self.handoff else frozenset()


# -- events -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Claim:
    """These buckets are now owned: inject their cached connections, then
    reprogram the data plane."""

    buckets: frozenset[int]


@dataclasses.dataclass(frozen=True, slots=True)
class Release:
    """These buckets are no longer owned (another node claimed them): delete
    their local connections, reprogram the data plane."""

    buckets: frozenset[int]


@dataclasses.dataclass(frozen=True, slots=True)
class Stable:
    """Every member owns exactly its aim and all agree on the membership."""


@dataclasses.dataclass(frozen=True, slots=True)
class Unstable:
    """The configuration stopped being stable (membership change, lost claim...)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Handoff:
    """These buckets are still owned and forwarded until `at` (our clock),
    then released: their takers start forwarding at that instant."""

    buckets: frozenset[int]
    at: float


RangeEvent = Claim | Release | Handoff | Stable | Unstable


@dataclasses.dataclass(frozen=True, slots=True)
class _PeerClaim:
    owned: frozenset[int]
    bitmap: bytes  # owned as received: a repeated claim is recognised without decoding it
    digest: int
    received: float
    view: int  # our membership change counter when it arrived
    # The part of `owned` this node believes (see `_honoured`): what the peer
    # aims for under our membership, or held in a claim believed before.
    honoured: frozenset[int]
    handoff: frozenset[int] = frozenset()  # stops forwarding these at handoff_at
    handoff_at: float = 0.0  # wall-clock seconds
    handoff_raw: tuple[bytes, int] = (b"", 0)  # as received, to recognise a repeat


class RangeDistribution:
    """The range distribution state machine of one node (see module docstring)."""

    def __init__(
        self,
        node_id: NodeId,
        buckets: int,
        seed: int,
        *,
        now: float,
        handover_delay: float = 0.0,
        handover_quantum: float = 0.0,
    ) -> None:
        if not 0 <= node_id <= MAX_NODE_ID:
            raise ValueError(f"node id {node_id} is not a 32-bit unsigned integer")
        if not 1 <= buckets <= assignment.MAX_BUCKETS:
            raise ValueError(f"buckets must be 1..{assignment.MAX_BUCKETS}, got {buckets}")
        if not 0.0 <= handover_delay <= 5.0:
            raise ValueError(f"handover_delay must be 0..5 s, got {handover_delay}")
        self.node_id = node_id
        self.handover_delay = handover_delay
        # switch instants are rounded up to a multiple of this (wall clock):
        # nftables' `meta time` takes whole seconds only (nft_handover.py)
        self.handover_quantum = handover_quantum
        # wall-clock seconds = our clock + this (the driver keeps it current):
        # handoff times travel in wall-clock time, the only clock peers share
        self.clock_offset = 0.0
        self._handoff: dict[int, NodeId] = {}  # bucket -> taker, until _handoff_at
        self._handoff_at: float | None = None  # our clock
        self._handoff_ns = 0  # the same instant as announced: wall-clock nanoseconds
        self.buckets = buckets
        self.seed = seed
        self._members: dict[NodeId, int] = {}
        self._view = 0  # counts our membership changes; a claim only counts in its view
        self._digest = assignment.membership_digest({})
        self._aim: tuple[NodeId, ...] = ()
        self._aimed: frozenset[int] = frozenset()
        self._member_aims: dict[NodeId, frozenset[int]] = {}
        self._owned: set[int] = set()
        self._peers: dict[NodeId, _PeerClaim] = {}
        self._events: deque[RangeEvent] = deque()
        self._send_due: float | None = None
        self._claim_message: RangeState | None = None  # ours, until owned or digest change
        self._ticks_unsent = 0  # heartbeat ticks since our claim last went out
        self._repeats_due = 0  # heartbeats that still carry our claim after a change
        self._stable = False
        self.stats: Counter[str] = Counter()

    # -- inputs ---------------------------------------------------------------

    def set_members(self, members: Mapping[NodeId, int], now: float) -> None:
        """The nodes that should own buckets, with their weights: alive,
        admitted, not draining or leaving, links up. Includes this node unless
        it is draining. Raises ValueError (before any change) if invalid."""
        assignment.validate_members(members, self.buckets)
        new = dict(members)
        if new == self._members:
            return
        self.stats["membership_changes"] += 1
        self._members = new
        self._view += 1
        self._digest = assignment.membership_digest(new)
        self._aim = assignment.aimed_assignment(new, self.buckets, self.seed)
        self._member_aims = {n: assignment.buckets_of(self._aim, n) for n in new}
        self._aimed = self._member_aims.get(self.node_id, frozenset())
        for peer, claim in self._peers.items():  # a claim made ahead of our view counts now
            honoured = self._honoured(peer, claim.owned, claim.honoured)
            if honoured != claim.honoured:
                self._peers[peer] = dataclasses.replace(claim, honoured=honoured)
        self._claim_aim()
        self._on_new_view(now)
        self._send_due = now  # peers must learn our digest (and claim) at once
        self._repeats_due = CHANGE_REPEATS
        self._update_stability()

    def peer_down(self, node: NodeId, now: float) -> None:
        """`node` failed or left: forget its claim and take over its aim."""
        if node == self.node_id:
            self.stats["dropped_peer_down_self"] += 1
            return
        self._peers.pop(node, None)
        if node in self._members:
            survivors = {n: w for n, w in self._members.items() if n != node}
            self.set_members(survivors, now)
        else:
            self._update_stability()

    def receive(self, msg: object, source: NodeId, now: float) -> bool:
        """A RangeState from `source`: record its claim, release what it claims
        and aims for. Malformed or foreign input is counted and ignored.
        Returns whether anything changed: False for a repeat of the claim
        already recorded in this view (most of them: every heartbeat carries
        one), which can release nothing new since our own claim only grows
        with a new view."""
        if not isinstance(msg, RangeState):
            self.stats["dropped_not_range_state"] += 1
            return False
        if source == self.node_id:
            self.stats["dropped_own_message"] += 1
            return False
        if not 0 <= source <= MAX_NODE_ID:
            self.stats["dropped_bad_source"] += 1
            return False
        if msg.buckets != self.buckets:
            self.stats["dropped_bucket_count_mismatch"] += 1
            return False
        self.stats["rx"] += 1
        if msg.digest != self._digest:
            self.stats["rx_other_view"] += 1
        old = self._peers.get(source)
        if (
            old is not None
            and old.view == self._view
            and old.digest == msg.digest
            and old.bitmap == msg.bitmap
            and old.handoff_raw == (msg.handoff, msg.handoff_at)
        ):
            self.stats["rx_repeated"] += 1
            return False
        owned = msg.owned()
        honoured = self._honoured(source, owned, old.honoured if old is not None else frozenset())
        if honoured != owned:
            self.stats["claims_not_honoured"] += 1
            self.stats["buckets_not_honoured"] += len(owned) - len(honoured)
        self._peers[source] = _PeerClaim(
            owned,
            msg.bitmap,
            msg.digest,
            now,
            self._view,
            honoured,
            msg.handed_off(),
            msg.handoff_at / 1e9,
            (msg.handoff, msg.handoff_at),
        )
        self._repeats_due = CHANGE_REPEATS  # answer: the sender may lack ours in its view
        self._on_claim(source, now)
        self._update_stability()
        return True

    def handle_timer(self, now: float) -> None:
        """A pending handoff whose time came is carried out; otherwise the
        timer only asks the driver to send now."""
        if self._handoff_at is None or now < self._handoff_at:
            return
        handoff, self._handoff = self._handoff, {}
        self._handoff_at = None
        self._claim_message = None
        # Our data plane stopped forwarding these at the switch time, whatever
        # happened since (the announcement is irrevocable), and each taker
        # started: release them to it. Kept instead: a bucket whose taker went
        # down (it started nothing), no longer claims it, or hands it back to
        # us at the same instant (a membership change reversed the move: if
        # both released, nobody would own it; we start again from its handoff).
        keep = set()
        for b, taker in handoff.items():
            claim = self._peers.get(taker)
            if claim is None or b not in claim.owned or b in claim.handoff:
                keep.add(b)
        self.stats["handoff_cancelled_buckets"] += len(keep)
        self._release({b for b in handoff if b not in keep and b in self._owned}, now)
        self._claim_aim()  # what we aim for again (an undrain meanwhile) is claimed anew
        if self._send_due is None:
            self._send_due = now
        for peer in sorted(self._peers):
            self._release_to(peer, now)  # what waited for this handoff to end
        self._update_stability()

    # -- the release rule (module docstring) ---------------------------------------

    def _on_new_view(self, now: float) -> None:
        """The membership changed: release nothing. The claims stored so far
        predate this view; releases wait for fresh ones."""

    def _on_claim(self, source: NodeId, now: float) -> None:
        """A claim from `source` arrived: release what it claims and aims for."""
        self._release_to(source, now)

    # -- outputs --------------------------------------------------------------

    def claim_rides_on_heartbeat(self) -> bool:
        """Called once per heartbeat the driver sends: whether our claim goes
        with it (within CHANGE_REPEATS heartbeats of a change, ours or a
        peer's, or REPEAT_EVERY ticks passed). Changes of our own are also
        due at once (`next_timer`)."""
        self._ticks_unsent += 1
        if self._repeats_due > 0:
            self._repeats_due -= 1
            return True
        return self._ticks_unsent >= REPEAT_EVERY

    def messages_to_send(self, now: float) -> list[RangeState]:
        """This node's current claim; one on every call."""
        self._send_due = None
        self._ticks_unsent = 0
        self.stats["tx"] += 1
        claim = self._claim_message
        if claim is None or claim.digest != self._digest:
            claim = self._claim_message = RangeState.of(
                self._owned,
                self.buckets,
                self._digest,
                frozenset(self._handoff),
                self._handoff_ns if self._handoff else 0,
            )
        return [claim]

    def next_timer(self) -> float | None:
        """When a changed claim must be sent (now) or a pending handoff is
        due, else None: the other sends follow the caller's heartbeats
        (`claim_rides_on_heartbeat`)."""
        if self._handoff_at is None:
            return self._send_due
        if self._send_due is None:
            return self._handoff_at
        return min(self._send_due, self._handoff_at)

    def next_event(self) -> RangeEvent | None:
        return self._events.popleft() if self._events else None

    # -- views ----------------------------------------------------------------

    def owned(self) -> frozenset[int]:
        return frozenset(self._owned)

    def aimed(self) -> frozenset[int]:
        return self._aimed

    def aim(self) -> tuple[NodeId, ...]:
        """The whole aimed assignment (owner per bucket) for the current membership."""
        return self._aim

    def members(self) -> dict[NodeId, int]:
        return dict(self._members)

    def digest(self) -> int:
        return self._digest

    def owners(self) -> list[frozenset[NodeId]]:
        """Per bucket, the nodes known to own it: this node plus the honoured
        part of the last claim of every peer not reported down (members, and
        non-members such as a draining node that still holds buckets)."""
        owners: list[set[NodeId]] = [set() for _ in range(self.buckets)]
        for b in self._owned:
            owners[b].add(self.node_id)
        for peer, claim in self._peers.items():
            for b in claim.honoured:
                owners[b].add(peer)
        return [frozenset(s) for s in owners]

    def holes(self) -> frozenset[int]:
        """Buckets nobody is known to own."""
        known = set(self._owned)
        for claim in self._peers.values():
            known |= claim.honoured
        return frozenset(range(self.buckets)) - known

    def is_stable(self) -> bool:
        return self._stable

    def handoff(self) -> tuple[frozenset[int], float] | None:
        """Our pending handoff: the buckets and the switch time (wall-clock
        seconds, exactly as announced)."""
        if self._handoff_at is None:
            return None
        return frozenset(self._handoff), self._handoff_ns / 1e9

    def peer_claims(self) -> dict[NodeId, frozenset[int]]:
        """Each peer's last claim as it stands, honoured or not (peers not
        reported down): what it may be forwarding."""
        return {p: c.owned for p, c in self._peers.items()}

    def peer_handoffs(self) -> dict[NodeId, tuple[frozenset[int], float]]:
        """Each peer's announced handoff: its buckets and the switch time
        (wall-clock seconds), for peers not reported down."""
        return {p: (c.handoff, c.handoff_at) for p, c in self._peers.items() if c.handoff}

    # -- internals ------------------------------------------------------------

    def _claim_aim(self) -> None:
        new = self._aimed - self._owned
        if new:
            self._owned |= new
            self._claim_message = None
            self._repeats_due = CHANGE_REPEATS
            self.stats["claimed_buckets"] += len(new)
            self._events.append(Claim(frozenset(new)))

    def _release_to(self, peer: NodeId, now: float) -> None:
        """Release the buckets `peer` claims and aims for, if it shares our view."""
        claim = self._peers.get(peer)
        if claim is None or not self._current(claim):
            return
        aim = self._aim
        if not aim:
            return  # no members: nobody to hand buckets to, keep them
        buckets = frozenset(
            b for b in claim.owned & self._owned if b not in self._aimed and aim[b] == peer
        )
        if self.handover_delay > 0.0:
            self._schedule_handoff(buckets - self._handoff.keys(), peer, now)
        else:
            self._release(buckets, now)

    def _schedule_handoff(self, buckets: frozenset[int], taker: NodeId, now: float) -> None:
        """Make-before-break (module docstring): hand `buckets` to `taker` at
        a switch time, a new one or the pending one if half the delay is left."""
        if not buckets:
            return
        if self._handoff_at is None:
            # the wall-clock instant is what the giver's and the taker's data
            # planes switch at: one integer both read the same
            wall = now + self.handover_delay + self.clock_offset
            if self.handover_quantum > 0.0:
                wall = math.ceil(wall / self.handover_quantum) * self.handover_quantum
            self._handoff_ns = round(wall * 1e9)
            self._handoff_at = self._handoff_ns / 1e9 - self.clock_offset
        elif self._handoff_at - now < self.handover_delay / 2:
            self.stats["handoff_waits"] += 1
            return  # too late to join: released to `taker` after this handoff
        for b in buckets:
            self._handoff[b] = taker
        self._claim_message = None
        self._repeats_due = CHANGE_REPEATS
        self.stats["handoff_buckets"] += len(buckets)
        self._events.append(Handoff(buckets, self._handoff_at))
        if self._send_due is None:
            self._send_due = now

    def _honoured(
        self, peer: NodeId, owned: frozenset[int], before: frozenset[int]
    ) -> frozenset[int]:
        """What of `peer`'s claim `owned` counts as owned by it: the buckets it
        aims for under our membership, and those it held in a claim believed
        before (in transit to their new owner; a node gives buckets away but
        only ever takes the ones it aims for). A claim beyond that (a buggy or
        hostile member claiming every bucket) would otherwise stop every
        other owner forwarding (`owners` feeds the Node's active set)."""
        aim = self._member_aims.get(peer, frozenset())
        if owned <= aim:
            return owned
        return owned & (aim | before)

    def _release(self, buckets: frozenset[int] | set[int], now: float) -> None:
        if buckets:
            self._owned -= buckets
            self._claim_message = None
            self._repeats_due = CHANGE_REPEATS
            self.stats["released_buckets"] += len(buckets)
            self._events.append(Release(frozenset(buckets)))
            if self._send_due is None:
                self._send_due = now

    def _current(self, claim: _PeerClaim) -> bool:
        """A claim made from our membership view and received since we adopted
        it. The digest alone is not enough: after A -> B -> A, a claim kept
        from the first A epoch has the right digest but is stale (its sender
        may have handed those buckets on during B), and releasing to it can
        open a hole (found by the property test in test_ranges.py)."""
        return claim.digest == self._digest and claim.view == self._view

    def _compute_stable(self) -> bool:
        if not self._aim or self._owned != self._aimed:
            return False
        for node in self._members:
            if node == self.node_id:
                continue
            claim = self._peers.get(node)
            if claim is None or not self._current(claim):
                return False
            if claim.owned != self._member_aims[node]:
                return False
        # a non-member still holding buckets means double ownership in transit
        return all(
            not claim.owned for peer, claim in self._peers.items() if peer not in self._members
        )

    def _update_stability(self) -> None:
        stable = self._compute_stable()
        if stable != self._stable:
            self._stable = stable
            self.stats["stable" if stable else "unstable"] += 1
            self._events.append(Stable() if stable else Unstable())
