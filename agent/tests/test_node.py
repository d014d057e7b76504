"""Node: the layers composed, driven by hand on a fixed clock (aioquic style).

A tiny driver below moves every node's datagrams to every other live node and
performs its events on a dict "kernel", exactly as the daemon would; no
simulator, no sockets.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from availability_manager import node_events as ev
from availability_manager import wire
from availability_manager.assignment import aimed_assignment, buckets_of
from availability_manager.connection import (
    IPS_ASSURED,
    IPS_SEEN_REPLY,
    PROTO_TCP,
    TCP_ESTABLISHED,
    TCP_SYN_SENT,
    Connection,
    make_tuple,
)
from availability_manager.crypto import Keyring
from availability_manager.node import Destination, Node
from availability_manager.node_config import NodeConfig
from availability_manager.packing import pack
from availability_manager.types import ClusterSettings, node_id_from_address

BUCKETS = 32
SETTINGS = ClusterSettings(buckets=BUCKETS, hash_seed=1234, backend="sim")
KEYRING = Keyring.single(bytes(range(32)))
STEP = 0.005
TALK = 0.1  # a node started at 0 has listened long enough (LISTEN_INTERVALS) to send


def nid(i: int) -> int:
    return node_id_from_address(f"192.0.2.{i}")


def config(i: int, **kw: object) -> NodeConfig:
    base: dict[str, object] = dict(
        node_id=nid(i), settings=SETTINGS, keyring=KEYRING, incarnation=1, initial_counter=1
    )
    base.update(kw)
    return NodeConfig(**base)  # type: ignore[arg-type]


def sync_datagrams(node: Node, now: float) -> list[bytes]:
    """The datagrams `node` sends on the sync network now (zone copies apart)."""
    return [d for d, where in node.datagrams_to_send(now) if where is Destination.SYNC]


def conn_in_bucket(bucket: int, n: int = 0) -> Connection:
    orig = make_tuple(f"198.51.100.{n % 250 + 1}", "203.0.113.10", 10000 + n, 443)
    return Connection(PROTO_TCP, orig, orig.inverse(), state=TCP_SYN_SENT, bucket=bucket)


@dataclasses.dataclass
class Host:
    """One machine of the hand-made cluster: its Node, its events, its 'kernel'."""

    node: Node
    alive: bool = True
    group: int = 0  # hosts hear each other only within one group (a partition)
    events: list[tuple[float, object]] = dataclasses.field(default_factory=list)
    table: dict[bytes, Connection] = dataclasses.field(default_factory=dict)
    owned: frozenset[int] = frozenset()
    # ordering record: when each key was written and each bucket claimed (event index)
    written: dict[bytes, int] = dataclasses.field(default_factory=dict)
    claimed: dict[int, int] = dataclasses.field(default_factory=dict)


class Cluster:
    def __init__(self, count: int, now: float = 0.0) -> None:
        self.now = now
        self.hosts = {
            nid(i): Host(Node(config(i), random.Random(i), now)) for i in range(1, count + 1)
        }

    def host(self, i: int) -> Host:
        return self.hosts[nid(i)]

    def pump(self) -> None:
        """Perform events and move datagrams until nothing is left to move."""
        moving = True
        while moving:
            moving = False
            for h in self.hosts.values():
                if not h.alive:
                    continue
                self._perform(h)
                for dgram in sync_datagrams(h.node, self.now):
                    moving = True
                    for other in self.hosts.values():
                        if other is not h and other.alive and other.group == h.group:
                            other.node.receive_datagram(dgram, self.now)

    def _perform(self, h: Host) -> None:
        while (event := h.node.next_event()) is not None:
            h.events.append((self.now, event))
            if isinstance(event, ev.InjectConnections):
                for c in event.conns:
                    h.table[c.key] = c
                    h.written[c.key] = len(h.events)
            elif isinstance(event, ev.OwnedBucketsChanged):
                for b in event.owned - h.owned:
                    h.claimed[b] = len(h.events)
                h.owned = event.owned
            elif isinstance(event, ev.DeleteConnections):
                for c in event.conns:
                    h.table.pop(c.key, None)

    def run(self, duration: float) -> None:
        end = self.now + duration
        while self.now < end - 1e-9:
            self.now = round(self.now + STEP, 6)
            for h in self.hosts.values():
                if not h.alive:
                    continue
                t = h.node.next_timer()
                if t is not None and t <= self.now:
                    h.node.handle_timer(self.now)
            self.pump()

    def new_connection(self, i: int, conn: Connection) -> None:
        h = self.host(i)
        h.table[conn.key] = conn
        h.node.connection_new(conn, self.now)
        self.pump()


def events_of(h: Host, kind: type) -> list[tuple[float, object]]:
    return [(t, e) for t, e in h.events if isinstance(e, kind)]


def aimed(members: list[int]) -> tuple[int, ...]:
    return aimed_assignment({m: 1 for m in members}, BUCKETS, SETTINGS.hash_seed)


@pytest.fixture
def three() -> Cluster:
    c = Cluster(3)
    c.run(1.0)
    return c


def test_three_nodes_come_up_ready_and_split_the_buckets_as_aimed(three: Cluster) -> None:
    aim = aimed([nid(1), nid(2), nid(3)])
    union: set[int] = set()
    for node_id, h in three.hosts.items():
        assert len(events_of(h, ev.Ready)) == 1
        assert len(events_of(h, ev.NodeUp)) == 2
        assert h.owned == buckets_of(aim, node_id)
        assert h.node.owned_buckets() == h.owned
        assert h.node.active_buckets() == h.owned  # stable: nobody else claims them
        assert not union & h.owned
        union |= h.owned
        assert h.node.stable
        assert h.node.phase() == "member"
        assert set(h.node.members()) == {nid(1), nid(2), nid(3)}
    assert union == set(range(BUCKETS))
    owners = three.host(1).node.bucket_owners()
    assert all(owners[b] == {aim[b]} for b in range(BUCKETS))


def test_a_joining_node_claims_nothing_before_the_grace_period() -> None:
    c = Cluster(1)
    c.run(0.1)  # less than (misses + 1) heartbeat intervals
    assert c.host(1).owned == frozenset()
    c.run(0.3)
    assert c.host(1).owned == frozenset(range(BUCKETS))  # alone: everything


def test_connection_new_update_destroy_replicate_to_the_peers(three: Cluster) -> None:
    a = three.host(1)
    bucket = min(a.owned)
    conn = conn_in_bucket(bucket)
    three.new_connection(1, conn)
    for i in (2, 3):
        assert three.host(i).node.peer_cache(nid(1)) == {conn.key: conn}
    established = conn.with_state(TCP_ESTABLISHED, IPS_SEEN_REPLY | IPS_ASSURED)
    a.node.connection_update(established, three.now)
    three.pump()
    for i in (2, 3):
        assert three.host(i).node.peer_cache(nid(1))[conn.key].state == TCP_ESTABLISHED
    a.node.connection_destroy(established, three.now)
    three.pump()
    for i in (2, 3):
        assert three.host(i).node.peer_cache(nid(1)) == {}


def test_killed_node_connections_are_injected_before_its_buckets_are_claimed(
    three: Cluster,
) -> None:
    b = three.host(2)
    conns = [conn_in_bucket(bucket, n) for n, bucket in enumerate(sorted(b.owned))]
    for conn in conns:
        three.new_connection(2, conn)
    b.alive = False
    killed_at = three.now
    three.run(0.4)
    survivors = [three.host(1), three.host(3)]
    injected: set[bytes] = set()
    for h in survivors:
        downs = events_of(h, ev.NodeDown)
        assert len(downs) == 1 and downs[0][1].node == nid(2)  # type: ignore[attr-defined]
        detected = downs[0][0] - killed_at
        assert 0.14 <= detected <= 0.2  # 3 missed heartbeats of 50 ms (+ tolerance)
        for conn in conns:
            if conn.bucket in h.owned:
                # in the table, and written before the claim of its bucket
                assert conn.key in h.table
                assert h.written[conn.key] < h.claimed[conn.bucket]
                injected.add(conn.key)
    assert injected == {c.key for c in conns}  # every connection of B has a new home
    aim = aimed([nid(1), nid(3)])
    assert survivors[0].owned | survivors[1].owned == set(range(BUCKETS))
    assert survivors[0].owned == buckets_of(aim, nid(1))
    # The injected entries are announced as the survivor's own.
    for conn in conns:
        owner = nid(1) if conn.bucket in survivors[0].owned else nid(3)
        other = three.hosts[nid(3) if owner == nid(1) else nid(1)]
        assert conn.key in other.node.peer_cache(owner)


def test_drain_hands_the_buckets_over_and_undrain_takes_them_back(three: Cluster) -> None:
    b = three.host(2)
    before = b.owned
    conn = conn_in_bucket(min(before))
    three.new_connection(2, conn)
    b.node.drain(three.now)
    three.run(0.3)
    assert b.owned == frozenset()
    assert b.node.active_buckets() == frozenset()
    assert b.node.phase() == "draining"
    new_owner = three.host(1) if conn.bucket in three.host(1).owned else three.host(3)
    assert conn.key in new_owner.table  # the connection follows its bucket
    assert three.host(1).owned | three.host(3).owned == set(range(BUCKETS))
    b.node.undrain(three.now)
    three.run(0.3)
    assert b.owned == before
    assert conn.key in b.table


def two_nodes_with_handover_delay(delay: float) -> Cluster:
    """Two nodes with make-before-break handovers and the same wall clock
    (offset 5000 s), settled."""
    c = Cluster(0)
    for i in (1, 2):
        c.hosts[nid(i)] = Host(Node(config(i, handover_delay=delay), random.Random(i), c.now))
    c.host(1).node.set_clock_offset(5000.0)
    c.host(2).node.set_clock_offset(5000.0)
    c.run(1.0)
    return c


def test_a_drain_with_a_handover_delay_switches_giver_and_taker_at_one_instant() -> None:
    """Make-before-break: the giver's data plane gets a stop switch and the
    taker's a start switch for the same buckets at the same wall-clock
    instant (each node's clock + its offset); the giver releases at that
    instant, and that release is a `removed` (the daemon lets go first)."""
    c = two_nodes_with_handover_delay(0.1)
    giver, taker = c.host(2), c.host(1)
    given = giver.owned
    assert given and taker.owned | given == set(range(BUCKETS))
    giver.node.drain(c.now)
    c.run(0.05)
    (stop,) = [
        w
        for _, e in events_of(giver, ev.ActiveBucketsChanged)
        for w in e.switches  # type: ignore[attr-defined]
        if not w.start
    ]
    starts = [
        w
        for _, e in events_of(taker, ev.ActiveBucketsChanged)
        for w in e.switches  # type: ignore[attr-defined]
        if w.start
    ]
    assert stop.buckets == given and {w.at for w in starts} == {stop.at}
    assert frozenset().union(*(w.buckets for w in starts)) == given
    assert 5000.0 + 1.0 < stop.at <= 5000.0 + 1.0 + 0.1 + STEP
    assert giver.owned == given  # still owned until the instant
    c.run(0.2)
    assert giver.owned == frozenset() and taker.owned == set(range(BUCKETS))
    last = events_of(giver, ev.ActiveBucketsChanged)[-1][1]
    assert last.removed == given and not last.switches  # type: ignore[attr-defined]
    assert taker.node.active_buckets() == set(range(BUCKETS))


def test_a_bucket_kept_from_a_handoff_whose_taker_went_down_is_forwarded_after_it() -> None:
    """The giver announced a handoff; before its instant the taker steps
    back (own status down: its links, its kernel). At the instant the
    giver's stop switch takes the buckets out of its data plane, and it
    keeps them (nobody took them): it must forward them again then, not
    at the next membership change."""
    c = two_nodes_with_handover_delay(0.5)
    giver, taker = c.host(1), c.host(2)
    taker.node.drain(c.now)
    c.run(1.0)
    assert giver.node.active_buckets() == set(range(BUCKETS))
    taker.node.undrain(c.now)
    c.run(0.1)
    pending = events_of(giver, ev.ActiveBucketsChanged)[-1][1]
    stops = [w for w in pending.switches if not w.start]  # type: ignore[attr-defined]
    assert stops, "the giver programmed no stop switch"
    taker.node.set_link_status(False, c.now)  # steps back before the instant
    c.run(1.0)
    assert giver.owned == set(range(BUCKETS))
    assert giver.node.active_buckets() == set(range(BUCKETS)), "kept buckets not forwarded"
    last = events_of(giver, ev.ActiveBucketsChanged)[-1][1]
    assert last.active == set(range(BUCKETS)) and not last.switches  # type: ignore[attr-defined]


def _forwarders(c: Cluster, wall: float) -> dict[int, set[int]]:
    """Per bucket, the hosts whose last data-plane programming forwards it at `wall`."""
    out: dict[int, set[int]] = {}
    for node_id, h in c.hosts.items():
        programmed = events_of(h, ev.ActiveBucketsChanged)
        if not h.alive or not programmed:
            continue
        last = programmed[-1][1]
        for b in range(BUCKETS):
            if last.forwards(b, wall):  # type: ignore[attr-defined]
                out.setdefault(b, set()).add(node_id)
    return out


class SlowLinkCluster(Cluster):
    """Cluster whose datagrams from one node to another arrive `delay` late."""

    def __init__(self, slow: tuple[int, int], delay: float) -> None:
        super().__init__(0)
        self.slow, self.delay = (nid(slow[0]), nid(slow[1])), delay
        self.in_flight: list[tuple[float, bytes]] = []

    def pump(self) -> None:
        moving = True
        while moving:
            moving = False
            due = [d for t, d in self.in_flight if t <= self.now + 1e-9]
            self.in_flight = [(t, d) for t, d in self.in_flight if t > self.now + 1e-9]
            for dgram in due:
                moving = True
                self.hosts[self.slow[1]].node.receive_datagram(dgram, self.now)
            for node_id, h in self.hosts.items():
                if not h.alive:
                    continue
                self._perform(h)
                for dgram in sync_datagrams(h.node, self.now):
                    moving = True
                    for other_id, other in self.hosts.items():
                        if other is h or not other.alive:
                            continue
                        if (node_id, other_id) == self.slow:
                            self.in_flight.append((self.now + self.delay, dgram))
                        else:
                            other.node.receive_datagram(dgram, self.now)


@pytest.mark.parametrize("delay", [0.06, 0.3])
def test_a_restarted_node_forwards_nothing_another_node_forwards_until_the_handoff(
    delay: float,
) -> None:
    """A node restarted (a new incarnation) while a peer forwards every
    bucket must not claim before it knows the peer's claim, or it forwards
    those buckets at once while the peer forwards them until its handoff's
    instant: every packet twice for up to a second (molecule nat and the lab,
    2026-12-08). What the restarted node sends reaches the peer `delay` late:
    60 ms: the peer's claim waits for the restarted node's table (rule 1)
    while the restarted node already holds the peer's table; 300 ms: the
    peer's heartbeats echo the new life only after the join grace (200 ms),
    and a node that took them (unproven) for nobody joined alone, claiming
    every bucket."""
    c = SlowLinkCluster(slow=(2, 1), delay=delay)
    for i in (1, 2):
        c.hosts[nid(i)] = Host(Node(config(i, handover_delay=0.1), random.Random(i), c.now))
        c.host(i).node.set_clock_offset(5000.0)
    c.run(3.0)
    c.host(2).node.leave(c.now)
    c.run(1.0)
    assert c.host(1).node.active_buckets() == set(range(BUCKETS))
    # the daemon's state directory carries the datagram counter over a restart
    counter = c.host(2).node.send_counter + 1
    c.hosts[nid(2)] = Host(
        Node(
            config(2, handover_delay=0.1, incarnation=2, initial_counter=counter),
            random.Random(22),
            c.now,
        )
    )
    c.host(2).node.set_clock_offset(5000.0)
    for _ in range(1000):
        c.run(STEP)
        doubled = {b: n for b, n in _forwarders(c, c.now + 5000.0).items() if len(n) > 1}
        assert not doubled, f"at {c.now:.3f}: buckets forwarded by two nodes: {sorted(doubled)}"
    share = buckets_of(aimed([nid(1), nid(2)]), nid(2))
    assert c.host(2).node.active_buckets() == share, "the restarted node never took its share"


def test_the_join_grace_counts_from_when_the_driver_starts_listening() -> None:
    """The daemon creates its Node, installs its data plane (0.5 s on a busy
    machine), then reads the network: the grace must not have passed unheard
    by then, or a restarted node joins alone and claims every bucket."""
    node = Node(config(1), random.Random(1), 0.0)
    node.start_listening(0.5)
    node.handle_timer(0.5)
    assert node.phase() == "joining" and not node.owned_buckets()
    assert (node.next_timer() or 0.0) > 0.5
    node.handle_timer(0.75)
    assert node.phase() == "member" and len(node.owned_buckets()) == BUCKETS


def test_leave_completes_once_the_others_hold_every_bucket(three: Cluster) -> None:
    c = three.host(3)
    c.node.leave(three.now)
    three.run(0.3)
    done = events_of(c, ev.LeaveComplete)
    assert len(done) == 1
    assert c.owned == frozenset()
    assert three.host(1).owned | three.host(2).owned == set(range(BUCKETS))
    # LeaveComplete comes after the last release
    last_program = max(
        i for i, (_, e) in enumerate(c.events) if isinstance(e, ev.OwnedBucketsChanged)
    )
    assert c.events.index(done[0]) > last_program


def test_after_a_sync_partition_heals_every_connection_ends_at_its_bucket_owner() -> None:
    c = Cluster(2)
    c.run(1.0)
    a, b = c.host(1), c.host(2)
    b.group = 1  # split: each node takes over the other's buckets
    c.run(0.4)
    assert a.owned == b.owned == frozenset(range(BUCKETS))
    # While split, both data planes accept NEW connections in every bucket.
    made_at_a = [conn_in_bucket(bucket, bucket) for bucket in range(0, BUCKETS, 3)]
    made_at_b = [conn_in_bucket(bucket, 100 + bucket) for bucket in range(1, BUCKETS, 3)]
    for conn in made_at_a:
        c.new_connection(1, conn)
    for conn in made_at_b:
        c.new_connection(2, conn)
    b.group = 0
    c.run(1.0)
    assert a.owned | b.owned == set(range(BUCKETS)) and not a.owned & b.owned
    for conn in made_at_a + made_at_b:
        owner = a if conn.bucket in a.owned else b
        other = b if owner is a else a
        assert conn.key in owner.table, f"bucket {conn.bucket} lost {conn}"
        assert conn.key not in other.table  # handed over, not duplicated
        assert conn.key in other.node.peer_cache(owner.node.node_id)


def _snapshot(h: Host) -> tuple[object, ...]:
    n = h.node
    return (
        n.owned_buckets(),
        tuple(sorted(n.members())),
        n.bucket_owners(),
        tuple(sorted(n.known_keys())),
        n.next_timer(),
        n.phase(),
    )


def test_forged_and_garbage_datagrams_are_counted_and_change_nothing(three: Cluster) -> None:
    a, b = three.host(1), three.host(2)
    three.new_connection(2, conn_in_bucket(min(b.owned)))
    genuine = sync_datagrams(b.node, three.now)
    b.node.connection_new(conn_in_bucket(min(b.owned), 7), three.now)
    genuine = sync_datagrams(b.node, three.now)
    assert genuine
    a.node.receive_datagram(genuine[0], three.now)  # accepted once
    before = _snapshot(a)
    events_before = len(a.events)
    stats_before = a.node.stats()

    other_key = Keyring.single(bytes(32 * [7]))
    forger = Node(config(2, keyring=other_key, initial_counter=10**9), random.Random(9), 0.0)
    forger.connection_new(conn_in_bucket(1, 3), three.now)
    forged = sync_datagrams(forger, three.now)[0]
    tampered = bytearray(genuine[0])
    tampered[-1] ^= 1
    bad_magic = b"XX" + genuine[0][2:]
    inputs = [
        b"",
        b"garbage",
        bytes(2000),
        bad_magic,
        genuine[0][:30],
        bytes(tampered),
        genuine[0],  # replayed
        forged,  # right sender id and key id, wrong key
    ]
    for data in inputs:
        a.node.receive_datagram(data, three.now)
    three._perform(a)
    assert _snapshot(a) == before
    assert len(a.events) == events_before
    stats = a.node.stats()
    assert stats["datagrams_opened"] == stats_before["datagrams_opened"]
    for reason in ("truncated-header", "oversized-datagram", "bad-magic", "bad-tag", "replayed"):
        assert stats.get(f"drop_{reason}", 0) > stats_before.get(f"drop_{reason}", 0), reason


def test_an_authentic_datagram_with_undecodable_messages_is_dropped_whole(three: Cluster) -> None:
    a, b = three.host(1), three.host(2)
    before = _snapshot(a)
    stats_before = a.node.stats()
    # A sealed, authentic payload whose second message is truncated.
    hb = b.node._availability.messages_to_send(three.now + 1.0)[0]
    plaintext = wire.encode_message(hb) + b"\x01\x00\x00\x40"
    a.node.receive_datagram(b.node._encryption.seal(plaintext), three.now)
    assert (
        a.node.stats()["drop_truncated-message"]
        == stats_before.get("drop_truncated-message", 0) + 1
    )
    assert _snapshot(a) == before


def test_datagrams_fit_and_put_the_heartbeat_first(three: Cluster) -> None:
    a = three.host(1)
    bucket = min(a.owned)
    for n in range(300):
        a.node.connection_new(conn_in_bucket(bucket, n), three.now)
    datagrams = sync_datagrams(a.node, three.now + 0.05)
    assert len(datagrams) >= 2
    assert all(len(d) <= wire.MAX_DATAGRAM for d in datagrams)
    b = three.host(2).node
    first = b._encryption.open(datagrams[0])
    assert first is not None
    msgs = wire.decode_messages(first[1])
    assert type(msgs[0]).__name__ == "Heartbeat"
    # the claim, when it rides on this heartbeat, right after it; then the data
    # (if the first payload fits beside the heartbeat and its echo)
    names = [type(m).__name__ for m in msgs]
    assert names[1:2] in (["RangeState"], ["RbData"], [])
    assert "RangeState" not in names[2:]


def _destinations_and_types(node: Node, peer: Node, now: float) -> list[tuple[str, list[str]]]:
    out = []
    for dgram, where in node.datagrams_to_send(now):
        opened = peer._encryption.open(dgram)
        assert opened is not None
        out.append((where.value, [type(m).__name__ for m in wire.decode_messages(opened[1])]))
    return out


def test_zone_copies_of_the_heartbeat_only_when_zone_heartbeats_are_configured() -> None:
    peer = Node(config(9), random.Random(9), 0.0)
    plain = Node(config(1), random.Random(1), 0.0)
    plain.connection_new(conn_in_bucket(3), 0.0)
    sent = _destinations_and_types(plain, peer, TALK)
    assert sent and {where for where, _ in sent} == {"sync"}
    assert plain.stats()["datagrams_sealed"] == len(sent)  # one AEAD operation each

    zoned = Node(config(1, zone_heartbeats=True), random.Random(1), 0.0)
    zoned.connection_new(conn_in_bucket(3), 0.0)
    zoned.handle_timer(TALK)  # it heard nobody on the sync network: in doubt
    peer = Node(config(9), random.Random(9), 0.0)  # a fresh replay window: same counters
    sent = _destinations_and_types(zoned, peer, TALK)
    zone = [types for where, types in sent if where == "zones"]
    # no stream data on the zone links: the heartbeat, and the claim when it rides
    assert len(zone) == 1 and zone[0][0] == "Heartbeat"
    assert set(zone[0]) <= {"Heartbeat", "RangeState"}
    assert [where for where, _ in sent].count("sync") >= 1
    # no heartbeat due: no zone copy
    assert all(w is Destination.SYNC for _, w in zoned.datagrams_to_send(TALK + 0.001))


def test_pack_keeps_order_and_limit() -> None:
    items = [bytes([i]) * (i * 10 + 5) for i in range(20)]
    chunks = pack(items, 200)
    assert b"".join(chunks) == b"".join(items)
    assert all(len(c) <= 200 for c in chunks)
    assert len(chunks) == len(pack(items, 200))
    with pytest.raises(ValueError):
        pack([bytes(300)], 200)


@pytest.mark.parametrize(
    "bad",
    [
        {"node_id": -1},
        {"incarnation": -1},
        {"heartbeat_interval": 0.0},
        {"heartbeat_misses": 0},
        {"weight": 0},
        {"protocols": frozenset()},
        {"mark_mask": 1 << 32},
    ],
)
def test_config_is_validated(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        config(1, **bad)


def test_status_views_and_key_rotation_at_runtime(three: Cluster) -> None:
    a, b = three.host(1), three.host(2)
    three.new_connection(2, conn_in_bucket(min(b.owned)))
    counts = a.node.connection_counts()
    assert counts["local"] == 0
    assert counts["peers"] == {
        "192.0.2.2": {"entries": 1, "alive": True},
        "192.0.2.3": {"entries": 0, "alive": True},
    }
    assert a.node.phase() == "member" and a.node.stable
    assert a.node.stats()["ready"] == 1
    # Rotation: everyone accepts the new key, then B sends with it.
    both = KEYRING.with_key(1, bytes(32 * [9]))
    for h in three.hosts.values():
        h.node.set_keyring(both)
    b.node.set_keyring(both.switch_to(1))
    conn = conn_in_bucket(min(b.owned), 5)
    three.new_connection(2, conn)
    assert conn.key in a.node.peer_cache(nid(2))
    # A node that dropped the old key no longer hears A (still sending with key 0).
    b.node.set_keyring(both.switch_to(1).without_key(0))
    before = b.node.stats().get("drop_unknown-key", 0)
    three.run(0.1)
    assert b.node.stats()["drop_unknown-key"] > before


def test_a_reordered_older_heartbeat_does_not_revert_newer_state(three: Cluster) -> None:
    a, b = three.host(1), three.host(2)
    old = sync_datagrams(b.node, three.now + 0.05)  # heartbeat: B active
    b.node.drain(three.now + 0.06)
    new = sync_datagrams(b.node, three.now + 0.06)  # heartbeat: B draining
    assert old and new
    before = a.node.stats().get("drop_stale-state", 0)
    for dgram in new + old:  # the older one arrives last
        a.node.receive_datagram(dgram, three.now + 0.07)
    assert nid(2) not in a.node.distribution_members()  # still seen as draining
    assert a.node.stats()["drop_stale-state"] == before + len(old)


def test_kernel_echo_of_injected_entries_sends_nothing(three: Cluster) -> None:
    b = three.host(2)
    conns = [conn_in_bucket(bucket, n) for n, bucket in enumerate(sorted(b.owned)[:4])]
    for conn in conns:
        three.new_connection(2, conn)
    b.alive = False
    three.run(0.4)
    a = three.host(1)
    mine = [c for c in conns if c.bucket in a.owned]
    assert mine
    assert a.node.stats()["injected"] == len(mine)
    assert a.node.local_entries().keys() >= {c.key for c in mine}
    three.run(0.06)  # flush what the takeover itself announces
    sent = a.node.stats()["rb_data_sent"]
    for conn in mine:  # the real kernel reports its injected entries as NEW
        a.node.connection_new(conn, three.now)
    sync_datagrams(a.node, three.now)
    assert a.node.stats()["rb_data_sent"] == sent


def test_a_zone_link_carries_heartbeats_only(three: Cluster) -> None:
    """Zone links face customers (issue 18.5): a sealed datagram with stream
    data that arrives there is dropped whole; the same datagram on the sync
    network is taken. Heartbeats and range state are taken on both."""
    a, b, c = three.host(1), three.host(2), three.host(3)
    conn = conn_in_bucket(min(b.owned), 11)
    b.node.connection_new(conn, three.now)
    sealed = sync_datagrams(b.node, three.now + 0.001)
    assert sealed
    for d in sealed:
        a.node.receive_datagram(d, three.now + 0.001, via=Destination.ZONES)
        c.node.receive_datagram(d, three.now + 0.001)
    assert conn.key not in a.node.peer_cache(nid(2))
    assert a.node.stats()["drop_not-for-zone-link"] >= 1
    assert conn.key in c.node.peer_cache(nid(2))


def test_zone_heartbeats_keep_a_peer_alive_without_the_sync_network() -> None:
    nodes = [Node(config(i, zone_heartbeats=True), random.Random(i), 0.0) for i in (1, 2)]
    now = 0.0

    def exchange(where: Destination) -> None:
        for sender, receiver in ((nodes[0], nodes[1]), (nodes[1], nodes[0])):
            for d, dest in sender.datagrams_to_send(now):
                if dest is where:
                    receiver.receive_datagram(d, now, via=where)
        for n in nodes:
            n.handle_timer(now)

    while now < 1.0:  # both up over the sync network
        now += STEP
        exchange(Destination.SYNC)
    assert nid(2) in nodes[0].members()
    while now < 2.0:  # the sync network is gone; the zone links carry on
        now += STEP
        exchange(Destination.ZONES)
    assert nid(2) in nodes[0].members() and nid(1) in nodes[1].members()
    while now < 3.0:  # and without them too: now it is dead
        now += STEP
        for n in nodes:
            n.datagrams_to_send(now)
            n.handle_timer(now)
    assert nid(2) not in nodes[0].members()


def test_a_zone_copy_after_its_sync_copy_is_dropped_unopened_alone_it_counts() -> None:
    """A node answering a peer's doubt seals its zone copy just before the
    sync copy and sends it just after: while the sync network works it
    reaches a peer stale and is dropped before the AEAD; when the sync copy is
    lost, the zone copy is what keeps the node alive."""
    a = Node(config(1, zone_heartbeats=True), random.Random(1), 0.0)
    b = Node(config(2), random.Random(2), 0.0)
    doubter = Node(config(3, zone_heartbeats=True), random.Random(3), 0.0)
    doubter.handle_timer(TALK)  # heard nobody on the sync network
    for d, where in doubter.datagrams_to_send(TALK):
        a.receive_datagram(d, TALK, where)  # its zone copy opened: a answers
    assert a.stats()["zone_answers"] == 1
    sent = a.datagrams_to_send(TALK)
    assert [where for _, where in sent] == [Destination.SYNC, Destination.ZONES]
    (sync, _), (zone, _) = sent
    b.receive_datagram(sync, TALK)
    assert b.stats()["heartbeats_received"] == 1
    b.receive_datagram(zone, TALK, Destination.ZONES)
    assert b.stats()["heartbeats_received"] == 1
    assert b.stats()["drop_zone-copy-stale"] == 1
    # the next heartbeat: its sync copy is lost, the zone copy is heard
    later = a.datagrams_to_send(TALK + 0.06)
    zone_only = [d for d, where in later if where is Destination.ZONES]
    assert len(zone_only) == 1
    b.receive_datagram(zone_only[0], TALK + 0.06, Destination.ZONES)
    assert b.stats()["heartbeats_received"] == 2
    assert b.stats()["drop_zone-copy-stale"] == 1


def test_zone_copies_go_out_only_while_a_sync_path_is_in_doubt() -> None:
    """Zone heartbeats cost every peer a datagram per heartbeat and zone: they
    go out only while some node doubts the sync network. A node that stops
    hearing a peer there doubts it and seals its zone copies after the sync
    copy, so the peer opens them and answers on the zone links too; a sync
    path lost in either direction alone therefore takes nobody down."""
    nodes = [Node(config(i, zone_heartbeats=True), random.Random(i), 0.0) for i in (1, 2)]
    now = 0.0
    zone_sent = {1: 0, 2: 0}

    def run(until: float, sync_ok: tuple[bool, bool]) -> None:
        """Exchange until `until`; sync_ok: (1 -> 2 delivered, 2 -> 1 delivered)."""
        nonlocal now
        while now < until:
            now = round(now + STEP, 9)
            for i, (sender, receiver) in enumerate(((nodes[0], nodes[1]), (nodes[1], nodes[0]))):
                for d, dest in sender.datagrams_to_send(now):
                    if dest is Destination.ZONES:
                        zone_sent[i + 1] += 1
                    if dest is Destination.ZONES or sync_ok[i]:
                        receiver.receive_datagram(d, now, via=dest)
            for n in nodes:
                n.handle_timer(now)

    run(1.0, (True, True))
    assert nid(2) in nodes[0].members() and nid(1) in nodes[1].members()
    zone_sent.update({1: 0, 2: 0})
    run(2.0, (True, True))  # the doubts of the start are long over
    assert zone_sent == {1: 0, 2: 0}
    for sync_ok in ((True, False), (False, True), (False, False)):
        run(now + 1.0, sync_ok)
        assert nid(2) in nodes[0].members() and nid(1) in nodes[1].members(), sync_ok
        assert zone_sent[1] > 0 and zone_sent[2] > 0, sync_ok
        run(now + 1.0, (True, True))  # healed: the zone copies stop again
        zone_sent.update({1: 0, 2: 0})
        run(now + 1.0, (True, True))
        assert zone_sent == {1: 0, 2: 0}, sync_ok
    assert nodes[0].stats()["zone_doubts"] >= 2 and nodes[1].stats()["zone_answers"] >= 1


def test_a_node_whose_link_fails_says_so_on_the_zone_links_at_once() -> None:
    """The dead link may be the sync link: the heartbeat that says the node's
    links are down goes to the zone links too, without waiting for a doubt."""
    nodes = [Node(config(i, zone_heartbeats=True), random.Random(i), 0.0) for i in (1, 2)]
    now = 0.0
    while now < 2.0:  # up over the sync network, the start's doubts over
        now = round(now + STEP, 9)
        for sender, receiver in ((nodes[0], nodes[1]), (nodes[1], nodes[0])):
            for d, dest in sender.datagrams_to_send(now):
                receiver.receive_datagram(d, now, via=dest)
        for n in nodes:
            n.handle_timer(now)
    assert all(w is Destination.SYNC for _, w in nodes[0].datagrams_to_send(now))
    nodes[0].set_link_status(False, now)
    zone = [d for d, w in nodes[0].datagrams_to_send(now) if w is Destination.ZONES]
    assert len(zone) == 1
    nodes[1].receive_datagram(zone[0], now, via=Destination.ZONES)
    assert nid(1) not in nodes[1].members()  # its heartbeat said: links down


def test_a_node_whose_own_link_fails_forwards_nothing_at_once(three: Cluster) -> None:
    """Its peers take its buckets when its heartbeat says its links are down;
    it must not wait to be told they did (its sync link may be the dead one)."""
    h = three.host(3)
    owned = h.owned
    assert h.node.active_buckets() == owned and owned
    h.group = 1  # nobody hears it, it hears nobody: its sync link is gone
    h.node.set_link_status(False, three.now)
    three.pump()
    assert h.node.active_buckets() == frozenset()
    _, last = events_of(h, ev.ActiveBucketsChanged)[-1]
    assert isinstance(last, ev.ActiveBucketsChanged) and last.removed == owned
    h.group = 0
    h.node.set_link_status(True, three.now)
    three.run(1.0)
    assert h.owned and h.node.active_buckets() == h.owned
