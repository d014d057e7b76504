"""Tests of the reliable-broadcast layer, driven by hand on a virtual clock.

`Net` moves encoded messages between a few ReliableBroadcast objects with a
fixed latency; a test decides which copies are lost, duplicated or delayed.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from availability_manager.broadcast import (
    MAX_NAK_RANGES,
    MAX_PAYLOAD,
    MAX_RANGE_SPAN,
    MAX_REPAIRS_PER_NAK,
    SEQ_HALF,
    SEQ_MASK,
    Delivered,
    OutOfSync,
    RbData,
    RbLost,
    RbNak,
    ReliableBroadcast,
    pack_range,
    seq_add,
    seq_lt,
    seq_sub,
)
from availability_manager.wire import WireError, decode_message, encode_message

A, B, C, D = 0xC0000201, 0xC0000202, 0xC0000203, 0xC0000204  # 192.0.2.1..4
LATENCY = 0.001

# (src, dst, msg) -> list of extra delays, one per copy delivered ([] = lost)
Fate = Callable[[int, int, object], list[float]]


def deliver_once(src: int, dst: int, msg: object) -> list[float]:
    return [0.0]


class Net:
    """A broadcast network of ReliableBroadcast objects on a virtual clock."""

    def __init__(self, nodes: list[ReliableBroadcast], fate: Fate = deliver_once) -> None:
        self.nodes = {n.node_id: n for n in nodes}
        self.fate = fate
        self.now = 0.0
        self.inflight: list[tuple[float, int, int, int, bytes]] = []
        self.counter = itertools.count()
        self.delivered: dict[int, list[Delivered]] = {n: [] for n in self.nodes}
        self.out_of_sync: dict[int, list[OutOfSync]] = {n: [] for n in self.nodes}
        self.sent: list[tuple[int, object]] = []  # every message put on the wire

    def connect_all(self) -> None:
        for a in self.nodes.values():
            for b in self.nodes.values():
                if a is not b:
                    a.peer_up(b.node_id, b.next_seq, self.now)

    def heartbeat(self) -> None:
        """What heartbeats feed the layer: every node's next_seq to every other."""
        for a in self.nodes.values():
            for b in self.nodes.values():
                if a is not b:
                    b.observe_next_seq(a.node_id, a.next_seq, self.now)

    def _flush(self) -> None:
        for src, node in self.nodes.items():
            for msg in node.messages_to_send(self.now):
                self.sent.append((src, msg))
                data = encode_message(msg)  # through the real codec
                for dst in self.nodes:
                    if dst == src:
                        continue
                    for extra in self.fate(src, dst, msg):
                        when = self.now + LATENCY + extra
                        heapq.heappush(self.inflight, (when, next(self.counter), dst, src, data))

    def _collect(self) -> None:
        for nid, node in self.nodes.items():
            while (ev := node.next_event()) is not None:
                if isinstance(ev, Delivered):
                    self.delivered[nid].append(ev)
                else:
                    self.out_of_sync[nid].append(ev)

    def run(self, until: float) -> None:
        while True:
            self._flush()
            self._collect()
            times = [t for n in self.nodes.values() if (t := n.next_timer()) is not None]
            if self.inflight:
                times.append(self.inflight[0][0])
            if not times or min(times) > until:
                break
            self.now = max(self.now, min(times))
            while self.inflight and self.inflight[0][0] <= self.now:
                _, _, dst, src, data = heapq.heappop(self.inflight)
                self.nodes[dst].receive(decode_message(data), src, self.now)
            for node in self.nodes.values():
                t = node.next_timer()
                if t is not None and t <= self.now:
                    node.handle_timer(self.now)
        self.now = until

    def payloads(self, receiver: int, source: int) -> list[bytes]:
        return [ev.payload for ev in self.delivered[receiver] if ev.source == source]

    def count(self, kind: type) -> int:
        return sum(1 for _, m in self.sent if isinstance(m, kind))


def make(node_id: int, seed: int = 1, **kw: object) -> ReliableBroadcast:
    kw.setdefault("initial_seq", 1000)
    return ReliableBroadcast(node_id, random.Random(seed + node_id), now=0.0, **kw)  # type: ignore[arg-type]


def drop_first(targets: set[tuple[int, int]]) -> Fate:
    """Lose the first copy of data seq `s` to `dst` for each (dst, s) in targets."""
    pending = set(targets)

    def fate(src: int, dst: int, msg: object) -> list[float]:
        if isinstance(msg, RbData) and (dst, msg.seq) in pending:
            pending.discard((dst, msg.seq))
            return []
        return [0.0]

    return fate


# -- wire messages -----------------------------------------------------------------


def test_messages_round_trip_through_the_codec() -> None:
    msgs = [
        RbData(SEQ_MASK, b"x" * MAX_PAYLOAD),
        RbNak(A, (pack_range(5, 9), pack_range(SEQ_MASK, 2))),
        RbLost(first_available=SEQ_MASK - 1, next_seq=3),
    ]
    for msg in msgs:
        assert decode_message(encode_message(msg)) == msg


@pytest.mark.parametrize(
    "build",
    [
        lambda: RbData(-1, b""),
        lambda: RbData(1 << 32, b""),
        lambda: RbData(0, b"x" * (MAX_PAYLOAD + 1)),
        lambda: RbNak(A, ()),
        lambda: RbNak(A, tuple(pack_range(i, i) for i in range(MAX_NAK_RANGES + 1))),
        lambda: RbNak(A, (pack_range(9, 5),)),  # reversed
        lambda: RbNak(A, (pack_range(0, 1 << 21),)),  # longer than any buffer
        lambda: RbLost(first_available=10, next_seq=5),
    ],
)
def test_invalid_messages_are_refused(build: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        build()


def test_malformed_nak_on_the_wire_is_a_wire_error() -> None:
    # A reversed range, encoded by hand past the dataclass check.
    good = encode_message(RbNak(A, (pack_range(5, 9),)))
    bad = good[:-8] + pack_range(9, 5).to_bytes(8, "big")
    with pytest.raises(WireError) as exc:
        decode_message(bad)
    assert exc.value.reason == "invalid-value"


def test_serial_arithmetic_across_the_wrap() -> None:
    assert seq_lt(SEQ_MASK, 0)
    assert not seq_lt(0, SEQ_MASK)
    assert seq_sub(2, SEQ_MASK - 1) == 4
    assert seq_sub(SEQ_MASK - 1, 2) == -4
    assert seq_add(SEQ_MASK, 1) == 0


# -- delivery ----------------------------------------------------------------------------


def test_in_order_delivery_to_every_peer_without_naks() -> None:
    nodes = [make(n) for n in (A, B, C)]
    net = Net(nodes)
    net.connect_all()
    for i in range(5):
        for n in nodes:
            n.send(f"{n.node_id}-{i}".encode(), net.now)
        net.run(net.now + 0.01)
    for r in (A, B, C):
        for s in (A, B, C):
            if r != s:
                assert net.payloads(r, s) == [f"{s}-{i}".encode() for i in range(5)]
    assert net.count(RbNak) == 0
    assert all(n.stats.data_sent == 5 and n.stats.retransmitted == 0 for n in nodes)


def test_lost_data_is_naked_and_repaired() -> None:
    a, b = make(A), make(B)
    net = Net([a, b], drop_first({(B, 1001)}))
    net.connect_all()
    for i in range(3):
        a.send(bytes([i]), net.now)
    net.run(0.002)
    assert net.payloads(B, A) == [b"\x00"]  # 1002 is held behind the gap
    assert b.held_count(A) == 1 and b.missing_count(A) == 1
    net.run(0.1)
    assert net.payloads(B, A) == [b"\x00", b"\x01", b"\x02"]
    assert [ev.seq for ev in net.delivered[B]] == [1000, 1001, 1002]
    assert b.stats.naks_sent == 1 and a.stats.retransmitted == 1
    assert b.missing_count(A) == 0 and b.held_count(A) == 0
    assert b.next_timer() is None


def test_a_lost_nak_is_repeated_after_nak_retry() -> None:
    lose_data = drop_first({(B, 1000)})
    lost_naks: list[RbNak] = []

    def fate(src: int, dst: int, msg: object) -> list[float]:
        if isinstance(msg, RbNak) and not lost_naks:
            lost_naks.append(msg)  # the first NAK never reaches the sender
            return []
        return lose_data(src, dst, msg)

    a, b = make(A), make(B)
    net = Net([a, b], fate)
    net.connect_all()
    a.send(b"p0", 0.0)
    a.send(b"p1", 0.0)
    net.run(0.04)
    assert net.payloads(B, A) == []
    assert b.stats.naks_sent == 1 and a.stats.retransmitted == 0
    net.run(0.2)
    assert net.payloads(B, A) == [b"p0", b"p1"]
    assert b.stats.naks_sent == 2 and a.stats.retransmitted == 1


def test_tail_loss_is_found_through_observe_next_seq() -> None:
    a, b = make(A), make(B)
    net = Net([a, b], drop_first({(B, 1001)}))
    net.connect_all()
    a.send(b"first", 0.0)
    a.send(b"last", 0.0)
    net.run(1.0)
    # nothing after the lost packet: B cannot know it is missing
    assert net.payloads(B, A) == [b"first"]
    assert b.next_timer() is None
    net.heartbeat()
    net.run(1.2)
    assert net.payloads(B, A) == [b"first", b"last"]
    assert b.stats.naks_sent == 1


def test_duplicates_are_dropped_and_counted() -> None:
    a, b = make(A), make(B)
    net = Net([a, b], lambda s, d, m: [0.0, 0.0005])  # every copy twice
    net.connect_all()
    for i in range(4):
        a.send(bytes([i]), 0.0)
    net.run(0.1)
    assert net.payloads(B, A) == [bytes([i]) for i in range(4)]
    assert b.stats.duplicates == 4
    assert b.stats.delivered == 4


def test_reordered_data_is_held_and_delivered_in_order() -> None:
    b = make(B)
    b.peer_up(A, 1000, 0.0)
    for seq in (1003, 1001, 1002):
        b.receive(RbData(seq, bytes([seq - 1000])), A, 0.0)
    assert b.next_event() is None
    assert b.held_count(A) == 3 and b.missing_count(A) == 1
    b.receive(RbData(1000, b"\x00"), A, 0.0)
    events = []
    while (ev := b.next_event()) is not None:
        events.append(ev)
    assert events == [Delivered(A, 1000 + i, bytes([i])) for i in range(4)]
    assert b.held_count(A) == 0 and b.missing_count(A) == 0
    assert b.messages_to_send(0.0) == []  # the gap filled before any NAK was due


def test_data_from_an_unknown_peer_is_dropped_and_counted() -> None:
    b = make(B)
    b.receive(RbData(7, b"x"), A, 0.0)
    b.receive(RbNak(B, (pack_range(0, 0),)), A, 0.0)
    assert b.next_event() is None
    assert b.messages_to_send(0.0) == []
    assert b.stats.dropped_unknown_peer == 2


def test_unexpected_input_is_counted_never_raised() -> None:
    b = make(B)
    b.peer_up(A, 0, 0.0)
    b.receive(object(), A, 0.0)
    b.receive(RbData(0, b"mine"), B, 0.0)
    b.observe_next_seq(C, 5, 0.0)
    b.observe_next_seq(A, -1, 0.0)
    assert b.next_event() is None
    assert b.stats.dropped == {
        "unexpected-message": 1,
        "own-message": 1,
        "observe-unknown-peer": 1,
        "observe-bad-seq": 1,
    }
    assert b.expected_seq(A) == 0 and b.missing_count(A) == 0


def test_peer_down_forgets_the_stream_and_its_timers() -> None:
    b = make(B)
    b.peer_up(A, 0, 0.0)
    b.receive(RbData(3, b"x"), A, 0.0)
    assert b.next_timer() is not None
    b.peer_down(A, 0.0)
    assert b.next_timer() is None
    assert b.peers() == frozenset()
    b.receive(RbData(0, b"x"), A, 0.0)
    assert b.stats.dropped_unknown_peer == 1


# -- suppression -----------------------------------------------------------------------


def test_nak_suppression_gives_fewer_naks_than_receivers() -> None:
    naks = []
    suppressed = 0
    for seed in range(40):
        nodes = [make(n, seed=seed) for n in (A, B, C, D)]
        net = Net(nodes, drop_first({(B, 1001), (C, 1001), (D, 1001)}))
        net.connect_all()
        nodes[0].send(b"0", 0.0)
        nodes[0].send(b"1", 0.0)
        nodes[0].send(b"2", 0.0)
        net.run(0.5)
        for r in (B, C, D):
            assert net.payloads(r, A) == [b"0", b"1", b"2"]
        naks.append(net.count(RbNak))
        suppressed += sum(n.stats.naks_suppressed for n in nodes)
    assert sum(naks) / len(naks) < 2.0  # three receivers missed the same packet
    assert suppressed > 0


def test_repair_suppression_answers_several_naks_once() -> None:
    a = make(A)
    for peer in (B, C):
        a.peer_up(peer, 0, 0.0)
    a.send(b"x", 0.0)
    a.messages_to_send(0.0)
    nak = RbNak(A, (pack_range(1000, 1000),))
    a.receive(nak, B, 0.001)
    a.receive(nak, C, 0.002)
    assert a.messages_to_send(0.002) == [RbData(1000, b"x")]
    assert a.stats.retransmitted == 1 and a.stats.repairs_suppressed == 1
    a.receive(nak, C, 0.1)  # after the holdoff: the first repair was lost to C
    assert a.messages_to_send(0.1) == [RbData(1000, b"x")]


def test_naks_of_several_gaps_are_batched_in_one_message() -> None:
    b = make(B)
    b.peer_up(A, 0, 0.0)
    b.receive(RbData(2, b"x"), A, 0.0)
    b.receive(RbData(5, b"y"), A, 0.0)
    b.observe_next_seq(A, 9, 0.0)
    t = b.next_timer()
    assert t is not None and 0.0 <= t < 0.01
    b.handle_timer(t)
    out = b.messages_to_send(t)
    assert out == [RbNak(A, (pack_range(0, 1), pack_range(3, 4), pack_range(6, 8)))]


# -- out of sync --------------------------------------------------------------------


def test_out_of_sync_on_both_sides_when_the_sender_buffer_is_too_short() -> None:
    a, b = make(A, buffer_size=4), make(B, buffer_size=4)
    b.peer_up(A, 1000, 0.0)
    a.peer_up(B, b.next_seq, 0.0)
    for i in range(3):
        a.send(bytes([i]), 0.0)
    b.receive(RbData(1002, b"\x02"), A, 0.0)  # 1000 and 1001 lost
    for i in range(3, 8):
        a.send(bytes([i]), 0.001)  # B hears none of these yet; 1000..1003 leave the buffer
    a.messages_to_send(0.001)
    t = b.next_timer()
    assert t is not None
    b.handle_timer(t)
    (nak,) = b.messages_to_send(t)
    a.receive(nak, B, t)
    assert a.next_event() == OutOfSync(B, "sender")
    assert a.messages_to_send(t) == [RbLost(first_available=1004, next_seq=1008)]
    assert a.stats.out_of_sync == 1
    b.receive(RbLost(1004, 1008), A, t)
    assert b.next_event() == OutOfSync(A, "receiver")
    assert b.expected_seq(A) == 1004
    assert b.held_count(A) == 0  # 1002 was before the skip point
    assert b.missing_count(A) == 4  # 1004..1007, to be NAKed next
    # A second NAK for the same lost data is answered, but no second resync.
    a.receive(RbNak(A, (pack_range(1001, 1001),)), B, t + 1.0)
    assert a.messages_to_send(t + 1.0) == [RbLost(first_available=1004, next_seq=1008)]
    assert a.next_event() is None


def test_receiver_skips_a_gap_larger_than_the_buffer() -> None:
    b = make(B, buffer_size=4)
    b.peer_up(A, 0, 0.0)
    b.receive(RbData(10, b"x"), A, 0.0)
    assert b.next_event() == OutOfSync(A, "receiver")
    # The resync that OutOfSync starts covers 0..9: none of them is NAKed.
    assert b.next_event() == Delivered(A, 10, b"x")
    assert b.expected_seq(A) == 11
    assert b.missing_count(A) == 0 and b.next_timer() is None
    assert b.stats.out_of_sync == 1


def test_heal_after_a_long_outage_skips_once_not_per_datagram() -> None:
    """Issue 18.1: a peer 25,000 payloads ahead at the heal (window 16,384).
    Before: every later datagram moved the window by one, each a new
    OutOfSync (a forced resync request) and an O(window) rebuild."""
    b = make(B, buffer_size=16384)
    b.peer_up(A, 0, 0.0)
    for seq in range(25_000, 25_200):
        b.receive(RbData(seq, b"d"), A, 0.001)
    events = []
    while (ev := b.next_event()) is not None:
        events.append(ev)
    assert [e for e in events if isinstance(e, OutOfSync)] == [OutOfSync(A, "receiver")]
    assert [e.seq for e in events if isinstance(e, Delivered)] == list(range(25_000, 25_200))
    assert b.missing_count(A) == 0 and b.stats.out_of_sync == 1
    b.handle_timer(1.0)
    assert b.messages_to_send(1.0) == []  # nothing to NAK: the resync covers it


def test_a_heartbeat_far_ahead_skips_once_too() -> None:
    b = make(B, buffer_size=8)
    b.peer_up(A, 0, 0.0)
    b.observe_next_seq(A, 100, 0.0)
    assert b.next_event() == OutOfSync(A, "receiver")
    assert b.expected_seq(A) == 100 and b.missing_count(A) == 0
    b.receive(RbData(100, b"x"), A, 0.0)
    assert b.next_event() == Delivered(A, 100, b"x")
    assert b.next_event() is None


def test_one_nak_causes_a_bounded_number_of_repairs() -> None:
    """Issue 18.2: a 60-byte NAK made a node resend its whole buffer at once."""
    a = make(A, buffer_size=16384, initial_seq=0)
    a.peer_up(B, 0, 0.0)
    for _ in range(16384):
        a.send(b"p", 0.0)
    a.messages_to_send(0.0)
    a.receive(RbNak(A, (pack_range(0, 16383),)), B, 0.1)
    repairs = a.messages_to_send(0.1)
    assert len(repairs) == MAX_REPAIRS_PER_NAK
    assert [m.seq for m in repairs if isinstance(m, RbData)] == list(range(MAX_REPAIRS_PER_NAK))
    assert a.stats.repairs_deferred == 1
    # the receiver's next NAK (still naming everything) gets the next share
    a.receive(RbNak(A, (pack_range(0, 16383),)), B, 0.2)
    again = [m.seq for m in a.messages_to_send(0.2) if isinstance(m, RbData)]
    assert len(again) == MAX_REPAIRS_PER_NAK


@pytest.mark.parametrize("offset", [SEQ_HALF, SEQ_HALF - 1, SEQ_HALF + 1, MAX_RANGE_SPAN + 10])
def test_a_nak_far_outside_the_stream_is_refused_and_starts_no_resync(offset: int) -> None:
    """Issue 18.2: a NAK 2**31 away from the resync point defeated the
    de-duplication of resyncs (serial order is undefined there)."""
    a = make(A, buffer_size=4, initial_seq=1000)
    a.peer_up(B, 0, 0.0)
    for _ in range(8):
        a.send(b"p", 0.0)
    a.messages_to_send(0.0)
    bogus = (a.first_available - offset) & SEQ_MASK
    for t in (0.1, 0.2, 0.3):
        a.receive(RbNak(A, (pack_range(bogus, bogus),)), B, t)
        assert a.messages_to_send(t) == []
    assert a.next_event() is None and a.stats.out_of_sync == 0
    assert a.stats.dropped["nak-out-of-window"] == 3


def test_repeated_naks_for_lost_data_start_one_resync() -> None:
    a = make(A, buffer_size=4, initial_seq=1000)
    a.peer_up(B, 0, 0.0)
    for _ in range(8):
        a.send(b"p", 0.0)
    a.messages_to_send(0.0)
    for t in (0.1, 0.2, 0.3, 0.4):
        a.receive(RbNak(A, (pack_range(1001, 1001),)), B, t)  # left the buffer
    assert a.next_event() == OutOfSync(B, "sender")
    assert a.next_event() is None and a.stats.out_of_sync == 1


def test_receiver_gives_up_after_max_naks_and_goes_on() -> None:
    a, b = make(A), make(B, max_naks_per_range=3)

    def fate(src: int, dst: int, msg: object) -> list[float]:
        if isinstance(msg, RbNak):
            return []  # the sender never hears a NAK
        return [] if isinstance(msg, RbData) and msg.seq == 1000 else [0.0]

    net = Net([a, b], fate)
    net.connect_all()
    a.send(b"lost", 0.0)
    a.send(b"next", 0.0)
    net.run(2.0)
    assert b.stats.naks_sent == 3
    assert net.out_of_sync[B] == [OutOfSync(A, "receiver")]
    assert net.payloads(B, A) == [b"next"]
    assert b.next_timer() is None


# -- wrap and memory ---------------------------------------------------------------


def test_sequence_numbers_wrap_around() -> None:
    start = SEQ_MASK - 2
    a = make(A, initial_seq=start)
    b, c = make(B), make(C)
    net = Net([a, b, c], drop_first({(B, SEQ_MASK), (C, 0), (B, 1)}))
    net.connect_all()
    seqs = [a.send(bytes([i]), 0.0) for i in range(6)]
    net.heartbeat()
    net.run(0.5)
    assert seqs == [SEQ_MASK - 2, SEQ_MASK - 1, SEQ_MASK, 0, 1, 2]
    for r in (B, C):
        assert [ev.seq for ev in net.delivered[r]] == seqs
        assert net.payloads(r, A) == [bytes([i]) for i in range(6)]
    assert a.stats.retransmitted == 3


def test_memory_is_bounded_by_buffer_size() -> None:
    a = make(A, buffer_size=8)
    for i in range(100):
        a.send(bytes([i]), 0.0)
        assert a.buffered <= 8
    assert a.buffered == 8 and a.first_available == a.next_seq - 8
    b = make(B, buffer_size=8)
    b.peer_up(A, 0, 0.0)
    for seq in range(1, 200, 2):  # every other packet lost: a gap always open
        b.receive(RbData(seq, b"x"), A, 0.0)
        assert b.held_count(A) + b.missing_count(A) <= 8
    b.observe_next_seq(A, 5000, 0.0)
    assert b.held_count(A) + b.missing_count(A) <= 8


# -- property: eventual delivery --------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    schedule=st.lists(
        st.tuples(st.sampled_from(["ok", "lose", "dup"]), st.integers(0, 20)),
        min_size=1,
        max_size=60,
    ),
    sends=st.lists(st.integers(0, 2), min_size=1, max_size=25),
    start=st.sampled_from([0, 1000, SEQ_MASK - 5]),
    seed=st.integers(0, 2**16),
)
def test_every_receiver_gets_exactly_the_sent_sequence(
    schedule: list[tuple[str, int]], sends: list[int], start: int, seed: int
) -> None:
    lossy_until = 0.3
    fates = itertools.cycle(schedule)

    def fate(src: int, dst: int, msg: object) -> list[float]:
        if net.now >= lossy_until:
            return [0.0]
        kind, delay_ms = next(fates)
        extra = delay_ms / 1000  # up to 20 ms: reorders
        return {"ok": [extra], "lose": [], "dup": [extra, 0.0]}[kind]

    ids = (A, B, C)
    nodes = [
        ReliableBroadcast(
            n,
            random.Random(seed + i),
            initial_seq=seq_add(start, i),
            max_naks_per_range=1000,
            now=0.0,
        )
        for i, n in enumerate(ids)
    ]
    net = Net(nodes, fate)
    net.connect_all()
    expected: dict[int, list[bytes]] = {n: [] for n in ids}
    for k, who in enumerate(sends):
        payload = f"{who}:{k}".encode()
        nodes[who].send(payload, net.now)
        expected[ids[who]].append(payload)
        net.run(net.now + 0.01)
    t = net.now
    while t < lossy_until + 1.0:  # heartbeats every 50 ms, as in the cluster
        net.heartbeat()
        t += 0.05
        net.run(t)
    for r in ids:
        for s in ids:
            if r != s:
                assert net.payloads(r, s) == expected[s]
        assert net.out_of_sync[r] == []


@settings(max_examples=60, deadline=None)
@given(
    schedule=st.lists(st.sampled_from(["ok", "lose", "dup", "late"]), min_size=1, max_size=40),
    sends=st.lists(st.integers(0, 2), min_size=1, max_size=40),
    buffer_size=st.integers(1, 6),
    max_naks=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_under_any_loss_delivery_is_ordered_and_every_hole_is_reported(
    schedule: list[str], sends: list[int], buffer_size: int, max_naks: int, seed: int
) -> None:
    fates = itertools.cycle(schedule)

    def fate(src: int, dst: int, msg: object) -> list[float]:
        kind = next(fates)
        return {"ok": [0.0], "lose": [], "dup": [0.0, 0.003], "late": [0.2]}[kind]

    ids = (A, B, C)
    nodes = [
        make(n, seed=seed, buffer_size=buffer_size, max_naks_per_range=max_naks, initial_seq=None)
        for n in ids
    ]
    net = Net(nodes, fate)
    net.connect_all()
    sent: dict[int, list[bytes]] = {n: [] for n in ids}
    for k, who in enumerate(sends):
        payload = f"{who}:{k}".encode()
        nodes[who].send(payload, net.now)
        sent[ids[who]].append(payload)
        net.heartbeat()
        net.run(net.now + 0.02)
        for n in nodes:  # memory stays bounded at every step
            assert n.buffered <= buffer_size
            assert all(n.held_count(p) + n.missing_count(p) <= buffer_size for p in ids)
    net.run(net.now + 5.0)
    for r in ids:
        for s in ids:
            if r == s:
                continue
            got = net.payloads(r, s)
            index = [sent[s].index(p) for p in got]
            assert index == sorted(set(index))  # in order, each at most once
            if index != list(range(len(index))):  # a hole: it must have been reported
                assert OutOfSync(s, "receiver") in net.out_of_sync[r]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "remove", "move", "drop"]),
            st.integers(0, 15),
            st.integers(0, 5),
        ),
        max_size=80,
    )
)
def test_earliest_gap_due_is_tracked_through_every_change(ops: list[tuple[str, int, int]]) -> None:
    from availability_manager.broadcast import _Stream

    stream = _Stream(0)
    for op, seq, due in ops:
        if op == "add" and seq not in stream.gaps:
            stream.add_gap(seq, float(due))
        elif op == "remove":
            stream.remove_gap(seq)
        elif op == "move" and seq in stream.gaps:
            stream.set_due(stream.gaps[seq], float(due))
        elif op == "drop":
            stream.drop_before(seq)
        brute = min((g.due for g in stream.gaps.values()), default=None)
        assert stream.min_due() == brute


def test_repairs_are_paced_across_naks_and_receivers() -> None:
    """Issue 18.1: a NAK per receiver, each naming other data, added up to
    one burst; now all repairs together keep to MAX_REPAIRS_PER_NAK per
    nak_retry (50 ms here)."""
    a = make(A, buffer_size=4096, initial_seq=0)
    for peer in (B, C):
        a.peer_up(peer, 0, 0.0)
    for _ in range(4096):
        a.send(b"p", 0.0)
    a.messages_to_send(0.0)
    a.receive(RbNak(A, (pack_range(0, 1999),)), B, 1.0)
    a.receive(RbNak(A, (pack_range(2000, 3999),)), C, 1.0)
    first = [m.seq for m in a.messages_to_send(1.0) if isinstance(m, RbData)]
    assert first == list(range(MAX_REPAIRS_PER_NAK))  # C's NAK got nothing yet
    assert a.stats.repairs_deferred == 2
    # half the interval later, half the pace is back: C gets that share
    a.receive(RbNak(A, (pack_range(2000, 3999),)), C, 1.025)
    half = [m.seq for m in a.messages_to_send(1.025) if isinstance(m, RbData)]
    assert half == list(range(2000, 2000 + len(half)))
    assert MAX_REPAIRS_PER_NAK // 2 - 1 <= len(half) <= MAX_REPAIRS_PER_NAK // 2  # float time
    # after a quiet interval the whole share is there again, never more
    a.receive(RbNak(A, (pack_range(2000, 3999),)), C, 5.0)
    later = [m.seq for m in a.messages_to_send(5.0) if isinstance(m, RbData)]
    assert len(later) == MAX_REPAIRS_PER_NAK
