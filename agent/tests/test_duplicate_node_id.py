"""Two processes with one node id (issue 18, point 3): the one started second
hears its own id while it listens before talking, and stays silent and out of
the membership, so the one already running is not displaced."""

from __future__ import annotations

import random

from test_node import TALK, Cluster, config, events_of, nid

from availability_manager import node_events as ev
from availability_manager.node import Node


def test_a_second_process_with_a_running_node_id_never_speaks_or_joins() -> None:
    c = Cluster(3)
    c.run(1.0)
    b = c.host(2)
    incarnation_before = c.host(1).node.members()[nid(2)].incarnation
    twin = Node(config(2, incarnation=99, initial_counter=10**12), random.Random(5), c.now)
    heard_own = False
    for _ in range(200):  # 1 s: the twin hears everything the cluster sends
        c.now = round(c.now + 0.005, 6)
        for h in c.hosts.values():
            t = h.node.next_timer()
            if t is not None and t <= c.now:
                h.node.handle_timer(c.now)
            for dgram, _ in h.node.datagrams_to_send(c.now):
                for other in c.hosts.values():
                    if other is not h:
                        other.node.receive_datagram(dgram, c.now)
                twin.receive_datagram(dgram, c.now)
            c._perform(h)
        t = twin.next_timer()
        if t is not None and t <= c.now:
            twin.handle_timer(c.now)
        out = twin.datagrams_to_send(c.now)
        assert out == []  # never a word: peers never see incarnation 99
        heard_own = heard_own or twin.own_datagrams > 0
    assert heard_own
    assert twin.phase() == "duplicate"
    # and its driver is not asked to spin: nothing of it is due any more
    twin.handle_timer(c.now)
    twin.datagrams_to_send(c.now)
    timer = twin.next_timer()
    assert timer is None or timer > c.now
    assert not twin.ready and twin.owned_buckets() == frozenset()
    assert twin.stats()["duplicate_node_id"] == 1
    refused = list(iter(twin.next_event, None))
    assert any(isinstance(e, ev.PeerRefused) and e.reason == "duplicate-node-id" for e in refused)
    # the running B is untouched: same life, still a member everywhere
    assert c.host(1).node.members()[nid(2)].incarnation == incarnation_before
    assert not events_of(c.host(1), ev.NodeDown)
    assert b.node.phase() == "member"


def test_a_node_alone_starts_talking_after_listening() -> None:
    node = Node(config(1), random.Random(1), 0.0)
    assert node.datagrams_to_send(0.0) == []
    timer = node.next_timer()
    assert timer is not None and 0.0 < timer <= TALK
    assert node.datagrams_to_send(TALK)  # its first heartbeat
    assert node.phase() == "joining"
