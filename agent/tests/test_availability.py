"""Tests of the availability layer: heartbeats, join rule, failure detection.

Availability objects are driven by hand on a fixed clock. `Net` is a tiny
in-test network: every tick it fires due timers, pulls each node's heartbeats,
passes them through the wire codec and delivers them to every other node,
unless a test drops them.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from availability_manager import wire
from availability_manager.availability import (
    DEADLINE_TOLERANCE,
    Availability,
    AvailabilityEvent,
    Heartbeat,
    NodeDown,
    NodeState,
    NodeStateChanged,
    NodeUp,
    OwnStatusChanged,
    PeerRefused,
)

FP = b"fp-12345"
OTHER_FP = b"fp-99999"
INTERVAL = 0.05
TICK = 0.01


def make(node: int, now: float = 0.0, incarnation: int = 1, **kw: object) -> Availability:
    fingerprint = kw.pop("fingerprint", FP)
    assert isinstance(fingerprint, bytes)
    return Availability(node, incarnation, fingerprint, now=now, **kw)  # type: ignore[arg-type]


def hb(**overrides: int | bytes) -> Heartbeat:
    fields: dict[str, int | bytes] = dict(
        incarnation=1,
        cluster_size=2,
        fingerprint=FP,
        wire_version=wire.WIRE_VERSION,
        state=0,
        weight=1,
        rb_next_seq=0,
        own_status=1,
    )
    fields.update(overrides)
    return Heartbeat(**fields)  # type: ignore[arg-type]


def drain(node: Availability) -> list[AvailabilityEvent]:
    return list(node.iter_events())


class Net:
    """Every node's heartbeats to every other node, through the wire codec."""

    def __init__(self, *nodes: Availability, now: float = 0.0) -> None:
        self.nodes: dict[int, Availability] = {}
        self.events: dict[int, list[AvailabilityEvent]] = {}
        self.ticks = round(now / TICK)
        self.drop: Callable[[int, int], bool] = lambda src, dst: False
        self.last_sent: dict[int, float] = {}
        for node in nodes:
            self.add(node)

    @property
    def now(self) -> float:
        return self.ticks * TICK

    def add(self, node: Availability) -> None:
        self.nodes[node.node_id] = node
        self.events.setdefault(node.node_id, [])

    def crash(self, node_id: int) -> None:
        del self.nodes[node_id]

    def step(self) -> None:
        now = self.now
        for node_id in sorted(self.nodes):
            node = self.nodes[node_id]
            if now >= node.next_timer():
                node.handle_timer(now)
            for msg in node.messages_to_send(now):
                self.last_sent[node_id] = now
                data = wire.encode_message(msg)
                for dst_id, dst in sorted(self.nodes.items()):
                    if dst_id != node_id and not self.drop(node_id, dst_id):
                        dst.receive(wire.decode_message(data), node_id, now)
        for node_id, node in self.nodes.items():
            self.events[node_id].extend(node.iter_events())
        self.ticks += 1

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / TICK)):
            self.step()

    def converged(self) -> bool:
        ids = set(self.nodes)
        return all(set(n.members()) == ids and n.settled(self.now) for n in self.nodes.values())


def up_events(events: list[AvailabilityEvent]) -> list[int]:
    return [e.node for e in events if isinstance(e, NodeUp)]


# -- heartbeat message ----------------------------------------------------------


def test_heartbeat_round_trips_through_the_wire() -> None:
    msg = hb(incarnation=2**64 - 1, cluster_size=65535, state=2, weight=1000, rb_next_seq=2**32 - 1)
    assert wire.decode_message(wire.encode_message(msg)) == msg


@pytest.mark.parametrize(
    "overrides",
    [
        {"cluster_size": 0},
        {"fingerprint": b"short"},
        {"fingerprint": b"123456789"},
        {"wire_version": 0},
        {"state": 3},
        {"weight": 0},
        {"weight": 1001},
        {"own_status": 2},
        {"incarnation": -1},
        {"rb_next_seq": 2**32},
    ],
)
def test_heartbeat_validation(overrides: dict[str, int | bytes]) -> None:
    with pytest.raises(ValueError):
        hb(**overrides)


@pytest.mark.parametrize(("attr_id", "value"), [(5, b"\x07"), (6, b"\x00\x00"), (8, b"\x09")])
def test_invalid_heartbeat_values_are_wire_errors(attr_id: int, value: bytes) -> None:
    """A peer sending an out-of-range state/weight/status: decoding refuses it."""
    data = bytearray(wire.encode_message(hb()))
    pos = wire.MSG_HEADER.size
    while pos < len(data):
        aid, length = wire.ATTR_HEADER.unpack_from(data, pos)
        pos += wire.ATTR_HEADER.size
        if aid == attr_id:
            assert length == len(value)
            data[pos : pos + length] = value
        pos += length
    with pytest.raises(wire.WireError) as err:
        wire.decode_message(bytes(data))
    assert err.value.reason == "invalid-value"


def test_constructor_validation() -> None:
    with pytest.raises(ValueError):
        make(1, fingerprint=b"short")
    with pytest.raises(ValueError):
        make(1, weight=0)
    with pytest.raises(ValueError):
        make(1, interval=0.0)
    with pytest.raises(ValueError):
        make(1, misses=0)
    with pytest.raises(ValueError):
        make(2**32)
    node = make(1)
    with pytest.raises(ValueError):
        node.set_rb_next_seq(2**32)
    with pytest.raises(ValueError):
        node.set_weight(1001, 0.0)


# -- sending ---------------------------------------------------------------------


def test_one_heartbeat_per_interval() -> None:
    node = make(1)
    assert node.next_timer() == 0.0
    assert len(node.messages_to_send(0.0)) == 1
    assert node.next_timer() == pytest.approx(INTERVAL)
    assert node.messages_to_send(0.049) == []
    assert len(node.messages_to_send(0.05)) == 1
    assert node.messages_to_send(0.05) == []
    assert node.stats["heartbeats_sent"] == 2
    assert node.next_timer() == pytest.approx(0.1)


def test_state_change_sends_an_immediate_heartbeat() -> None:
    node = make(1, weight=7)
    node.set_rb_next_seq(42)
    node.messages_to_send(0.0)
    node.set_state(NodeState.DRAINING, 0.02)
    assert node.next_timer() == 0.02
    [msg] = node.messages_to_send(0.02)
    assert (msg.state, msg.weight, msg.rb_next_seq, msg.own_status) == (1, 7, 42, 1)
    assert msg.cluster_size == 1 and msg.fingerprint == FP and msg.incarnation == 1
    assert node.next_timer() == pytest.approx(0.07)
    node.set_state(NodeState.DRAINING, 0.03)  # no change: no extra heartbeat
    assert node.messages_to_send(0.03) == []


def test_own_status_down_is_announced_at_once_and_leaves_members() -> None:
    node = make(1)
    node.messages_to_send(0.0)
    node.set_own_status(False, 0.01)
    assert drain(node) == [OwnStatusChanged(False)]
    [msg] = node.messages_to_send(0.01)
    assert msg.own_status == 0
    assert node.members() == {}
    node.set_own_status(False, 0.02)
    assert drain(node) == []
    node.set_own_status(True, 0.03)
    assert drain(node) == [OwnStatusChanged(True)]
    assert list(node.members()) == [1]


# -- join rule ---------------------------------------------------------------------


def test_peer_is_up_only_after_announcing_our_cluster_size() -> None:
    a = make(1)
    a.receive(hb(cluster_size=1), 2, 0.0)  # it does not know us yet
    assert drain(a) == []
    assert a.cluster_size() == 2 and not a.settled(0.0)
    assert list(a.members()) == [1]
    a.receive(hb(cluster_size=3), 2, 0.05)  # it counts someone we do not hear
    assert drain(a) == []
    a.receive(hb(cluster_size=2, rb_next_seq=9, weight=3), 2, 0.1)
    assert drain(a) == [NodeUp(2, 1, NodeState.ACTIVE, 3, 9)]
    assert a.settled(0.1) and list(a.members()) == [1, 2]
    a.receive(hb(cluster_size=5, rb_next_seq=9, weight=3), 2, 0.15)  # admitted stays admitted
    assert drain(a) == [] and list(a.members()) == [1, 2]


def test_a_new_peer_makes_us_announce_the_new_size_at_once() -> None:
    a = make(1)
    a.messages_to_send(0.0)
    a.receive(hb(cluster_size=1), 2, 0.01)
    [msg] = a.messages_to_send(0.01)
    assert msg.cluster_size == 2


@pytest.mark.parametrize("count", [2, 3, 5])
def test_nodes_started_together_converge(count: int) -> None:
    net = Net(*(make(n) for n in range(1, count + 1)))
    net.run(0.3)
    assert net.converged()
    for node_id, events in net.events.items():
        assert sorted(up_events(events)) == sorted(set(net.nodes) - {node_id})
        assert not any(isinstance(e, NodeDown) for e in events)


@settings(max_examples=40, deadline=None)
@given(
    count=st.integers(2, 5),
    offsets=st.lists(st.integers(0, 10), min_size=5, max_size=5),
    loss=st.floats(0.0, 0.6),
    seed=st.integers(0, 2**32 - 1),
)
def test_startup_with_loss_converges_once_loss_stops(
    count: int, offsets: list[int], loss: float, seed: int
) -> None:
    """Nodes start within 0.1 s of each other on a lossy network; a second
    after the loss stops every node has every node as a member."""
    rng = random.Random(seed)
    net = Net()
    net.drop = lambda src, dst: rng.random() < loss
    pending = sorted((offsets[i], i + 1) for i in range(count))
    for _ in range(50):  # 0.5 s with loss, nodes appearing at their offsets
        while pending and pending[0][0] <= net.ticks:
            _, node_id = pending.pop(0)
            net.add(make(node_id, now=net.now))
        net.step()
    net.drop = lambda src, dst: False
    net.run(1.0)
    assert net.converged()


def test_two_nodes_joining_a_running_cluster_at_once() -> None:
    net = Net(*(make(n) for n in (1, 2, 3)))
    net.run(0.5)
    assert net.converged()
    for events in net.events.values():
        events.clear()
    net.add(make(4, now=net.now))
    net.add(make(5, now=net.now))
    net.run(0.5)
    assert net.converged()
    for node_id in (1, 2, 3):
        assert sorted(up_events(net.events[node_id])) == [4, 5]
        assert not any(isinstance(e, NodeDown) for e in net.events[node_id])
    assert sorted(up_events(net.events[4])) == [1, 2, 3, 5]
    assert sorted(up_events(net.events[5])) == [1, 2, 3, 4]


def test_one_way_reachable_joiner_is_admitted_by_nobody() -> None:
    """Node 3 is heard by 1 but hears only 2: it announces 2, node 1 sees 3."""
    net = Net(make(1), make(2), make(3))
    net.drop = lambda src, dst: (src, dst) in {(1, 3), (3, 2)}
    net.run(0.5)
    assert 3 not in net.nodes[1].members() and 3 not in net.nodes[2].members()
    assert 3 not in up_events(net.events[1]) + up_events(net.events[2])


# -- failure detection ---------------------------------------------------------------


def two_up() -> tuple[Availability, Availability]:
    a, b = make(1), make(2)
    net = Net(a, b)
    net.run(0.2)
    assert net.converged()
    return a, b


def test_down_exactly_after_the_timeout_not_before() -> None:
    a = make(1)
    a.receive(hb(cluster_size=2), 2, 1.0)
    assert [type(e) for e in drain(a)] == [NodeUp]
    deadline = 1.0 + 3 * INTERVAL + DEADLINE_TOLERANCE * INTERVAL
    assert a.timeout == pytest.approx(deadline - 1.0)
    # drive it like a driver does, sending its own heartbeats on time, until
    # the next deadline is no longer a heartbeat of its own
    t = 1.0
    while t < deadline - 1e-6:
        a.handle_timer(t)
        assert len(a.messages_to_send(t)) == 1
        t = a.next_timer()
    assert a.next_timer() == pytest.approx(deadline)
    a.handle_timer(1.0 + 3 * INTERVAL)  # three intervals missed, exactly
    a.handle_timer(a.next_timer() - 1e-9)
    assert drain(a) == [] and 2 in a.members()
    a.handle_timer(a.next_timer())
    assert drain(a) == [NodeDown(2, "timeout")]
    assert list(a.members()) == [1] and a.cluster_size() == 1


def test_a_heartbeat_exactly_on_the_deadline_keeps_the_peer() -> None:
    a = make(1)
    a.receive(hb(cluster_size=2), 2, 1.0)
    drain(a)
    a.receive(hb(cluster_size=2), 2, 1.0 + 3 * INTERVAL)
    a.receive(hb(cluster_size=2), 2, 1.0 + 6 * INTERVAL)
    a.handle_timer(1.0 + 9 * INTERVAL)
    assert drain(a) == [] and 2 in a.members()


def test_a_heartbeat_after_the_deadline_means_down_then_join_again() -> None:
    a = make(1)
    a.receive(hb(cluster_size=2), 2, 1.0)
    drain(a)
    a.receive(hb(cluster_size=2), 2, 1.0 + a.timeout + 0.01)  # no timer ran
    assert drain(a) == [NodeDown(2, "timeout"), NodeUp(2, 1, NodeState.ACTIVE, 1, 0)]


def test_crashed_peer_goes_down_after_its_last_heartbeat_plus_timeout() -> None:
    net = Net(make(1), make(2), make(3))
    net.run(0.3)
    net.crash(2)
    last = net.last_sent[2]
    for events in net.events.values():
        events.clear()
    while not net.events[1]:
        detected = net.now
        net.step()
    assert net.events[1] == [NodeDown(2, "timeout")]
    assert detected >= last + net.nodes[1].timeout
    assert detected < last + net.nodes[1].timeout + TICK  # the first tick after
    net.run(0.1)
    assert net.events[3] == [NodeDown(2, "timeout")]
    assert net.converged()


def test_restart_is_down_restarted_then_up() -> None:
    net = Net(make(1), make(2))
    net.run(0.2)
    net.crash(2)
    net.events[1].clear()
    net.add(make(2, now=net.now, incarnation=2))
    net.run(0.2)
    assert net.events[1] == [NodeDown(2, "restarted"), NodeUp(2, 2, NodeState.ACTIVE, 1, 0)]
    assert net.nodes[1].members()[2].incarnation == 2
    assert net.converged()


def test_stale_heartbeat_is_ignored_and_counted() -> None:
    a = make(1)
    a.receive(hb(incarnation=5, cluster_size=2), 2, 0.0)
    drain(a)
    a.receive(hb(incarnation=4, cluster_size=2, state=1, weight=9), 2, 0.05)
    assert drain(a) == []
    assert a.stats["stale"] == 1
    info = a.members()[2]
    assert (info.incarnation, info.state, info.weight) == (5, NodeState.ACTIVE, 1)
    # still stale after the peer timed out: the old life is remembered
    a.handle_timer(1.0)
    assert drain(a) == [NodeDown(2, "timeout")]
    a.receive(hb(incarnation=4, cluster_size=2), 2, 1.0)
    assert drain(a) == [] and a.stats["stale"] == 2 and a.cluster_size() == 1


def test_own_heartbeat_is_ignored() -> None:
    a = make(1)
    a.receive(hb(cluster_size=1), 1, 0.0)
    assert drain(a) == [] and a.cluster_size() == 1 and a.stats["own"] == 1


# -- refusal, status and state --------------------------------------------------------


def test_fingerprint_mismatch_is_refused_once_and_never_up() -> None:
    net = Net(make(1), make(2), make(3, fingerprint=OTHER_FP))
    net.run(1.0)
    for node_id in (1, 2):
        refused = [e for e in net.events[node_id] if isinstance(e, PeerRefused)]
        assert refused == [PeerRefused(3, "fingerprint-mismatch")]
        assert 3 not in up_events(net.events[node_id])
        assert set(net.nodes[node_id].members()) == {1, 2}
        assert net.nodes[node_id].cluster_size() == 2
        assert net.nodes[node_id].stats["refused"] >= 19  # one per heartbeat of 3
    assert sorted(e.node for e in net.events[3] if isinstance(e, PeerRefused)) == [1, 2]
    assert list(net.nodes[3].members()) == [3]


def test_refusal_is_reported_again_after_the_peer_was_accepted() -> None:
    a = make(1)
    a.receive(hb(fingerprint=OTHER_FP), 2, 0.0)
    a.receive(hb(fingerprint=OTHER_FP), 2, 0.05)
    a.receive(hb(cluster_size=2), 2, 0.1)
    a.receive(hb(fingerprint=OTHER_FP), 2, 0.15)
    assert [e for e in drain(a) if isinstance(e, PeerRefused)] == [
        PeerRefused(2, "fingerprint-mismatch"),
        PeerRefused(2, "fingerprint-mismatch"),
    ]
    assert a.stats["refused"] == 3


def test_peer_with_links_down_is_not_eligible() -> None:
    net = Net(make(1), make(2), make(3))
    net.run(0.3)
    for events in net.events.values():
        events.clear()
    net.nodes[2].set_own_status(False, net.now)
    net.step()  # the immediate heartbeat reaches the peers in this tick
    assert net.events[1] == [NodeDown(2, "links-down")]
    assert net.events[3] == [NodeDown(2, "links-down")]
    assert net.events[2] == [OwnStatusChanged(False)]
    for node in net.nodes.values():
        assert set(node.members()) == {1, 3}
    net.run(0.5)  # it keeps heartbeating: no timeout, no more events
    assert net.events[1] == [NodeDown(2, "links-down")]
    net.nodes[2].set_own_status(True, net.now)
    net.step()
    assert net.events[1][-1] == NodeUp(2, 1, NodeState.ACTIVE, 1, 0)
    assert net.converged()


def test_peer_joining_with_links_down_is_up_only_when_links_come_up() -> None:
    a = make(1)
    a.receive(hb(cluster_size=2, own_status=0), 2, 0.0)
    assert drain(a) == [] and list(a.members()) == [1] and a.settled(0.0)
    a.receive(hb(cluster_size=3, own_status=1), 2, 0.05)  # admitted already
    assert drain(a) == [NodeUp(2, 1, NodeState.ACTIVE, 1, 0)]


def test_state_and_weight_changes_propagate() -> None:
    net = Net(make(1), make(2))
    net.run(0.2)
    net.events[1].clear()
    b = net.nodes[2]
    b.set_state(NodeState.DRAINING, net.now)
    net.step()
    assert net.events[1] == [NodeStateChanged(2, NodeState.DRAINING, 1)]
    b.set_weight(40, net.now)
    net.step()
    assert net.events[1][-1] == NodeStateChanged(2, NodeState.DRAINING, 40)
    info = net.nodes[1].members()[2]
    assert (info.state, info.weight) == (NodeState.DRAINING, 40)
    assert net.nodes[2].members()[2].state == NodeState.DRAINING
    net.run(0.5)
    assert len(net.events[1]) == 2  # no repeats on later heartbeats


def test_leaving_node_that_stops_is_down_leaving() -> None:
    net = Net(make(1), make(2))
    net.run(0.2)
    net.events[1].clear()
    net.nodes[2].set_state(NodeState.LEAVING, net.now)
    net.step()
    net.crash(2)
    net.run(0.3)
    assert net.events[1] == [
        NodeStateChanged(2, NodeState.LEAVING, 1),
        NodeDown(2, "leaving"),
    ]


def test_node_up_carries_the_rb_sequence_number() -> None:
    a, b = make(1), make(2)
    b.set_rb_next_seq(1234)
    net = Net(a, b)
    net.run(0.2)
    assert net.events[1] == [NodeUp(2, 1, NodeState.ACTIVE, 1, 1234)]
    assert a.members()[2].rb_next_seq == 1234


def test_stats_count_heartbeats() -> None:
    net = Net(make(1), make(2))
    net.run(1.0)
    a, b = net.nodes[1], net.nodes[2]
    assert a.stats["heartbeats_received"] == b.stats["heartbeats_sent"]
    assert b.stats["heartbeats_received"] == a.stats["heartbeats_sent"]
    # 20 intervals in a second, plus the immediate heartbeat when the peer appeared
    assert 20 <= a.stats["heartbeats_sent"] <= 22


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(min_value=2, max_value=6), st.floats(min_value=0.0, max_value=0.2)),
        min_size=1,
        max_size=60,
    )
)
def test_cached_first_deadline_never_lets_a_peer_outlive_its_timeout(
    arrivals: list[tuple[int, float]],
) -> None:
    """The first peer deadline is cached as a lower bound (not recomputed per
    heartbeat): the timer may fire early, never late, and a peer is declared
    down exactly when its own deadline passes, as without the cache."""
    av = make(1)
    now = 0.0
    heard: dict[int, float] = {}  # reference: last heartbeat per live peer
    for peer, gap in arrivals:
        target = now + gap
        # fire every timer due before the next heartbeat, as a driver would
        while (deadline := av.next_timer()) <= target:
            now = max(now, deadline)
            av.handle_timer(now)
            av.messages_to_send(now)  # the send timer moves on
            for p, t in list(heard.items()):
                if now >= t + av.timeout:
                    del heard[p]
            assert set(heard) == set(av._peers)
        now = target
        av.receive(hb(cluster_size=2), peer, now)
        for p, t in list(heard.items()):
            if p != peer and now >= t + av.timeout:
                del heard[p]
        heard[peer] = now
        assert set(heard) == set(av._peers)
        first = min(t + av.timeout for t in heard.values())
        assert av.next_timer() <= first


@pytest.mark.parametrize("stalled", [False, True])
def test_a_stalled_host_does_not_judge_its_peers_by_the_stall(stalled: bool) -> None:
    """A node whose own loop stood still for 1 s reads its peers' queued
    heartbeats afterwards: told of the stall, it keeps them; not told, the
    first heartbeat read finds every peer expired (what starved 16-node labs)."""
    a = make(1, interval=INTERVAL)
    for peer in (2, 3, 2, 3):  # twice: admitted once the sizes agree
        a.receive(hb(cluster_size=3), peer, 0.0)
    a.handle_timer(0.0)
    drain(a)
    assert set(a.members()) == {1, 2, 3}
    if stalled:
        a.host_stalled(0.05, 1.05)
    a.receive(hb(cluster_size=3), 2, 1.05)  # the first of the queued heartbeats
    a.receive(hb(cluster_size=3), 3, 1.05)
    downs = [e for e in drain(a) if isinstance(e, NodeDown)]
    assert (downs == []) is stalled
    if stalled:
        assert set(a.members()) == {1, 2, 3} and a.stats["host_stalls"] == 1
        # the stall is forgiven once, not forever: a peer silent after it dies
        t = 1.05
        while t < 1.5:
            t += INTERVAL
            a.receive(hb(cluster_size=3), 2, t)
        assert [e.node for e in drain(a) if isinstance(e, NodeDown)] == [3]


def test_an_idle_node_wakes_only_to_send_its_heartbeats() -> None:
    """With every peer heard in time, no timer is due between heartbeats: a
    stale bound on the first peer deadline woke the node about once in four
    (issue 19: each wakeup of the agent costs far more than the timer)."""
    a, b, c = make(1), make(2, now=0.013), make(3, now=0.031)
    net = Net(a, b, c)
    net.run(1.0)
    assert net.converged()
    sent = a.stats["heartbeats_sent"]
    wakeups = 0
    for _ in range(round(5.0 / TICK)):
        wakeups += net.now >= a.next_timer()
        net.step()
    assert net.converged()
    assert wakeups == a.stats["heartbeats_sent"] - sent
