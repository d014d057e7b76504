"""Reliable broadcast: gap-free FIFO delivery of each peer's stream, NAK-based.

What this layer owns: the sequence numbers of this node's own stream, the
bounded buffer of what it sent (for repairs), and, per peer, the receive
window of that peer's stream (next seq to deliver, data held out of order,
the holes and when to NAK them). It knows nothing about payloads: they are
encoded messages of the layer above, opaque here. Membership is the layer
above's business: it calls `peer_up` / `peer_down`.

Sender side. `send(payload)` gives the payload the next u32 sequence number
and queues an `RbData`; the last `buffer_size` payloads stay buffered. An
`RbNak` naming this node is answered by retransmitting the buffered seqs,
each at most once per `repair_holdoff` however many receivers ask (repair
suppression). A NAK for a seq that has already left the buffer cannot be
repaired: the sender broadcasts `RbLost(first_available, next_seq)` and
raises `OutOfSync(peer=<the NAKer>, role="sender")` so the layer above
resyncs everybody. It raises it again only if the lost data includes seqs
sent after the previous resync point, since an earlier resync covers the rest.

Receiver side, per peer, seqs in serial order (RFC 1982, mod 2**32):

    [delivered ...] expected [held or missing ...] known_end [not yet sent ...]

`expected` is the next seq to deliver, `known_end` one past the highest seq
known to exist (from data, or from the peer's heartbeat via
`observe_next_seq`, which is how a lost tail of the stream is noticed). Every
seq in [expected, known_end) is either held (out-of-order data) or a gap.

Transitions of one seq s of a peer's stream at a receiver:

    unknown --(data s)---------------------------------> delivered or held
    unknown --(data > s, or heartbeat next_seq > s)----> gap (NAK due at now + U[0, nak_backoff))
    gap     --(NAK due, not yet max_naks NAKs)---------> gap (NAK sent; due again after nak_retry)
    gap     --(another receiver's NAK for s heard)-----> gap (due postponed: NAK suppression)
    gap     --(data s)---------------------------------> delivered or held
    gap     --(max_naks NAKs unanswered)---------------> skipped: OutOfSync(peer, "receiver")
    gap/held --(RbLost: first_available > s)-----------> skipped: OutOfSync(peer, "receiver")
    gap/held --(known_end - s > buffer_size)-----------> skipped: OutOfSync(peer, "receiver")
               (the skip goes to the newest seq at once: the resync covers all before it)
    held    --(all seqs before s delivered)------------> delivered
    delivered --(data s again)-------------------------> dropped, counted as a duplicate

A skip moves `expected` past s and drops everything before it. An NAK is
answered with at most MAX_REPAIRS_PER_NAK repairs, and all NAKs together with
at most that many per nak_retry (the repair pace); one naming seqs far
outside the sender's recent stream is refused whole (`nak-out-of-window`). The
`known_end - s > buffer_size` rule uses the sender's buffer size, a
cluster-wide setting: data further back than that can no longer be repaired,
so waiting for it is pointless. The window per peer therefore never spans
more than `buffer_size` seqs, which bounds the held data and the gap table.

NAKs are batched: one RbNak names every gap of that peer that is due or
nearly due (up to MAX_NAK_RANGES ranges per message). Data, NAKs and RbLost
from a node without `peer_up` are dropped and counted.

Sans-I/O: time comes in as `now`, randomness from the `random.Random` given,
outputs are pulled with `messages_to_send`, `next_timer` and `next_event`.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Literal

from .types import NodeId
from .wire import Kind, MsgType, attr, message

SEQ_MOD = 1 << 32
SEQ_MASK = SEQ_MOD - 1
SEQ_HALF = 1 << 31

MAX_PAYLOAD = 1400
"""Largest payload of one RbData: what fits a datagram beside the headers."""

MAX_NAK_RANGES = 64
"""Ranges in one RbNak (12 bytes each on the wire, so a NAK stays small)."""

MAX_REPAIRS_PER_NAK = 256
"""Retransmissions one NAK can cause (about 360 kB): a receiver missing more
gets the rest at its next NAK, nak_retry later, and a 60-byte NAK cannot make
a node resend its whole buffer in one burst. It is also the pace of all
repairs together: a sender resends at most this many per nak_retry, whatever
the number of NAKs and receivers (a token bucket of this size, refilled over
nak_retry), so many receivers that missed different data cannot add up to a
burst either."""

MAX_RANGE_SPAN = 1 << 20
"""Largest number of seqs one NAK range or RbLost window may cover; also the
largest sender buffer, so a sane peer never needs more."""


# -- serial-number arithmetic (RFC 1982 style, 32 bits) -----------------------


def seq_add(seq: int, n: int) -> int:
    return (seq + n) & SEQ_MASK


def seq_sub(a: int, b: int) -> int:
    """a - b as a signed serial distance in [-2**31, 2**31)."""
    return ((a - b + SEQ_HALF) & SEQ_MASK) - SEQ_HALF


def seq_lt(a: int, b: int) -> bool:
    """a comes before b. Undefined (False) for seqs exactly 2**31 apart."""
    return 0 < ((b - a) & SEQ_MASK) < SEQ_HALF


def pack_range(start: int, end: int) -> int:
    """Inclusive seq range [start, end] as the u64 of an RbNak."""
    return (start << 32) | end


def unpack_range(value: int) -> tuple[int, int]:
    return value >> 32, value & SEQ_MASK


def _check_u32(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= SEQ_MASK:
        raise ValueError(f"{name} must be a u32, got {value!r}")


# -- wire messages ------------------------------------------------------------


@message(MsgType.RB_DATA)
@dataclasses.dataclass(frozen=True, slots=True)
class RbData:
    """One payload of the sender's stream (original or retransmission)."""

    seq: int = attr(1, Kind.U32)
    payload: bytes = attr(2, Kind.BYTES, max_len=MAX_PAYLOAD)

    def __post_init__(self) -> None:
        _check_u32("seq", self.seq)
        if not isinstance(self.payload, bytes):
            raise ValueError("payload must be bytes")
        if len(self.payload) > MAX_PAYLOAD:
            raise ValueError(f"payload of {len(self.payload)} bytes > {MAX_PAYLOAD}")


@message(MsgType.RB_NAK)
@dataclasses.dataclass(frozen=True, slots=True)
class RbNak:
    """Broadcast by a receiver missing data of `target`: the inclusive seq
    ranges it lacks, each packed as start << 32 | end. Broadcast (not sent to
    the target alone) so that other receivers hear it and hold their own."""

    target: int = attr(1, Kind.U32)
    ranges: tuple[int, ...] = attr(2, Kind.U64, repeated=True)

    def __post_init__(self) -> None:
        _check_u32("target", self.target)
        if not isinstance(self.ranges, tuple) or not 1 <= len(self.ranges) <= MAX_NAK_RANGES:
            raise ValueError(f"a NAK carries 1..{MAX_NAK_RANGES} ranges")
        for r in self.ranges:
            if not isinstance(r, int) or not 0 <= r < 1 << 64:
                raise ValueError(f"range {r!r} is not a u64")
            start, end = unpack_range(r)
            if not 0 <= seq_sub(end, start) < MAX_RANGE_SPAN:
                raise ValueError(f"range {start}..{end} is reversed or too long")

    def seq_ranges(self) -> Iterator[tuple[int, int]]:
        return (unpack_range(r) for r in self.ranges)


@message(MsgType.RB_LOST)
@dataclasses.dataclass(frozen=True, slots=True)
class RbLost:
    """Sent by a sender NAKed for data its buffer no longer holds: everything
    before `first_available` is gone. `next_seq` lets receivers also notice
    the tail they miss. Addressed to every receiver."""

    first_available: int = attr(1, Kind.U32)
    next_seq: int = attr(2, Kind.U32)

    def __post_init__(self) -> None:
        _check_u32("first_available", self.first_available)
        _check_u32("next_seq", self.next_seq)
        if not 0 <= seq_sub(self.next_seq, self.first_available) <= MAX_RANGE_SPAN:
            raise ValueError("next_seq must follow first_available within the buffer span")


RbMessage = RbData | RbNak | RbLost


# -- events ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Delivered:
    """The next payload of `source`'s stream, in order, exactly once."""

    source: NodeId
    seq: int
    payload: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class OutOfSync:
    """Data was lost beyond repair. role "receiver": this node skipped part of
    `peer`'s stream. role "sender": `peer` NAKed data this node no longer
    buffers; the layer above resyncs everybody."""

    peer: NodeId
    role: Literal["receiver", "sender"]


BroadcastEvent = Delivered | OutOfSync


@dataclasses.dataclass(slots=True)
class BroadcastStats:
    """Counters. data_sent is the seed's "Sync", retransmitted its "ReSync"."""

    data_sent: int = 0
    retransmitted: int = 0
    repairs_suppressed: int = 0  # NAKed seqs not resent: already resent within the holdoff
    repairs_deferred: int = 0  # NAKs answered in part: the repair pace was used up
    naks_sent: int = 0
    naks_suppressed: int = 0  # heard NAKs that postponed one of ours
    lost_sent: int = 0
    delivered: int = 0
    duplicates: int = 0
    out_of_sync: int = 0  # both roles
    dropped_unknown_peer: int = 0
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)  # other refusals

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


# -- receiver state per peer ------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _Gap:
    due: float  # when to NAK it next
    naks: int = 0  # NAKs this node sent for it


class _Stream:
    """This node's view of one peer's stream (see the module docstring).

    The due times of the gaps are counted in `_dues` and kept in a heap with
    lazy deletion (`_due_heap` may hold times no gap has any more), so the
    earliest is cheap to find however many gaps are open (up to buffer_size)
    and the driver may ask for the next timer after every datagram."""

    __slots__ = ("_due_heap", "_dues", "expected", "gaps", "held", "known_end")

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.known_end = expected
        self.held: dict[int, bytes] = {}
        self.gaps: dict[int, _Gap] = {}
        self._dues: dict[float, int] = {}
        self._due_heap: list[float] = []

    def add_gap(self, seq: int, due: float) -> None:
        self.gaps[seq] = _Gap(due)
        self._count_due(due)

    def remove_gap(self, seq: int) -> None:
        gap = self.gaps.pop(seq, None)
        if gap is not None:
            self._forget_due(gap.due)

    def set_due(self, gap: _Gap, due: float) -> None:
        self._forget_due(gap.due)
        gap.due = due
        self._count_due(due)

    def min_due(self) -> float | None:
        heap = self._due_heap
        while heap and heap[0] not in self._dues:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def drop_before(self, target: int) -> None:
        """Forget held data and gaps before `target`; costs what it drops
        (walking the seqs) or the window (filtering), whichever is smaller."""
        span = seq_sub(target, self.expected)
        if span <= 0:
            return
        if span <= len(self.held) + len(self.gaps):
            seq = self.expected
            for _ in range(span):
                self.held.pop(seq, None)
                self.remove_gap(seq)
                seq = seq_add(seq, 1)
            return
        self.held = {s: p for s, p in self.held.items() if not seq_lt(s, target)}
        self.gaps = {s: g for s, g in self.gaps.items() if not seq_lt(s, target)}
        self._dues = {}
        self._due_heap = []
        for g in self.gaps.values():
            self._count_due(g.due)

    def _count_due(self, due: float) -> None:
        n = self._dues.get(due, 0)
        if not n:
            heapq.heappush(self._due_heap, due)
        self._dues[due] = n + 1

    def _forget_due(self, due: float) -> None:
        n = self._dues[due] - 1
        if n:
            self._dues[due] = n
        else:
            del self._dues[due]


def _compress(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Serially sorted seqs -> inclusive runs."""
    runs: list[tuple[int, int]] = []
    for s in seqs:
        if runs and seq_add(runs[-1][1], 1) == s:
            runs[-1] = (runs[-1][0], s)
        else:
            runs.append((s, s))
    return runs


class ReliableBroadcast:
    """The reliable-broadcast layer of one node (see the module docstring)."""

    def __init__(
        self,
        node_id: NodeId,
        rng: random.Random,
        *,
        buffer_size: int = 16384,
        nak_backoff: float = 0.01,
        nak_retry: float = 0.05,
        repair_holdoff: float = 0.02,
        max_naks_per_range: int = 25,
        initial_seq: int | None = None,
        now: float,
    ) -> None:
        _check_u32("node_id", node_id)
        if not 1 <= buffer_size <= MAX_RANGE_SPAN:
            raise ValueError(f"buffer_size must be 1..{MAX_RANGE_SPAN}")
        if not (nak_backoff > 0 and nak_retry > 0 and 0 <= repair_holdoff < nak_retry):
            raise ValueError("need nak_backoff > 0, nak_retry > 0, 0 <= repair_holdoff < nak_retry")
        if max_naks_per_range < 1:
            raise ValueError("max_naks_per_range must be >= 1")
        self.node_id = node_id
        self._rng = rng
        self._buffer_size = buffer_size
        self._nak_backoff = nak_backoff
        self._nak_retry = nak_retry
        self._repair_holdoff = repair_holdoff
        self._max_naks = max_naks_per_range
        # A random start (like a TCP ISN) keeps a restarted node's stream
        # distinct from its previous one and exercises the wrap in practice.
        if initial_seq is None:
            initial_seq = rng.getrandbits(32)
        _check_u32("initial_seq", initial_seq)
        self._next_seq = initial_seq
        self._sent: dict[int, bytes] = {}  # the last buffer_size payloads, by seq
        self._repaired_at: dict[int, float] = {}  # seq -> when last retransmitted
        self._repair_tokens = float(MAX_REPAIRS_PER_NAK)  # the repair pace (token bucket)
        self._tokens_at = now
        self._lost_sent_at: float | None = None
        self._resync_point: int | None = None  # next_seq at the last OutOfSync("sender")
        self._streams: dict[NodeId, _Stream] = {}
        self._out: list[RbMessage] = []
        self._events: deque[BroadcastEvent] = deque()
        self._timer: float | None = None
        self._timer_dirty = False
        self.stats = BroadcastStats()

    # -- read-only views -------------------------------------------------------

    @property
    def next_seq(self) -> int:
        """The seq the next `send` will use (what heartbeats announce)."""
        return self._next_seq

    @property
    def buffered(self) -> int:
        """Payloads held for repairs (never more than buffer_size)."""
        return len(self._sent)

    @property
    def first_available(self) -> int:
        return seq_add(self._next_seq, -len(self._sent))

    def peers(self) -> frozenset[NodeId]:
        return frozenset(self._streams)

    def expected_seq(self, peer: NodeId) -> int | None:
        """The next seq of `peer` to be delivered, None if `peer` is unknown."""
        st = self._streams.get(peer)
        return None if st is None else st.expected

    def held_count(self, peer: NodeId) -> int:
        """Out-of-order payloads of `peer` held until the gap before them fills."""
        st = self._streams.get(peer)
        return 0 if st is None else len(st.held)

    def missing_count(self, peer: NodeId) -> int:
        st = self._streams.get(peer)
        return 0 if st is None else len(st.gaps)

    # -- inputs from the layer above -------------------------------------------------

    def send(self, payload: bytes, now: float) -> int:
        """Broadcast `payload` as the next seq of this node's stream; returns the seq."""
        if not isinstance(payload, bytes) or len(payload) > MAX_PAYLOAD:
            raise ValueError(f"payload must be bytes of at most {MAX_PAYLOAD}")
        seq = self._next_seq
        self._sent[seq] = payload
        if len(self._sent) > self._buffer_size:
            evicted = seq_add(seq, -self._buffer_size)
            del self._sent[evicted]
            self._repaired_at.pop(evicted, None)
        self._next_seq = seq_add(seq, 1)
        self._out.append(RbData(seq, payload))
        self.stats.data_sent += 1
        return seq

    def peer_up(self, peer: NodeId, next_seq: int, now: float) -> None:
        """Start receiving `peer`'s stream at `next_seq` (from its heartbeat).
        Calling it again for a known peer restarts its stream (new incarnation)."""
        _check_u32("peer", peer)
        _check_u32("next_seq", next_seq)
        if peer == self.node_id:
            raise ValueError("a node is not its own peer")
        self._streams[peer] = _Stream(next_seq)
        self._timer_dirty = True

    def peer_down(self, peer: NodeId, now: float) -> None:
        if self._streams.pop(peer, None) is not None:
            self._timer_dirty = True

    def observe_next_seq(self, peer: NodeId, next_seq: int, now: float) -> None:
        """`peer`'s heartbeat announced `next_seq`: any seq before it exists, so
        a lost tail of its stream shows up as gaps even if no data follows."""
        st = self._streams.get(peer)
        if st is None:
            self.stats.drop("observe-unknown-peer")
            return
        if not 0 <= next_seq <= SEQ_MASK:
            self.stats.drop("observe-bad-seq")
            return
        if seq_lt(st.known_end, next_seq):
            self._extend(peer, st, next_seq, now, exclude=None)

    # -- wire input -------------------------------------------------------------------

    def receive(self, msg: object, source: NodeId, now: float) -> None:
        if source == self.node_id:
            self.stats.drop("own-message")
            return
        st = self._streams.get(source)
        if st is None:
            self.stats.dropped_unknown_peer += 1
            return
        if isinstance(msg, RbData):
            self._on_data(source, st, msg, now)
        elif isinstance(msg, RbNak):
            self._on_nak(source, msg, now)
        elif isinstance(msg, RbLost):
            self._on_lost(source, st, msg, now)
        else:
            self.stats.drop("unexpected-message")

    def _on_data(self, peer: NodeId, st: _Stream, msg: RbData, now: float) -> None:
        s = msg.seq
        if seq_sub(s, st.expected) < 0 or s in st.held:
            self.stats.duplicates += 1
            return
        end = seq_add(s, 1)
        if seq_lt(st.known_end, end):
            self._extend(peer, st, end, now, exclude=s)
            # a skip inside _extend keeps s: it is the newest seq of the window
        else:
            st.remove_gap(s)
            self._timer_dirty = True
        st.held[s] = msg.payload
        self._deliver_ready(peer, st)

    def _on_nak(self, source: NodeId, msg: RbNak, now: float) -> None:
        if msg.target == self.node_id:
            self._answer_nak(source, msg, now)
            return
        st = self._streams.get(msg.target)
        if st is None or not st.gaps:
            return
        # NAK suppression: the repair this NAK asks for reaches us too, so hold
        # our own NAK for those seqs until it had time to arrive.
        due = now + self._nak_retry + self._rng.random() * self._nak_backoff
        postponed = False
        for s in self._gaps_in(st, msg.seq_ranges()):
            gap = st.gaps[s]
            if gap.due < due:
                st.set_due(gap, due)
                postponed = True
        if postponed:
            self.stats.naks_suppressed += 1
            self._timer_dirty = True

    def _on_lost(self, peer: NodeId, st: _Stream, msg: RbLost, now: float) -> None:
        if seq_lt(st.expected, msg.first_available):
            self._skip_to(peer, st, msg.first_available)
        if seq_lt(st.known_end, msg.next_seq):
            self._extend(peer, st, msg.next_seq, now, exclude=None)

    # -- sender: answering NAKs ---------------------------------------------------------

    def _answer_nak(self, source: NodeId, msg: RbNak, now: float) -> None:
        first = self.first_available
        count = len(self._sent)
        ranges = list(msg.seq_ranges())
        # Every range must lie in what this stream can have sent recently:
        # from MAX_RANGE_SPAN before the buffer up to next_seq. A range far
        # outside (up to 2**31 away, where serial order is undefined) is not
        # a receiver's honest gap: the whole NAK is refused, no resync.
        for start, end in ranges:
            if not -MAX_RANGE_SPAN <= seq_sub(start, first) <= count:
                self.stats.drop("nak-out-of-window")
                return
            if seq_sub(end, first) >= count:
                self.stats.drop("nak-beyond-next-seq")
        lost_from: int | None = None
        budget = start_budget = self._repair_budget(now)
        deferred = False
        for start, end in ranges:
            lo = seq_sub(start, first)
            hi = lo + seq_sub(end, start)
            if lo < 0 and lost_from is None:
                lost_from = start
            for i in range(max(lo, 0), min(hi, count - 1) + 1):
                if budget == 0:
                    # The rest waits for the receiver's next NAK (nak_retry
                    # later): repairs are paced instead of one burst that
                    # blocks this loop and floods the sync network.
                    deferred = True
                    break
                budget -= self._retransmit(seq_add(first, i), now)
        self._repair_tokens -= start_budget - budget
        if deferred:
            self.stats.repairs_deferred += 1
        if lost_from is not None:
            self._report_lost(source, lost_from, now)
        if len(self._repaired_at) > 4096:
            self._prune_repairs(now)

    def _repair_budget(self, now: float) -> int:
        """Repairs this node may send now (see MAX_REPAIRS_PER_NAK)."""
        elapsed = max(now - self._tokens_at, 0.0)
        self._tokens_at = max(now, self._tokens_at)
        refill = elapsed * MAX_REPAIRS_PER_NAK / self._nak_retry
        self._repair_tokens = min(float(MAX_REPAIRS_PER_NAK), self._repair_tokens + refill)
        return int(self._repair_tokens)

    def _retransmit(self, seq: int, now: float) -> int:
        """Queue a repair of `seq`; 1 if queued, 0 if suppressed."""
        last = self._repaired_at.get(seq)
        if last is not None and now - last < self._repair_holdoff:
            # repair suppression: several receivers NAKing one loss get one repair
            self.stats.repairs_suppressed += 1
            return 0
        self._repaired_at[seq] = now
        self._out.append(RbData(seq, self._sent[seq]))
        self.stats.retransmitted += 1
        return 1

    def _report_lost(self, source: NodeId, lost_from: int, now: float) -> None:
        if self._lost_sent_at is None or now - self._lost_sent_at >= self._repair_holdoff:
            self._lost_sent_at = now
            self._out.append(RbLost(self.first_available, self._next_seq))
            self.stats.lost_sent += 1
        # Data lost from before the last resync point is covered by that resync.
        # A resync point that fell out of the NAKable range is forgotten, so the
        # comparison below is always between seqs less than 2**31 apart.
        if self._resync_point is not None and not (
            -MAX_RANGE_SPAN <= seq_sub(self._resync_point, self.first_available) <= len(self._sent)
        ):
            self._resync_point = None
        if self._resync_point is None or not seq_lt(lost_from, self._resync_point):
            self._resync_point = self._next_seq
            self.stats.out_of_sync += 1
            self._events.append(OutOfSync(source, "sender"))

    def _prune_repairs(self, now: float) -> None:
        self._repaired_at = {
            s: t for s, t in self._repaired_at.items() if now - t < self._repair_holdoff
        }

    # -- receiver: window bookkeeping -----------------------------------------------------

    def _extend(
        self, peer: NodeId, st: _Stream, new_end: int, now: float, exclude: int | None
    ) -> None:
        """Seqs up to `new_end` exist: the ones not yet seen become gaps."""
        if seq_sub(new_end, st.expected) > self._buffer_size:
            # Some of what lies before `new_end` has left the sender's buffer:
            # the stream cannot be repaired, so the layer above resyncs (the
            # OutOfSync raised here), and that resync covers every seq sent
            # before now. Skip straight to the newest seq, once: waiting at
            # the old window edge instead would NAK seqs the resync makes
            # moot and move the window (and raise OutOfSync) again with every
            # later datagram, the storm after a long sync outage.
            target = new_end if exclude is None else exclude
            self._skip_to(peer, st, target)
            if exclude is not None:
                st.known_end = new_end
                return  # `exclude` (the data in hand) is the next to deliver
        # One backoff for all gaps found at once, so that they are NAKed together.
        due = now + self._rng.random() * self._nak_backoff
        s = st.known_end
        while s != new_end:
            if s != exclude:
                st.add_gap(s, due)
            s = seq_add(s, 1)
        st.known_end = new_end
        self._timer_dirty = True

    def _skip_to(self, peer: NodeId, st: _Stream, target: int) -> None:
        """Give up on everything before `target`: it cannot be repaired."""
        st.drop_before(target)
        st.expected = target
        if seq_lt(st.known_end, target):
            st.known_end = target
        self.stats.out_of_sync += 1
        self._events.append(OutOfSync(peer, "receiver"))
        self._timer_dirty = True
        self._deliver_ready(peer, st)

    def _deliver_ready(self, peer: NodeId, st: _Stream) -> None:
        while (payload := st.held.pop(st.expected, None)) is not None:
            self._events.append(Delivered(peer, st.expected, payload))
            self.stats.delivered += 1
            st.expected = seq_add(st.expected, 1)

    def _gaps_in(self, st: _Stream, ranges: Iterable[tuple[int, int]]) -> list[int]:
        """The gaps of `st` inside the inclusive ranges (cost bounded by the
        smaller of range span and gap count, whatever the ranges claim)."""
        found: list[int] = []
        for start, end in ranges:
            span = seq_sub(end, start) + 1
            if span <= len(st.gaps):
                found.extend(s for s in (seq_add(start, i) for i in range(span)) if s in st.gaps)
            else:
                found.extend(s for s in st.gaps if 0 <= seq_sub(s, start) < span)
        return found

    # -- timers ----------------------------------------------------------------------

    def next_timer(self) -> float | None:
        if self._timer_dirty:
            dues = [d for st in self._streams.values() if (d := st.min_due()) is not None]
            self._timer = min(dues) if dues else None
            self._timer_dirty = False
        return self._timer

    def handle_timer(self, now: float) -> None:
        for peer, st in list(self._streams.items()):
            due = st.min_due()
            if due is not None and due <= now:
                self._nak_round(peer, st, now)
        self._timer_dirty = True

    def _nak_round(self, peer: NodeId, st: _Stream, now: float) -> None:
        exhausted = [s for s, g in st.gaps.items() if g.due <= now and g.naks >= self._max_naks]
        if exhausted:
            # Unanswered max_naks times: treat as lost and move past it.
            newest = max(exhausted, key=lambda s: seq_sub(s, st.expected))
            self._skip_to(peer, st, seq_add(newest, 1))
            due = st.min_due()
            if due is None or due > now:
                return
        # Batch: one NAK names every gap that is due, still in its first backoff
        # (due within nak_backoff), or halfway through its retry wait, so gaps
        # found at different times fall into step instead of costing a NAK
        # each. Gaps held back by a NAK heard from another receiver are not
        # due that soon and stay out.
        horizon = now + max(self._nak_backoff, self._nak_retry / 2)
        batch = sorted(
            (s for s, g in st.gaps.items() if g.due <= horizon),
            key=lambda s: seq_sub(s, st.expected),
        )
        runs = _compress(batch)
        for i in range(0, len(runs), MAX_NAK_RANGES):
            chunk = runs[i : i + MAX_NAK_RANGES]
            self._out.append(RbNak(peer, tuple(pack_range(a, b) for a, b in chunk)))
            self.stats.naks_sent += 1
        # Jitter keeps receivers that all missed a repair from re-NAKing in step.
        due = now + self._nak_retry + self._rng.random() * self._nak_backoff
        for s in batch:
            gap = st.gaps[s]
            gap.naks += 1
            st.set_due(gap, due)

    # -- outputs --------------------------------------------------------------------

    def messages_to_send(self, now: float) -> list[RbMessage]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> BroadcastEvent | None:
        return self._events.popleft() if self._events else None
