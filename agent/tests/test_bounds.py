"""Every per-peer table and every peer-triggered cost is bounded (issue 18,
points 1 and 2): the limits, what happens at each, and the counter that
says so. Each test fails without its bound."""

from __future__ import annotations

import random

import pytest
from test_conntrack_sync import BUCKETS, GROUPS, conn
from test_ct_helpers_sync import ftp_control, pasv_expectation
from test_node import SETTINGS, config, nid

from availability_manager import wire
from availability_manager.availability import MAX_INCARNATION_JUMP, Availability, Heartbeat
from availability_manager.conntrack_sync import ConntrackSync
from availability_manager.crypto import MAX_COUNTER_JUMP, Encryption, Keyring
from availability_manager.ct_messages import CtExpect, CtNew, CtResyncRequest
from availability_manager.node_config import NodeConfig

KEYRING = Keyring.single(bytes(range(32)))
ME = 100


def sealed_by(sender: int, counter: int, text: bytes = b"x") -> bytes:
    return Encryption(sender, KEYRING, counter).seal(text)


# -- the sender gate (crypto) ---------------------------------------------------------


def test_a_sender_outside_the_configured_members_is_dropped_before_any_state() -> None:
    rx = Encryption(ME, KEYRING, 0, allowed_senders=frozenset({ME, 1, 2}))
    assert rx.open(sealed_by(1, 5)) is not None
    assert rx.open(sealed_by(3, 5)) is None
    assert rx.drops["unknown-sender"] == 1
    assert 3 not in rx._windows


def test_new_senders_beyond_max_senders_are_dropped_and_counted() -> None:
    rx = Encryption(ME, KEYRING, 0, max_senders=3)
    opened = [rx.open(sealed_by(sender, 1)) is not None for sender in range(1000, 4000)]
    assert opened[:3] == [True] * 3
    assert not any(opened[3:])
    assert rx.drops["too-many-senders"] == 2997
    assert rx.open(sealed_by(1001, 2)) is not None  # a known sender still gets through


def test_a_counter_jump_cannot_push_a_sender_window_out_of_reach() -> None:
    rx = Encryption(ME, KEYRING, 0)
    assert rx.open(sealed_by(1, 1000)) is not None
    assert rx.open(sealed_by(1, 2**64 - 1)) is None  # forged by another key holder
    assert rx.drops["counter-jump"] == 1
    assert rx.open(sealed_by(1, 1001)) is not None  # the real sender is not locked out
    assert rx.open(sealed_by(1, 1001 + MAX_COUNTER_JUMP)) is not None  # a long downtime is fine


def test_the_node_config_validates_members_and_limits() -> None:
    with pytest.raises(ValueError, match="own id"):
        config(1, members=frozenset({nid(2)}))
    with pytest.raises(ValueError, match="max_peers"):
        config(1, max_peers=0)
    assert isinstance(config(1, members=frozenset({nid(1), nid(2)})), NodeConfig)


# -- incarnations (availability) ---------------------------------------------------------


def _hb(incarnation: int) -> Heartbeat:
    return Heartbeat(incarnation, 2, SETTINGS.fingerprint(), wire.WIRE_VERSION, 0, 1, 0, 1)


def test_an_incarnation_jump_is_bounded_while_the_peer_is_heard() -> None:
    av = Availability(ME, 1, SETTINGS.fingerprint(), now=0.0)
    av.receive(_hb(1000), 1, 0.0)
    av.receive(_hb(2**64 - 1), 1, 0.01)  # forged: would make the real ones stale for good
    assert av.stats["incarnation_jump"] == 1
    av.receive(_hb(1000), 1, 0.02)
    assert av.stats["stale"] == 0  # the real node's heartbeats still count
    av.receive(_hb(1000 + MAX_INCARNATION_JUMP), 1, 0.03)  # a restart: accepted
    assert av._peers[1].incarnation == 1000 + MAX_INCARNATION_JUMP


def test_incarnation_steps_come_at_most_once_per_timeout() -> None:
    av = Availability(ME, 1, SETTINGS.fingerprint(), now=0.0)
    av.receive(_hb(10), 1, 0.0)
    av.receive(_hb(11), 1, 0.01)
    av.receive(_hb(12), 1, 0.02)  # a second step within one timeout
    assert av.stats["incarnation_too_soon"] == 1
    av.receive(_hb(12), 1, 0.01 + av.timeout)
    assert av._peers[1].incarnation == 12


# -- conntrack sync: caches, requests, rounds ----------------------------------------------


def _sync(**kw: object) -> ConntrackSync:
    return ConntrackSync(
        ME,
        BUCKETS,
        groups=GROUPS,
        rng=random.Random(1),
        now=0.0,
        **kw,  # type: ignore[arg-type]
    )


def test_a_peer_cache_stops_at_max_cache_entries_and_counts() -> None:
    s = _sync(max_cache_entries=10)
    s.peer_up(1, 0.0)
    for i in range(25):
        s.receive(CtNew.from_connection(conn(i)), 1, 0.0)
    assert s.cache_size(1) == 10
    assert s.stats.rejected["cache-full"] == 15
    s.receive(CtNew.from_connection(conn(3)), 1, 0.0)  # a known key is still updated
    assert s.stats.rejected["cache-full"] == 15


def _requests(s: ConntrackSync, now: float) -> list[CtResyncRequest]:
    return [m for m in s.messages_to_send(now) if isinstance(m, CtResyncRequest)]


def test_forced_resync_requests_are_held_and_merged_within_the_holdoff() -> None:
    """After a long outage every datagram past the window raised OutOfSync:
    one request went out per datagram, each a full round at the peer."""
    s = _sync(request_holdoff=0.5)
    s.peer_up(1, 0.0)
    s.messages_to_send(0.0)
    now = 1.0
    s.out_of_sync(1, "receiver", now)
    assert _requests(s, now) == [CtResyncRequest(1, ())]
    for i in range(100):
        s.out_of_sync(1, "receiver", now + i * 0.001)
    assert _requests(s, now + 0.1) == []
    assert s.stats.resync_requests_held == 100
    timer = s.next_timer()
    assert timer is not None and timer <= now + 0.5
    s.handle_timer(now + 0.4)
    assert _requests(s, now + 0.4) == []
    s.handle_timer(now + 0.5)
    assert _requests(s, now + 0.5) == [CtResyncRequest(1, ())]  # one, after the holdoff
    s.handle_timer(now + 1.2)
    assert _requests(s, now + 1.2) == []


def test_a_start_merged_into_the_pending_round_re_sends_nothing() -> None:
    """A round re-sends the expectations; a start merged into the pending
    round used to re-send them each time (16,285 datagrams in one burst)."""
    s = _sync(max_messages_per_call=2)
    master = ftp_control()
    s.local_new(master, 0.0)
    for i in range(1, 20):
        s.local_new(conn(i), 0.0)
    s.local_expect_new(pasv_expectation(master), 0.0)
    _expectations_sent(s, 0.0)
    s.peer_up(1, 0.0)  # a round starts (and re-sends the expectation)
    s.peer_up(2, 0.0)  # a second one is pending
    sent = _expectations_sent(s, 0.0)
    assert sent == 1
    for _ in range(50):
        s.out_of_sync(1, "sender", 0.0)  # a burst: every start merges
    assert _expectations_sent(s, 0.0) == 0
    assert s.stats.resync_starts_merged == 50
    for t in range(1, 40):  # the pending round begins: its expectations go out once
        s.messages_to_send(t * 0.1)
    assert s.stats.sent["CtExpect"] == 3  # when created, round 1, the pending round


def _expectations_sent(s: ConntrackSync, now: float) -> int:
    """Pull everything due at `now`; how many expectations went out."""
    count = 0
    while out := s.messages_to_send(now):
        count += sum(isinstance(m, CtExpect) for m in out)
    return count


def test_a_skipped_stream_owes_its_sender_our_table_once_it_flows_again() -> None:
    """A long outage loses both directions: the peer's requests to us were in
    what we skipped, and nothing else would ever answer them (the caches
    stayed apart after the heal in the long-sync-partition scenario)."""
    s = _sync()
    s.peer_up(1, 0.0)
    _expectations_sent(s, 0.0)
    for t in range(1, 30):
        s.messages_to_send(t * 0.01)  # the peer-up round ends
    rounds = sum(s.stats.resyncs.values())
    s.stream_skipped(1, 1.0)
    assert _requests(s, 1.0) == [CtResyncRequest(1, ())]
    assert sum(s.stats.resyncs.values()) == rounds  # nothing yet: it cannot hear us
    s.receive(CtNew.from_connection(conn(1)), 1, 1.5)  # its stream flows again
    s.receive(CtNew.from_connection(conn(2)), 1, 1.5)
    assert s.stats.resyncs["peer-stream-skipped"] == 1
