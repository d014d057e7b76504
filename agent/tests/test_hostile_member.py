"""What one key holder can do to the others (issue 18, point 2): a member, or
anyone with the cluster key, sealing datagrams under any node id. Each test
names the bound that stops one attack and fails without it."""

from __future__ import annotations

from test_node import BUCKETS, KEYRING, Cluster, nid

from availability_manager import wire
from availability_manager.crypto import Encryption
from availability_manager.ranges import RangeState


def forge(sender: int, messages: list[object], counter: int) -> bytes:
    """A datagram sealed with the cluster key under `sender`'s id: what any
    member can produce."""
    return Encryption(sender, KEYRING, counter).seal(wire.encode_messages(messages))


def test_a_member_claiming_every_bucket_stops_no_other_owner_forwarding() -> None:
    c = Cluster(3)
    c.run(1.0)
    a, b, hostile = c.host(1), c.host(2), c.host(3)
    active_before = (a.node.active_buckets(), b.node.active_buckets())
    assert all(active_before)
    # the claim carries the right view (digest) so nothing but the bound stops it
    digest = a.node._ranges.digest()
    everything = RangeState.of(frozenset(range(BUCKETS)), BUCKETS, digest)
    dgram = forge(nid(3), [everything], counter=hostile.node.send_counter + 10)
    for h in (a, b):
        h.node.receive_datagram(dgram, c.now)
    assert (a.node.active_buckets(), b.node.active_buckets()) == active_before
    assert a.node.stats()["ranges_buckets_not_honoured"] > 0
    # and it released nothing to the claimant beyond its aim
    assert a.node.owned_buckets() == a.owned


def test_a_claim_pauses_us_only_for_buckets_the_claimant_aims_for() -> None:
    """The bound keeps the handover rule: a bucket the claimant aims for under
    our membership counts as its own, so we stop forwarding it."""
    c = Cluster(3)
    c.run(1.0)
    a, b = c.host(1), c.host(2)
    theirs = frozenset(x for x in b.owned)
    digest = a.node._ranges.digest()
    claim = RangeState.of(theirs | {min(a.owned)}, BUCKETS, digest)
    a.node.receive_datagram(forge(nid(2), [claim], b.node.send_counter + 10), c.now)
    assert min(a.owned) in a.node.active_buckets()  # not B's to aim for
    owners = a.node.bucket_owners()
    assert all(owners[x] == {nid(2)} for x in theirs)
