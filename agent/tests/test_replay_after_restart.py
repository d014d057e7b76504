"""Replay to a restarted receiver (issue 18, point 4): its replay windows
start empty, so only the heartbeat's echo of the receiver's own life tells a
recording of a dead node from the node itself."""

from __future__ import annotations

import random

from test_node import Cluster, Host, config, events_of, nid, sync_datagrams

from availability_manager import node_events as ev
from availability_manager.availability import Availability, Heartbeat, echo_entry
from availability_manager.node import Node


def record_heartbeats(h: Host, start: float, count: int) -> list[bytes]:
    """What an eavesdropper on the sync network records of `h`, one
    heartbeat interval apart."""
    out: list[bytes] = []
    for k in range(count):
        t = start + 0.05 * k
        h.node.handle_timer(t)
        out += sync_datagrams(h.node, t)
    return out


def test_a_dead_node_replayed_to_a_restarted_receiver_is_not_brought_up() -> None:
    c = Cluster(3)
    c.run(1.0)
    a, b = c.host(1), c.host(2)
    recorded = record_heartbeats(b, c.now, 40)
    b.alive = False  # B dies; its recording stays
    # A restarts: a new life, empty replay windows
    a.node = Node(config(1, incarnation=2, initial_counter=10**9), random.Random(7), c.now)
    a.events.clear()
    for dgram in recorded:
        c.run(0.05)
        a.node.receive_datagram(dgram, c.now)
        c.pump()
    assert nid(2) not in [e.node for _, e in events_of(a, ev.NodeUp)]  # type: ignore[attr-defined]
    assert nid(2) not in a.node.members()
    assert a.node.stats()["heartbeats_unproven"] > 0
    # the live peer C is up for A: its heartbeats echo A's new life
    assert nid(3) in a.node.members()


def _hb(echo: tuple[bytes, ...]) -> Heartbeat:
    return Heartbeat(5, 2, b"fp-12345", 2, 0, 1, 0, 1, echo)


def test_a_peer_counts_from_the_first_heartbeat_that_echoes_our_life() -> None:
    av = Availability(1, 7, b"fp-12345", now=0.0)
    av.receive(_hb((echo_entry(2, 5) + echo_entry(1, 6),)), 2, 0.0)  # our previous life
    assert 2 not in av.members() and av.cluster_size() == 1
    assert av.stats["unproven"] == 1
    (sent,) = av.messages_to_send(0.0)  # we answer at once, echoing it
    assert sent.echoes(2, 5)
    av.receive(_hb((echo_entry(2, 5) + echo_entry(1, 7),)), 2, 0.01)
    assert av.cluster_size() == 2
    assert 2 in av.members()
    # a release without the echo is taken as before
    av.receive(_hb(()), 3, 0.02)
    assert av.cluster_size() == 3


def test_a_peer_heard_but_not_yet_proven_keeps_a_joining_node_unsettled() -> None:
    """A restarted node must not take a peer whose heartbeats do not echo its
    new life yet for nobody: it would join alone and claim every bucket the
    peer forwards. Unsettled while that peer was heard within the timeout;
    settled again once it is proven, or silent for the timeout (it died)."""
    av = Availability(1, 7, b"fp-12345", now=0.0)
    assert av.settled(0.0)
    av.receive(_hb((echo_entry(2, 5) + echo_entry(1, 6),)), 2, 0.0)  # not our life yet
    assert 2 not in av.members() and not av.settled(0.01)
    assert not av.settled(av.timeout - 0.01)
    assert av.settled(av.timeout + 0.01)  # silent since: gone
    av.receive(_hb((echo_entry(2, 5) + echo_entry(1, 6),)), 2, 1.0)
    assert not av.settled(1.0)
    av.receive(_hb((echo_entry(2, 5) + echo_entry(1, 7),)), 2, 1.01)  # proven
    assert 2 in av.members() and av.settled(1.01)
