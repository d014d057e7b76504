"""The Node's inputs for health tracking: a lower weight, and the next-hop flag
its heartbeats carry to the peers (driven by hand, like test_node.py)."""

from __future__ import annotations

import dataclasses

from test_node import BUCKETS, SETTINGS, Cluster, nid

from availability_manager import node_events as ev
from availability_manager import wire
from availability_manager.assignment import aimed_assignment
from availability_manager.availability import Heartbeat


def owned_by(weights: dict[int, int], node: int) -> int:
    aim = aimed_assignment(weights, BUCKETS, SETTINGS.hash_seed)
    return sum(1 for owner in aim if owner == node)


def test_a_lower_weight_moves_buckets_to_the_others_and_back() -> None:
    c = Cluster(3)
    for i in (1, 2, 3):  # every node at weight 4, so there is room below
        c.host(i).node.set_weight(4, c.now)
    c.run(1.0)
    b = c.host(2)
    full = owned_by({nid(1): 4, nid(2): 4, nid(3): 4}, nid(2))
    assert len(b.owned) == full
    b.node.set_weight(1, c.now)
    c.run(0.5)
    lowered = owned_by({nid(1): 4, nid(2): 1, nid(3): 4}, nid(2))
    assert len(b.owned) == lowered < full
    assert c.host(1).node.members()[nid(2)].weight == 1  # the peers see it
    assert c.host(1).owned | b.owned | c.host(3).owned == set(range(BUCKETS))
    b.node.set_weight(4, c.now)
    c.run(0.5)
    assert len(b.owned) == full


def test_the_next_hop_flag_reaches_the_peers_at_once_and_back() -> None:
    c = Cluster(3)
    c.run(1.0)
    everyone = {nid(2), nid(3)}
    assert c.host(1).node.peers_reaching_nexthops() == everyone
    c.host(2).node.set_nexthops_ok(False, c.now)
    c.pump()  # announced at once, not on the next heartbeat
    assert c.host(1).node.peers_reaching_nexthops() == {nid(3)}
    assert c.host(3).node.peers_reaching_nexthops() == {nid(1)}
    c.host(2).node.set_nexthops_ok(True, c.now)
    c.pump()
    assert c.host(1).node.peers_reaching_nexthops() == everyone


def test_a_peer_that_does_not_send_the_flag_counts_as_reaching() -> None:
    lost = Heartbeat(7, 3, bytes(8), 2, 0, 1, 0, 1, nexthops_ok=0)
    encoded = wire.encode_message(lost)
    assert wire.decode_messages(encoded) == [lost]
    # The same heartbeat as an agent before the field sends it: attribute 10
    # (id, length, one byte) is the last one; cut it and fix the length.
    assert encoded[-5:] == wire.ATTR_HEADER.pack(10, 1) + b"\x00"
    msg_type, flags, length = wire.MSG_HEADER.unpack_from(encoded)
    older = wire.MSG_HEADER.pack(msg_type, flags, length - 5) + encoded[4:-5]
    (decoded,) = wire.decode_messages(older)
    assert decoded == dataclasses.replace(lost, nexthops_ok=1)


def test_a_node_whose_own_status_goes_down_stops_forwarding_before_it_tells() -> None:
    c = Cluster(3)
    c.run(1.0)
    b = c.host(2)
    had = b.node.active_buckets()
    assert had
    b.node.set_link_status(False, c.now)
    # before any datagram leaves (the heartbeat with own_status=0, which lets
    # the peers forward these buckets at once), the data plane lets go of all
    first = b.node.next_event()
    assert isinstance(first, ev.ActiveBucketsChanged)
    assert first.active == frozenset() and first.removed == had
    c.run(0.5)
    assert b.node.active_buckets() == frozenset() and b.owned == frozenset()
    assert c.host(1).owned | c.host(3).owned == set(range(BUCKETS))
    b.node.set_link_status(True, c.now)
    c.run(0.5)
    assert b.node.active_buckets() == had
