"""Range distribution driven by hand: several RangeDistribution objects, a fixed
clock and an in-test delivery loop that checks for holes after every delivery."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from availability_manager.assignment import aimed_assignment, buckets_of, membership_digest
from availability_manager.ranges import (
    CHANGE_REPEATS,
    REPEAT_EVERY,
    Claim,
    RangeDistribution,
    RangeEvent,
    RangeState,
    Release,
    Stable,
    Unstable,
    encode_bitmap,
)
from availability_manager.sim.variants import ImmediateRelease
from availability_manager.wire import WireError, decode_message, encode_message

BUCKETS = 256
SEED = 0x5EEDF17E
TICK = 0.05
A, B, C, D, E = 0xC0000201, 0xC0000202, 0xC0000203, 0xC0000204, 0xC0000205


class Cluster:
    """Nodes, their membership views, and a lossy broadcast between them."""

    def __init__(self, kind: type[RangeDistribution] = RangeDistribution) -> None:
        self.now = 0.0
        self.kind = kind  # the release rule: the class, or the known-bad ImmediateRelease
        self.nodes: dict[int, RangeDistribution] = {}
        self.mirror: dict[int, set[int]] = {}  # owned, rebuilt from events only
        self.events: dict[int, list[RangeEvent]] = {}
        self.guard = False  # check "no hole" after every step once set
        self.holes_seen: list[frozenset[int]] = []

    def start(self, node: int) -> RangeDistribution:
        rd = self.kind(node, BUCKETS, SEED, now=self.now)
        self.nodes[node] = rd
        self.mirror[node] = set()
        self.events[node] = []
        return rd

    def set_members(self, node: int, members: dict[int, int]) -> None:
        self.nodes[node].set_members(members, self.now)
        self.after(node)

    def kill(self, node: int) -> None:
        del self.nodes[node]

    def peer_down(self, node: int, dead: int) -> None:
        self.nodes[node].peer_down(dead, self.now)
        self.after(node)

    def after(self, node: int) -> None:
        """Drain events, replay them on the mirror, check the invariants."""
        rd = self.nodes[node]
        while (event := rd.next_event()) is not None:
            self.events[node].append(event)
            mirror = self.mirror[node]
            if isinstance(event, Claim):
                assert event.buckets and not event.buckets & mirror
                mirror |= event.buckets
            elif isinstance(event, Release):
                assert event.buckets and event.buckets <= mirror
                mirror -= event.buckets
        assert self.mirror[node] == rd.owned()
        hole = self.hole()
        if hole:
            self.holes_seen.append(hole)
        if self.guard:
            assert not hole, f"hole {sorted(hole)}"

    def hole(self) -> frozenset[int]:
        owned: set[int] = set()
        for rd in self.nodes.values():
            owned |= rd.owned()
        return frozenset(range(BUCKETS)) - owned

    def broadcast(self, src: int, drop: set[int] | None = None) -> None:
        """`src` sends its claim; each other node receives it (in id order)
        unless in `drop`. The message crosses the wire codec."""
        (msg,) = self.nodes[src].messages_to_send(self.now)
        data = encode_message(msg)
        for dst in sorted(self.nodes):
            if dst == src or (drop and dst in drop):
                continue
            self.nodes[dst].receive(decode_message(data), src, self.now)
            self.after(dst)

    def round(self) -> None:
        for src in sorted(self.nodes):
            self.broadcast(src)
        self.now += TICK

    def converge(self, max_rounds: int = 4) -> int:
        for rounds in range(1, max_rounds + 1):
            self.round()
            if all(rd.is_stable() for rd in self.nodes.values()):
                return rounds
        raise AssertionError("not stable")

    def check_owns_aim(self, members: dict[int, int]) -> None:
        aim = aimed_assignment(members, BUCKETS, SEED)
        for node, rd in self.nodes.items():
            assert rd.owned() == buckets_of(aim, node)
            assert rd.holes() == frozenset()
            assert all(len(owners) == 1 for owners in rd.owners())


def equal(*nodes: int) -> dict[int, int]:
    return {n: 1 for n in nodes}


def converged(*nodes: int) -> Cluster:
    cluster = Cluster()
    for n in nodes:
        cluster.start(n)
    for n in nodes:
        cluster.set_members(n, equal(*nodes))
    cluster.converge()
    cluster.guard = True
    return cluster


# -- convergence ----------------------------------------------------------------


def test_initial_convergence_to_exactly_the_aim() -> None:
    cluster = Cluster()
    for n in (A, B, C):
        cluster.start(n)
    for n in (A, B, C):
        cluster.set_members(n, equal(A, B, C))
        # a member claims its aim at once
        assert cluster.nodes[n].owned() == cluster.nodes[n].aimed() != frozenset()
    assert not cluster.hole()
    assert cluster.converge() == 1  # one round of claims makes everybody stable
    cluster.check_owns_aim(equal(A, B, C))
    for n in (A, B, C):
        assert cluster.events[n] == [Claim(cluster.nodes[n].aimed()), Stable()]


def test_single_member_owns_everything_and_is_stable() -> None:
    cluster = Cluster()
    rd = cluster.start(A)
    assert rd.owned() == frozenset() and not rd.is_stable()
    cluster.set_members(A, equal(A))
    assert rd.owned() == frozenset(range(BUCKETS))
    assert rd.is_stable()


def test_weights_are_respected() -> None:
    members = {A: 1, B: 2, C: 5}
    cluster = Cluster()
    for n in members:
        cluster.start(n)
    for n in members:
        cluster.set_members(n, members)
    cluster.converge()
    cluster.check_owns_aim(members)
    for n, w in members.items():
        assert abs(len(cluster.nodes[n].owned()) - BUCKETS * w / 8) < 1


# -- failure ----------------------------------------------------------------------


def test_failure_survivors_claim_at_once_and_nothing_else_moves() -> None:
    cluster = converged(A, B, C, D)
    before = aimed_assignment(equal(A, B, C, D), BUCKETS, SEED)
    after = aimed_assignment(equal(A, B, C), BUCKETS, SEED)
    cluster.guard = False  # the dead node's buckets are a hole until someone claims
    cluster.kill(D)
    for n in (A, B, C):
        old = cluster.nodes[n].owned()
        cluster.events[n].clear()
        cluster.peer_down(n, D)
        rd = cluster.nodes[n]
        assert rd.owned() >= buckets_of(after, n)  # claimed immediately, no message needed
        assert cluster.events[n][0] == Claim(buckets_of(after, n) - old)
        assert Unstable() in cluster.events[n]
    assert not cluster.hole()  # every survivor processed the failure: complete again
    cluster.guard = True
    cluster.converge()
    cluster.check_owns_aim(equal(A, B, C))
    changed = {b for b in range(BUCKETS) if before[b] != after[b]}
    for n in (A, B, C):
        # the buckets a survivor gained or lost are exactly where the aims differ
        claimed = set().union(*(e.buckets for e in cluster.events[n] if isinstance(e, Claim)))
        released = set().union(*(e.buckets for e in cluster.events[n] if isinstance(e, Release)))
        assert claimed == buckets_of(after, n) - buckets_of(before, n)
        assert released == buckets_of(before, n) - buckets_of(after, n)
        assert claimed | released <= changed
        assert cluster.events[n][-1] == Stable()


# -- join -------------------------------------------------------------------------


def test_join_old_owners_release_only_after_the_claim_never_a_hole() -> None:
    cluster = converged(A, B, C)
    old = {n: cluster.nodes[n].owned() for n in (A, B, C)}
    cluster.start(D)
    members = equal(A, B, C, D)
    # membership changes reach the nodes one by one, with traffic in between
    cluster.set_members(A, members)
    cluster.round()
    assert cluster.nodes[A].owned() >= old[A]  # D has claimed nothing yet
    cluster.set_members(D, members)
    newcomer = cluster.nodes[D].aimed()
    assert cluster.nodes[D].owned() == newcomer != frozenset()
    cluster.set_members(B, members)
    cluster.set_members(C, members)
    for n in (A, B, C):  # nobody released D's buckets before hearing D's claim
        assert cluster.nodes[n].owned() >= old[n] & newcomer
        assert not any(isinstance(e, Release) and e.buckets & newcomer for e in cluster.events[n])
    cluster.broadcast(D)  # D's claim arrives: the old owners let go
    for n in (A, B, C):
        assert not cluster.nodes[n].owned() & newcomer
    cluster.converge()
    cluster.check_owns_aim(members)


def test_a_lost_range_state_is_repaired_by_the_next_one() -> None:
    cluster = converged(A, B, C)
    cluster.start(D)
    members = equal(A, B, C, D)
    for n in (A, B, C, D):
        cluster.set_members(n, members)
    newcomer = cluster.nodes[D].aimed()
    lost_on_a = cluster.nodes[A].owned() & newcomer
    assert lost_on_a
    cluster.broadcast(D, drop={A})
    assert cluster.nodes[A].owned() & newcomer == lost_on_a  # double ownership meanwhile
    assert not cluster.nodes[A].is_stable()
    cluster.now += TICK
    cluster.broadcast(D)  # the next periodic one
    assert not cluster.nodes[A].owned() & newcomer
    cluster.converge()
    cluster.check_owns_aim(members)


def test_immediate_release_opens_a_hole_that_after_claim_does_not() -> None:
    holes = {}
    for kind in (ImmediateRelease, RangeDistribution):
        cluster = Cluster(kind)
        for n in (A, B, C):
            cluster.start(n)
            cluster.set_members(n, equal(A, B, C))
        cluster.converge()
        cluster.holes_seen.clear()  # start-up is not what is measured
        cluster.start(D)
        for n in (A, B, C, D):
            cluster.set_members(n, equal(A, B, C, D))
            cluster.round()
        cluster.converge()
        holes[kind.__name__] = cluster.holes_seen
    assert holes["ImmediateRelease"] and not holes["RangeDistribution"]


# -- drain ------------------------------------------------------------------------


def test_drain_keeps_buckets_until_claimed_and_ends_with_none() -> None:
    cluster = converged(A, B, C, D)
    drained = cluster.nodes[D].owned()
    remaining = equal(A, B, C)
    cluster.set_members(D, remaining)  # D drains first: it aims for nothing...
    assert cluster.nodes[D].aimed() == frozenset()
    assert cluster.nodes[D].owned() == drained  # ...but keeps what it has
    cluster.round()
    assert cluster.nodes[D].owned() == drained  # the others have not claimed yet
    for n in (A, B, C):
        cluster.set_members(n, remaining)
        cluster.round()
    cluster.converge()
    assert cluster.nodes[D].owned() == frozenset()
    assert cluster.nodes[D].is_stable()
    aim = aimed_assignment(remaining, BUCKETS, SEED)
    for n in (A, B, C):
        assert cluster.nodes[n].owned() == buckets_of(aim, n)
    assert [type(e) for e in cluster.events[D]][-2:] == [Release, Stable]


def test_a_non_member_holding_buckets_keeps_the_cluster_unstable() -> None:
    cluster = converged(A, B, C)
    for n in (C, A, B):  # C drains
        cluster.set_members(n, equal(A, B))
    for _ in range(2):  # A and B hear each other, C's claims are lost
        cluster.broadcast(A, drop={C})
        cluster.broadcast(B, drop={C})
    aim = aimed_assignment(equal(A, B), BUCKETS, SEED)
    for n in (A, B):
        assert cluster.nodes[n].owned() == buckets_of(aim, n)
    # both members own exactly their aim, but C still claims its old buckets
    assert cluster.nodes[C].owned()
    assert not cluster.nodes[A].is_stable() and not cluster.nodes[B].is_stable()
    cluster.converge()
    assert cluster.nodes[C].owned() == frozenset()
    assert cluster.nodes[A].is_stable()


def test_release_only_to_the_node_that_aims_for_the_bucket() -> None:
    cluster = converged(A, B, C)
    rd = cluster.nodes[A]
    old = rd.owned()
    members = equal(A, B, C, D)
    cluster.set_members(A, members)  # only A knows about D so far
    aim = rd.aim()
    leaving = old - rd.aimed()
    to_d = frozenset(b for b in leaving if aim[b] == D)
    assert to_d and leaving
    everything = set(range(BUCKETS))
    cluster.guard = False  # the claims below are fabricated: B and D do not really own
    # B claims every bucket with A's view: A keeps what D (or C) aims for
    rd.receive(RangeState.of(everything, BUCKETS, rd.digest()), B, cluster.now)
    cluster.after(A)
    assert rd.owned() == rd.aimed() | frozenset(b for b in leaving if aim[b] != B)
    assert rd.owned() >= to_d
    # D claims everything, but from another view: A keeps D's buckets
    other_view = membership_digest(equal(A, B, C, D, E))
    rd.receive(RangeState.of(everything, BUCKETS, other_view), D, cluster.now)
    cluster.after(A)
    assert rd.owned() >= to_d
    # the same claim from A's view releases exactly D's buckets
    rd.receive(RangeState.of(everything, BUCKETS, rd.digest()), D, cluster.now)
    cluster.after(A)
    assert not rd.owned() & to_d
    assert isinstance(cluster.events[A][-1], Release)
    assert cluster.events[A][-1].buckets == to_d


# -- views, timers and input validation ---------------------------------------------


def test_other_view_blocks_release_until_digests_agree() -> None:
    cluster = converged(A, B)
    cluster.start(C)
    cluster.set_members(C, equal(A, B, C))
    # A still has the old view: C claims buckets A owns, but C's digest differs
    cluster.broadcast(C)
    newcomer = cluster.nodes[C].aimed()
    assert cluster.nodes[A].owned() & newcomer
    assert cluster.nodes[A].stats["rx_other_view"] >= 1
    cluster.set_members(A, equal(A, B, C))  # same view now, but C's stored claim is older
    assert cluster.nodes[A].owned() & newcomer
    cluster.broadcast(C)  # C's next claim counts
    assert not cluster.nodes[A].owned() & newcomer


def test_a_claim_from_an_earlier_epoch_of_the_same_view_is_not_trusted() -> None:
    """A -> B -> A views: B's claim kept from the first {A, B} epoch has the
    right digest but B has since handed buckets to A; trusting it opens a hole."""
    two = equal(A, B)
    aim2 = aimed_assignment(two, BUCKETS, SEED)
    # a third node whose join makes B hand some buckets to A (the HRW repair's excess)
    joiner = next(
        c
        for c in range(C, C + 64)
        if buckets_of(aim2, B) & buckets_of(aimed_assignment({**two, c: 1}, BUCKETS, SEED), A)
    )
    three = {**two, joiner: 1}
    cluster = converged(A, B)
    cluster.start(joiner)
    for n in (A, B, joiner):
        cluster.set_members(n, three)
    for _ in range(3):  # B's claims under the three-node view never reach A
        for src in (A, B, joiner):
            cluster.broadcast(src, drop={A} if src == B else None)
    aim3 = aimed_assignment(three, BUCKETS, SEED)
    handed = buckets_of(aim2, B) & buckets_of(aim3, A)  # B gave these to A on the join
    assert handed
    assert not cluster.nodes[B].owned() & handed
    cluster.events[A].clear()
    cluster.set_members(A, two)  # the joiner drains; A is first to know
    assert cluster.nodes[A].owned() >= handed  # B's stale claim released nothing
    assert not any(isinstance(e, Release) for e in cluster.events[A])
    for n in (B, joiner):
        cluster.set_members(n, two)
    cluster.converge()
    cluster.check_owns_aim(two)


def test_change_asks_for_an_immediate_send_then_only_the_tick() -> None:
    cluster = Cluster()
    rd = cluster.start(A)
    assert rd.next_timer() is None
    cluster.now = 1.5
    cluster.set_members(A, equal(A, B))
    assert rd.next_timer() == 1.5
    rd.handle_timer(1.5)
    (msg,) = rd.messages_to_send(1.5)
    assert msg.owned() == rd.owned() and msg.digest == membership_digest(equal(A, B))
    assert rd.next_timer() is None
    assert len(rd.messages_to_send(1.55)) == 1  # every tick, whether changed or not
    cluster.set_members(A, equal(A, B))  # no change, no send request
    assert rd.next_timer() is None


def test_empty_membership_keeps_every_bucket() -> None:
    cluster = converged(A, B)
    owned = cluster.nodes[A].owned()
    cluster.set_members(A, {})
    assert cluster.nodes[A].owned() == owned
    cluster.broadcast(B)
    assert cluster.nodes[A].owned() == owned
    cluster.set_members(B, {})  # same (empty) view: still nobody to hand buckets to
    cluster.broadcast(B)
    assert cluster.nodes[A].owned() == owned
    assert not cluster.nodes[A].is_stable()


def test_range_state_round_trips_and_rejects_bad_bitmaps() -> None:
    msg = RangeState.of({0, 7, 8, 255}, BUCKETS, 42)
    assert len(msg.bitmap) == 32
    assert msg.bitmap[0] == 0x81 and msg.bitmap[1] == 0x80 and msg.bitmap[31] == 0x01
    back = decode_message(encode_message(msg))
    assert back == msg and back.owned() == {0, 7, 8, 255}
    odd = RangeState.of({0, 9}, 10, 1)
    assert decode_message(encode_message(odd)).owned() == {0, 9}
    with pytest.raises(ValueError):
        RangeState(10, bytes([0, 0x20]), 1)  # bit of bucket 10, beyond the last
    with pytest.raises(ValueError):
        RangeState(256, bytes(31), 1)
    with pytest.raises(ValueError):
        RangeState(0, b"", 1)
    with pytest.raises(ValueError):
        encode_bitmap({256}, 256)
    # on the wire the same refusals are a WireError with a countable reason
    bad = bytearray(encode_message(RangeState.of({0}, 10, 1)))
    # last bitmap byte (before the 12-byte digest, the empty handoff's 4 bytes
    # and handoff_at's 12) gets a padding bit
    bad[-29] |= 0x20
    with pytest.raises(WireError) as info:
        decode_message(bytes(bad))
    assert info.value.reason == "invalid-value"


def test_foreign_input_is_counted_and_changes_nothing() -> None:
    cluster = converged(A, B)
    rd = cluster.nodes[A]
    owned, peers = rd.owned(), rd.owners()
    rd.receive(RangeState.of(set(range(128)), 128, rd.digest()), B, cluster.now)
    rd.receive(RangeState.of(set(range(BUCKETS)), BUCKETS, rd.digest()), A, cluster.now)
    rd.receive(object(), B, cluster.now)
    rd.peer_down(A, cluster.now)
    assert rd.owned() == owned and rd.owners() == peers and rd.is_stable()
    assert rd.next_event() is None
    assert rd.stats["dropped_bucket_count_mismatch"] == 1
    assert rd.stats["dropped_own_message"] == 1
    assert rd.stats["dropped_not_range_state"] == 1
    assert rd.stats["dropped_peer_down_self"] == 1
    with pytest.raises(ValueError):
        rd.set_members({A: 0}, cluster.now)
    assert rd.members() == equal(A, B)


# -- property: random histories with loss never leave a hole ------------------------

POOL = (A, B, C, D, E)
actions = st.lists(
    st.tuples(st.sampled_from(["join", "drain", "fail", "tick"]), st.sampled_from(POOL)),
    min_size=1,
    max_size=14,
)


@settings(max_examples=40, deadline=None)
@given(history=actions, loss=st.sampled_from([0.0, 0.2, 0.5]), seed=st.integers(0, 1000))
def test_random_histories_never_leave_a_hole_and_converge(
    history: list[tuple[str, int]], loss: float, seed: int
) -> None:
    rng = random.Random(seed)
    cluster = converged(A, B)
    members = equal(A, B)

    def lossy_round() -> None:
        for src in sorted(cluster.nodes):
            cluster.broadcast(src, drop={n for n in cluster.nodes if rng.random() < loss})
        cluster.now += TICK

    def announce(new: dict[int, int]) -> None:
        # the membership reaches the nodes one at a time, in random order
        order = sorted(cluster.nodes)
        rng.shuffle(order)
        for n in order:
            cluster.set_members(n, new)
            lossy_round()

    for action, node in history:
        if action == "join" and node not in members:
            if node not in cluster.nodes:
                cluster.start(node)
            members = {**members, node: 1}
            announce(members)
        elif action == "drain" and node in members and len(members) > 1:
            members = {n: w for n, w in members.items() if n != node}
            announce(members)
        elif action == "fail" and node in cluster.nodes and len(cluster.nodes) > 1:
            if node in members and len(members) == 1:
                continue
            cluster.guard = False  # its buckets are a hole until the survivors notice
            cluster.kill(node)
            members = {n: w for n, w in members.items() if n != node}
            for n in sorted(cluster.nodes):
                cluster.peer_down(n, node)
            assert not cluster.hole()
            cluster.guard = True
        else:
            lossy_round()
    for _ in range(20):  # loss may delay, never prevent, convergence
        lossy_round()
    cluster.converge(max_rounds=2)
    aim = aimed_assignment(members, BUCKETS, SEED)
    for n, rd in cluster.nodes.items():
        assert rd.owned() == buckets_of(aim, n)


def test_a_repeated_claim_changes_nothing_but_the_same_claim_in_a_new_view_counts() -> None:
    """Every heartbeat repeats the sender's claim: a repeat within one view is
    recognised (receive returns False, nothing recomputed); after our view
    changes, the same bytes are a fresh claim again and may release buckets."""
    cluster = Cluster()
    for n in (A, B):
        cluster.start(n)
        cluster.set_members(n, equal(A))
    cluster.converge()
    a, b = cluster.nodes[A], cluster.nodes[B]
    assert a.owned() == frozenset(range(BUCKETS))
    (claim,) = a.messages_to_send(cluster.now)
    assert b.receive(claim, A, cluster.now) is False  # the round above delivered it
    assert b.stats["rx_repeated"] == 1
    both = equal(A, B)
    cluster.set_members(B, both)  # B claims its aim, A still holds everything
    (b_claim,) = b.messages_to_send(cluster.now)
    cluster.set_members(A, both)
    assert a.receive(b_claim, B, cluster.now) is True  # fresh in A's new view: releases
    cluster.after(A)
    assert a.owned() == a.aimed()
    assert a.receive(b_claim, B, cluster.now) is False
    (again,) = a.messages_to_send(cluster.now)
    assert again.owned() == a.owned()  # the cached message followed the release


def test_an_unchanged_claim_rides_every_nth_heartbeat_a_changed_one_at_once() -> None:
    """Idle: our claim goes out with every REPEAT_EVERY-th heartbeat (repairs
    a loss). A change of ours is due at once (next_timer) and rides on the
    next CHANGE_REPEATS heartbeats; a changed claim from a peer makes ours
    ride on the next CHANGE_REPEATS heartbeats, so a peer that adopted the new
    membership after we sent ours hears it in its view, even if one is lost."""
    cluster = converged(A, B)
    a, b = cluster.nodes[A], cluster.nodes[B]
    for _ in range(CHANGE_REPEATS):  # the repeats of the convergence
        a.claim_rides_on_heartbeat()
    a.messages_to_send(cluster.now)
    rides = [a.claim_rides_on_heartbeat() for _ in range(REPEAT_EVERY)]
    assert rides == [False] * (REPEAT_EVERY - 1) + [True]
    a.messages_to_send(cluster.now)
    assert a.claim_rides_on_heartbeat() is False
    (same,) = b.messages_to_send(cluster.now)
    a.receive(same, B, cluster.now)  # a repeat: no answer owed
    assert a.claim_rides_on_heartbeat() is False
    cluster.set_members(B, equal(B))  # B drops A: B claims everything, at once
    assert b.next_timer() == cluster.now
    assert [b.claim_rides_on_heartbeat() for _ in range(CHANGE_REPEATS + 1)] == [
        *([True] * CHANGE_REPEATS),
        False,
    ]
    (changed,) = b.messages_to_send(cluster.now)
    assert a.receive(changed, B, cluster.now) is True
    answers = [a.claim_rides_on_heartbeat() for _ in range(CHANGE_REPEATS + 1)]
    assert answers == [True] * CHANGE_REPEATS + [False]


def test_handoff_keeps_the_giver_until_the_switch_time_then_releases() -> None:
    """Make-before-break: with a handover delay the giver does not release on
    the taker's claim; it announces a handoff (buckets, wall-clock ns of the
    switch) and releases exactly those buckets when its timer reaches it."""
    cluster = Cluster()
    for n in (A, B):
        cluster.start(n)
        cluster.nodes[n].handover_delay = 0.1
        cluster.nodes[n].clock_offset = 1000.0  # wall = our clock + 1000 s
    for n in (A, B):
        cluster.set_members(n, equal(A, B))
    cluster.converge()
    given = cluster.nodes[B].owned()
    cluster.set_members(B, equal(A))  # B drains
    cluster.set_members(A, equal(A))  # A claims everything
    cluster.broadcast(A)
    b = cluster.nodes[B]
    assert b.owned() == given  # not released on the claim
    handoff = b.handoff()
    assert handoff is not None and handoff[0] == given
    assert handoff[1] == pytest.approx(cluster.now + 0.1 + 1000.0)
    (msg,) = b.messages_to_send(cluster.now)
    back = decode_message(encode_message(msg))
    assert back.handed_off() == given and back.handoff_at == round(handoff[1] * 1e9)
    cluster.nodes[A].receive(back, B, cluster.now)
    assert cluster.nodes[A].peer_handoffs()[B] == (given, back.handoff_at / 1e9)
    timer = b.next_timer()
    assert timer == pytest.approx(cluster.now + 0.1)
    b.handle_timer(cluster.now + 0.05)  # too early: nothing happens
    assert b.owned() == given
    b.handle_timer(cluster.now + 0.1)
    cluster.after(B)
    assert b.owned() == frozenset() and b.handoff() is None
    assert isinstance(cluster.events[B][-2], Release) or Release in map(type, cluster.events[B])


def test_a_handoff_names_only_buckets_of_the_claim() -> None:
    with pytest.raises(ValueError):
        RangeState(10, encode_bitmap({1}, 10), 1, encode_bitmap({2}, 10), 5)
    with pytest.raises(ValueError):
        RangeState(10, encode_bitmap({1}, 10), 1, encode_bitmap({1}, 10), 0)
    ok = RangeState.of({1, 2}, 10, 1, {2}, 5)
    assert decode_message(encode_message(ok)).handed_off() == {2}


def test_a_handoff_instant_is_rounded_up_to_the_quantum() -> None:
    """nftables compares whole seconds: the daemon's switch instants are."""
    rd = RangeDistribution(A, BUCKETS, SEED, now=0.0, handover_delay=0.1, handover_quantum=1.0)
    rd.clock_offset = 1000.25
    rd.set_members(equal(B), 0.0)  # A drains: B aims for everything
    aim = aimed_assignment(equal(A, B), BUCKETS, SEED)
    rd.set_members(equal(A, B), 0.0)
    rd.set_members(equal(B), 0.5)
    claim = RangeState.of(frozenset(range(BUCKETS)), BUCKETS, membership_digest(equal(B)))
    rd.receive(claim, B, 0.5)
    handoff = rd.handoff()
    assert handoff is not None and handoff[0] == buckets_of(aim, A)
    assert handoff[1] == 1001.0  # 0.5 + 0.1 + 1000.25, up to the whole second
    (msg,) = rd.messages_to_send(0.5)  # the announcement (clears the send due)
    assert msg.handoff_at == 1001 * 10**9
    assert rd.next_timer() == pytest.approx(1001.0 - 1000.25)
