"""Conntrack synchronisation: every node's relevant conntrack entries, replicated
to every peer over the reliable broadcast (the seed's "conntrack protocol").

Sans-I/O. The Node feeds kernel conntrack events in (`local_*`), hands every
message from `messages_to_send(now)` to the reliable broadcast (FIFO and
gap-free per sender, or an Out-of-Sync signal) and passes the CT messages it
delivers to `receive`.

What this object owns:

- the *mirror*: this node's relevant entries as last announced to peers;
- one *cache* per peer, alive or dead: that peer's entries as it announced
  them. A dead peer's cache is what a survivor injects when it claims the dead
  node's buckets; it lives until `forget_peer`;
- the resync *rounds* this node sends, one at a time and paced;
- the periodic digest check, both as sender and as receiver.

Transitions:

    sender, rounds     idle --start(scope)--> round(scope)
                       round --snapshot sent, RESYNC_DONE--> idle | round(pending scope)
                       a start while a round runs merges into the pending scope.
                       Starts: peer_up, out_of_sync(role="sender"), a RESYNC_REQUEST
                       targeted at us (scope = its groups, or all).
    receiver, per peer (none) --any message | peer_up--> alive --peer_down--> dead
                       dead --peer_up--> alive;  any --forget_peer--> (none)
    receiver, rounds   keys of NEW_RESYNC are collected per peer; at the peer's
                       RESYNC_DONE(scope) its cached entries in scope that were not
                       collected are stale and removed, and the collection restarts.
    receiver, digests  compared once the peer's first full round has ended, or
                       2 check intervals after first contact (that round was lost);
                       a mismatch asks for the bad groups, one request at a time.

Wire versions (wire.py): `set_wire_version` is told the version the cluster
speaks (the lowest its members announce). Below 2, records go out exactly as
a version-1 node sends them (no helper name, no expectations), and what comes
in is read as a version-1 node reads it (helper names and expectations skipped). When it rises
to 2, a full round re-sends every entry with its helper, and every
expectation, because what peers cached meanwhile lacks them.

Expectations (version 2): the kernel's pending expectations (e.g. FTP's data
connection announced by PASV) are mirrored and cached like entries, but
outside the digests and rounds' staleness rule: they live seconds, the
kernel's timeout removes them, and a cached one is dropped with its master
(CT_DELETE of the master), its own CT_EXPECT_DELETE, or `forget_peer`. A
round re-sends the sender's expectations in its scope. They are injected
after their master when a node claims the master's bucket.

Why rounds are consistent without a start marker: a sender runs one round at a
time and, while a round runs, announces every new entry in the round's scope
as NEW_RESYNC too. So the NEW_RESYNCs between two RESYNC_DONEs of one sender
are exactly its entries in scope at the end of the round (FIFO delivery keeps
the DELETEs in between in order).

Why a digest mismatch is real: CT_DIGEST travels in the same FIFO stream as
the changes, and is not sent while a round is running or pending, so a
receiver that applied everything before it must hold exactly the sender's
mirror. A mismatch means a message was lost without an Out-of-Sync signal.
"""

from __future__ import annotations

import collections
import dataclasses
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

from .connection import (
    IPS_SYNC_MASK,
    PROTO_TCP,
    TCP_CLOSE,
    TCP_CLOSE_WAIT,
    TCP_ESTABLISHED,
    TCP_FIN_WAIT,
    TCP_LAST_ACK,
    TCP_NONE,
    TCP_SYN_RECV,
    TCP_SYN_SENT,
    TCP_SYN_SENT2,
    TCP_TIME_WAIT,
    Connection,
)
from .ct_messages import (
    MAX_GROUPS,
    VERSION_HELPERS,
    CtDelete,
    CtDigest,
    CtExpect,
    CtExpectDelete,
    CtMessage,
    CtNew,
    CtNewResync,
    CtResyncDone,
    CtResyncRequest,
    CtUpdate,
    Expectation,
    helper_of,
    with_helper,
)
from .record_table import (
    MORE,
    SAME,
    STATE_ONLY,
    EntryRecord,
    RecordTable,
    entry_hash,
    entry_record,
    record_and_kind,
    record_change,
    stored_connection,
    stored_entry_record,
    stored_plain,
)
from .relevance import default_is_relevant
from .types import NodeId
from .wire import WIRE_VERSION

MAX_PENDING_EXPECTATIONS = 4096  # expectations whose master's NEW event is still to come
# Entries cached per peer by default: far above any kernel table this agent
# syncs (conntrack's default maximum is 262,144), low enough that one peer
# (buggy or hostile) cannot take all of this node's memory.
MAX_CACHE_ENTRIES = 1 << 22
MAX_EXPECTATIONS_PER_PEER = 65536  # cached expectations per peer (they live seconds)


# How far a connection has progressed; when several caches hold one key, the
# takeover prefers the most advanced copy (connections only move forward).
_TCP_PROGRESS = {
    TCP_NONE: 0,
    TCP_SYN_SENT: 1,
    TCP_SYN_SENT2: 2,
    TCP_SYN_RECV: 3,
    TCP_ESTABLISHED: 4,
    TCP_FIN_WAIT: 5,
    TCP_CLOSE_WAIT: 6,
    TCP_LAST_ACK: 7,
    TCP_TIME_WAIT: 8,
    TCP_CLOSE: 9,
}


def progress(conn: Connection) -> tuple[int, int]:
    state = _TCP_PROGRESS.get(conn.state, 0) if conn.proto == PROTO_TCP else conn.state
    return state, (conn.status & IPS_SYNC_MASK).bit_count()


def _in_buckets(
    table: Mapping[bytes, Expectation], buckets: frozenset[int]
) -> Iterable[Expectation]:
    return (e for e in table.values() if e.bucket in buckets)


@dataclasses.dataclass(slots=True)
class _Round:
    scope: frozenset[int]
    keys: list[bytes]  # snapshot of the mirror's keys in scope when the round started
    pos: int = 0


# -- events for the Node ------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ResyncReceived:
    """A peer finished a resync round; `groups` is None for a full one."""

    peer: NodeId
    groups: frozenset[int] | None
    stale_dropped: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DigestMismatch:
    """Our cache of `peer` disagreed with its digest in these groups: a message
    was lost silently; a scoped resync has been requested (unless one is pending)."""

    peer: NodeId
    groups: frozenset[int]
    requested: bool


ConntrackSyncEvent = ResyncReceived | DigestMismatch


@dataclasses.dataclass(frozen=True, slots=True)
class ConntrackSyncStats:
    sent: Mapping[str, int]  # by message type name
    received: Mapping[str, int]
    rejected: Mapping[str, int]  # received messages dropped, by reason
    local_entries: int
    cache_sizes: Mapping[NodeId, int]
    dead_peers: frozenset[NodeId]
    resyncs: Mapping[str, int]  # rounds started by this node, by cause
    resync_requests: Mapping[str, int]  # requests sent, by cause
    resync_requests_held: int  # forced requests held back by request_holdoff (merged)
    resync_starts_merged: int  # round starts that added nothing to the pending round
    digest_mismatches: int
    unknown_updates: int
    unknown_deletes: int
    stale_dropped: int
    local_ignored: int  # kernel events for irrelevant or unknown entries
    held_back: int  # entries younger than the sync delay, not announced yet
    died_before_sync: int  # entries that ended while held back (never sent)


Role = Literal["sender", "receiver"]

# What the sync hands the reliable broadcast: messages, and plain entry
# records already encoded (record_table.EntryRecord; `encode_ct_fast` writes both).
Outgoing = CtMessage | EntryRecord


class ConntrackSync:
    """The conntrack protocol of one node. See the module docstring."""

    def __init__(
        self,
        node_id: NodeId,
        buckets: int,
        *,
        is_relevant: Callable[[Connection], bool] = default_is_relevant,
        check_interval: float = 2.0,
        groups: int = 16,
        max_messages_per_call: int = 256,
        pace_interval: float = 0.01,
        status_mask: int = IPS_SYNC_MASK,
        wire_version: int = WIRE_VERSION,
        sync_delay: float = 0.0,
        max_cache_entries: int = MAX_CACHE_ENTRIES,
        request_holdoff: float = 0.5,
        rng: random.Random,
        now: float,
    ) -> None:
        if not 1 <= buckets <= 0x10000:
            raise ValueError(f"buckets must be 1..65536, got {buckets}")
        if not 1 <= groups <= MAX_GROUPS:
            raise ValueError(f"groups must be 1..{MAX_GROUPS}, got {groups}")
        if not 0 <= sync_delay <= 3600:
            raise ValueError(f"sync_delay must be 0..3600 s, got {sync_delay}")
        if check_interval <= 0 or pace_interval < 0 or max_messages_per_call < 1:
            raise ValueError("check_interval > 0, pace_interval >= 0, max_messages_per_call >= 1")
        if max_cache_entries < 1 or request_holdoff < 0:
            raise ValueError("max_cache_entries >= 1, request_holdoff >= 0")
        self.max_cache_entries = max_cache_entries
        self.request_holdoff = request_holdoff
        self.node_id = node_id
        self.buckets = buckets
        self.groups = groups
        self.check_interval = check_interval
        self.max_messages_per_call = max_messages_per_call
        self.pace_interval = pace_interval
        self._is_relevant = is_relevant
        self._status_mask = status_mask
        self._rng = rng
        self._all_groups = frozenset(range(groups))
        self.wire_version = wire_version

        # This node's announced entries, as the records peers were sent
        # (record_table.py): half the memory of Connections, and a new
        # event is compared with the announced one without decoding it.
        self._mirror = RecordTable(groups)
        self._queue: collections.deque[Outgoing] = collections.deque()
        self._round: _Round | None = None
        self._pending_scope: frozenset[int] = frozenset()  # empty: no round pending
        self._last_pull = now
        self._round_due = now  # when the running round may add its next batch
        self._check_at = now + check_interval * rng.uniform(0.5, 1.0)

        self._caches: dict[NodeId, RecordTable] = {}
        self._dead: set[NodeId] = set()
        self._collected: dict[NodeId, set[bytes]] = {}  # NEW_RESYNC keys since last DONE
        self._requested_at: dict[NodeId, float] = {}  # our outstanding resync requests
        # Forced requests waiting out `request_holdoff`, per peer: merged scope
        # (empty: all groups) and the cause to count it under.
        self._held_requests: dict[NodeId, frozenset[int]] = {}
        self._forced_at: dict[NodeId, float] = {}  # when a forced request last went out
        self._held_causes: dict[NodeId, str] = {}
        self._requests_held = 0
        self._merged_starts = 0  # round starts that added nothing to the pending one
        self._owed_after_skip: set[NodeId] = set()  # peers whose stream we skipped
        # Peers with a cache but no full round received yet, and since when.
        self._unsynced_since: dict[NodeId, float] = {}
        self._events: collections.deque[ConntrackSyncEvent] = collections.deque()
        self._expect_mirror: dict[bytes, Expectation] = {}
        self._expect_pending: dict[bytes, Expectation] = {}  # masters not mirrored yet
        self._expect_caches: dict[NodeId, dict[bytes, Expectation]] = {}

        self._sent: collections.Counter[str] = collections.Counter()
        self._received: collections.Counter[str] = collections.Counter()
        self._rejected: collections.Counter[str] = collections.Counter()
        self._resyncs: collections.Counter[str] = collections.Counter()
        self._requests: collections.Counter[str] = collections.Counter()
        self._digest_mismatches = 0
        self._unknown_updates = 0
        self._unknown_deletes = 0
        self._stale_dropped = 0
        self._local_ignored = 0
        # The sync delay (FortiGate's session-sync delay, conntrackd has none):
        # entries younger than `sync_delay` are held here, key -> (due, latest
        # state), and announced only if still alive when due. Short-lived
        # connections (DNS, most HTTP) then cost no sync at all, at the price
        # of being lost if their owner fails in their first `sync_delay`
        # seconds. Insertion order is due order (one delay for all).
        self.sync_delay = sync_delay
        self._young: dict[bytes, tuple[float, Connection]] = {}
        self._died_young = 0

    # -- local side: the kernel's table of this node ---------------------------

    def local_new(self, conn: Connection, now: float) -> None:
        """A kernel NEW event. Idempotent: an entry we already announced
        unchanged (e.g. one we injected via `adopt`) is not announced again."""
        if not self._held_back(conn, now):
            self._local_upsert(conn)

    def local_update(self, conn: Connection, now: float) -> None:
        """A kernel UPDATE event; only changes of state, status or mark are sent."""
        if not self._held_back(conn, now):
            self._local_upsert(conn)

    def _held_back(self, conn: Connection, now: float) -> bool:
        """With a sync delay: keep an entry not announced yet back until it is
        old enough (its latest state replaces the held one). True if held."""
        if not self.sync_delay:
            return False
        key = conn.key
        young = self._young.get(key)
        if young is not None:
            self._young[key] = (young[0], conn)
            return True
        if key in self._mirror or not self._is_relevant(conn):
            return False  # announced already, or ignored by _local_upsert
        self._young[key] = (now + self.sync_delay, conn)
        return True

    def announce_held(self) -> None:
        """Announce every held entry now, whatever its age: before this node
        hands its buckets over (drain, leave), its peers must know them all."""
        held, self._young = self._young, {}
        for _, conn in held.values():
            self._local_upsert(conn)

    def _release_due(self, now: float) -> None:
        """Announce the held entries whose delay is over."""
        while self._young:
            key, (due, conn) = next(iter(self._young.items()))
            if due > now:
                return
            del self._young[key]
            self._local_upsert(conn)

    def local_amend(self, conn: Connection, now: float) -> None:
        """A kernel UPDATE event without the TCP state: the kernel sends the
        protocol state only in the events that changed it, so one reporting
        another change (a NAT helper's sequence offsets, a mark) would read
        as state NONE. The state stays the mirrored one; an entry not mirrored
        yet waits for an event that says its state."""
        key = conn.key
        young = self._young.get(key)
        if young is not None:
            self._young[key] = (young[0], conn.with_state(young[1].state, conn.status))
            return
        old = self._mirror.get(key)
        if old is None:
            self._local_ignored += 1
            return
        self._local_upsert(conn.with_state(old.state, conn.status))

    def local_destroy(self, conn: Connection, now: float) -> None:
        key = conn.key
        if self._young.pop(key, None) is not None:
            self._died_young += 1  # ended before anyone needed to know
            return
        if not self._mirror.remove(key):
            self._local_ignored += 1
            return
        self._queue.append(CtDelete(key))

    def local_dump(self, conns: Iterable[Connection], now: float) -> None:
        """The whole kernel table, re-read after lost events: announce the difference."""
        seen: set[bytes] = set()
        for conn in conns:
            if self._held_back(conn, now):
                seen.add(conn.key)
                continue
            key = self._local_upsert(conn)
            if key is not None:
                seen.add(key)
        for key in [k for k in self._young if k not in seen]:
            del self._young[key]  # ended while its events were lost
            self._died_young += 1
        for key in [k for k in self._mirror if k not in seen]:
            self._mirror.remove(key)
            self._queue.append(CtDelete(key))

    def adopt(self, conns: Iterable[Connection], now: float) -> None:
        """Entries the Node injected into the kernel after a takeover are ours
        now: mirror them and announce them so every cache follows the new owner."""
        for conn in conns:
            self._young.pop(conn.key, None)  # ours now: announced at once
            self._local_upsert(conn)

    def _local_upsert(self, conn: Connection) -> bytes | None:
        """Mirror `conn` and queue what peers need; the key if it is mirrored.
        The rules in terms of Connections (the reference in
        test_conntrack_sync.py) are decided here on the encoded records."""
        key = conn.key
        if not self._is_relevant(conn):
            self._local_ignored += 1
            if self._mirror.remove(key):  # it was relevant before
                self._queue.append(CtDelete(key))
            return None
        if conn.status & ~self._status_mask:
            # Only the status bits that mean something on another node are synced;
            # the rest (CONFIRMED, DYING, ...) would cause UPDATEs that carry nothing.
            conn = conn.with_state(conn.state, conn.status & self._status_mask)
        stored = self._mirror.stored(key)
        old: Connection | None = None
        if stored is not None and not stored_plain(stored) and not conn.seqadj:
            # A generic record (helper or offsets). The kernel reports the
            # sequence offsets only in the event that changed them (and in
            # dumps); they are never removed, so an event without them means
            # "unchanged".
            old = stored_connection(stored)
            if old.seqadj:
                conn = conn.with_seqadj(old.seqadj)
        record, kind = record_and_kind(conn)
        change = MORE if stored is None else record_change(stored, record, kind)
        if change is SAME:
            return key
        h = entry_hash(conn)
        self._mirror.put_record(key, conn.bucket, h, record, kind)
        if stored is None:
            if self._expect_pending:
                for exp in [e for e in self._expect_pending.values() if e.master_key == key]:
                    del self._expect_pending[exp.key]
                    self._expect_new(exp)
        elif change is not MORE and change is not STATE_ONLY:  # both generic: compare
            if old is None:
                old = stored_connection(stored)
            if (
                old.reply == conn.reply
                and old.bucket == conn.bucket
                and helper_of(old) == helper_of(conn)  # UPDATE carries neither the helper
                and old.seqadj == conn.seqadj  # nor the sequence offsets
            ):
                change = STATE_ONLY
        if change is STATE_ONLY:
            self._queue.append(CtUpdate(key, conn.state, conn.status, conn.mark))
        else:
            self._queue.append(self._announcement(conn, key, h, record, kind))
        return key

    def _announcement(
        self, conn: Connection, key: bytes, h: int, record: bytes, kind: int
    ) -> Outgoing:
        # While a round runs, new entries in its scope are part of it (see module doc).
        r = self._round
        resync = r is not None and conn.bucket % self.groups in r.scope
        if kind:  # plain: the record is the message, the same in every wire version
            return entry_record(key, conn.bucket, h, record, kind, resync)
        if resync:
            return CtNewResync.from_connection(conn, self.wire_version)
        return CtNew.from_connection(conn, self.wire_version)

    # -- expectations (wire version 2) ---------------------------------------------

    def local_expect_new(self, exp: Expectation, now: float) -> None:
        """A kernel expectation appeared (or was injected here): mirror it and,
        when the cluster speaks version 2, announce it. It belongs to its
        master's bucket; one whose master we do not sync is never sent."""
        self._expect_new(exp)

    def _expect_new(self, exp: Expectation) -> None:
        master_bucket = self._mirror.bucket_of(exp.master_key)
        if master_bucket is None:
            # A helper may expect before its master is confirmed (TFTP's read
            # request creates the expectation on the master's first packet,
            # whose NEW event comes after): hold it until the master shows up.
            if len(self._expect_pending) >= MAX_PENDING_EXPECTATIONS:
                self._expect_pending.pop(next(iter(self._expect_pending)))
                self._local_ignored += 1
            self._expect_pending[exp.key] = exp
            return
        if exp.bucket != master_bucket:
            exp = dataclasses.replace(exp, bucket=master_bucket)
        if self._expect_mirror.get(exp.key) == exp:
            return
        self._expect_mirror[exp.key] = exp
        if self.wire_version >= VERSION_HELPERS:
            self._queue.append(CtExpect.from_expectation(exp))

    def local_expect_destroy(self, exp: Expectation, now: float) -> None:
        if self._expect_pending.pop(exp.key, None) is not None:
            return
        if self._expect_mirror.pop(exp.key, None) is None:
            self._local_ignored += 1
            return
        if self.wire_version >= VERSION_HELPERS:
            self._queue.append(CtExpectDelete(exp.key))

    def adopt_expectations(self, exps: Iterable[Expectation], now: float) -> None:
        """Expectations the Node injected after a takeover are ours now."""
        for exp in exps:
            self.local_expect_new(exp, now)

    def cached_expectations_in_buckets(self, buckets: frozenset[int]) -> list[Expectation]:
        """Peers' cached expectations in `buckets`, one per key."""
        out: dict[bytes, Expectation] = {}
        for peer in sorted(self._expect_caches):
            for exp in _in_buckets(self._expect_caches[peer], buckets):
                out.setdefault(exp.key, exp)
        return list(out.values())

    def local_expectations(self) -> list[Expectation]:
        return list(self._expect_mirror.values())

    def has_local_expectation(self, key: bytes) -> bool:
        return key in self._expect_mirror

    def cached_expectations(self, peer: NodeId) -> list[Expectation]:
        return list(self._expect_caches.get(peer, {}).values())

    def set_wire_version(self, version: int, now: float) -> None:
        """The version the cluster speaks now. Rising to 2 re-sends the whole
        table: peers cached our entries without helper names meanwhile."""
        old, self.wire_version = self.wire_version, version
        if old < VERSION_HELPERS <= version:
            self._start_round(self._all_groups, "wire-version")

    # -- membership ------------------------------------------------------------

    def peer_up(self, peer: NodeId, now: float) -> None:
        """A peer (new, or back) joined: it needs our whole table."""
        self._dead.discard(peer)
        self._cache(peer, now)
        self._start_round(self._all_groups, "peer-up")

    def peer_down(self, peer: NodeId, now: float) -> None:
        """Keep its cache for the takeover, marked dead, until `forget_peer`."""
        if peer in self._caches:
            self._dead.add(peer)
        self._requested_at.pop(peer, None)
        self._held_requests.pop(peer, None)
        self._held_causes.pop(peer, None)
        self._forced_at.pop(peer, None)

    def forget_peer(self, peer: NodeId) -> None:
        self._owed_after_skip.discard(peer)
        self._caches.pop(peer, None)
        self._dead.discard(peer)
        self._collected.pop(peer, None)
        self._requested_at.pop(peer, None)
        self._held_requests.pop(peer, None)
        self._held_causes.pop(peer, None)
        self._forced_at.pop(peer, None)
        self._unsynced_since.pop(peer, None)
        self._expect_caches.pop(peer, None)

    def out_of_sync(self, peer: NodeId, role: Role, now: float) -> None:
        """The reliable broadcast lost messages. As "sender" (peers may have lost
        ours): resend everything. As "receiver" (we lost `peer`'s): ask it to."""
        if role == "sender":
            self._start_round(self._all_groups, "out-of-sync")
        elif role == "receiver":
            self._request(peer, frozenset(), "out-of-sync", now, force=True)
        else:
            raise ValueError(f"role must be 'sender' or 'receiver', got {role!r}")

    def stream_skipped(self, peer: NodeId, now: float) -> None:
        """The reliable broadcast skipped part of `peer`'s stream (lost beyond
        repair): ask for its table, as `out_of_sync`. And what we skipped may
        hold its requests to us (a long outage loses both directions), so we
        owe it our table once its stream flows again. (A round of its that
        was broken by the skip may prune entries whose NEW_RESYNC we skipped;
        the round we asked for, or the one it owes us after skipping ours,
        is whole and brings them back.)"""
        self.out_of_sync(peer, "receiver", now)
        self._owed_after_skip.add(peer)

    # -- peer side -------------------------------------------------------------

    def receive(self, msg: object, source: NodeId, now: float) -> None:
        """A CT message delivered by the reliable broadcast from `source`.
        Anything unusable is counted in `stats.rejected` and changes nothing."""
        if source == self.node_id:
            self._rejected["own-message"] += 1
            return
        if self._owed_after_skip and source in self._owed_after_skip:
            self._owed_after_skip.discard(source)
            self._start_round(self._all_groups, "peer-stream-skipped")
        if type(msg) is EntryRecord:  # the peer's fast path (record_table.py)
            self._received[msg.type_name] += 1
            self._receive_record(msg, source, now)
        elif isinstance(msg, CtNew | CtNewResync):
            self._received[type(msg).__name__] += 1
            self._receive_entry(msg, source, now)
        elif isinstance(msg, CtUpdate):
            self._received["CtUpdate"] += 1
            self._receive_update(msg, source)
        elif isinstance(msg, CtDelete):
            self._received["CtDelete"] += 1
            self._receive_delete(msg, source)
        elif isinstance(msg, CtDigest):
            self._received["CtDigest"] += 1
            self._receive_digest(msg, source, now)
        elif isinstance(msg, CtResyncRequest):
            self._received["CtResyncRequest"] += 1
            self._receive_request(msg)
        elif isinstance(msg, CtResyncDone):
            self._received["CtResyncDone"] += 1
            self._receive_done(msg, source, now)
        elif isinstance(msg, CtExpect | CtExpectDelete) and self.wire_version < VERSION_HELPERS:
            # Read as the cluster's version means it: a v1 node skips these.
            self._rejected["newer-than-cluster-version"] += 1
        elif isinstance(msg, CtExpect):
            self._received["CtExpect"] += 1
            self._receive_expect(msg, source, now)
        elif isinstance(msg, CtExpectDelete):
            self._received["CtExpectDelete"] += 1
            exps = self._expect_caches.get(source)
            if exps is None or exps.pop(msg.key, None) is None:
                self._unknown_deletes += 1
        else:
            self._rejected["unexpected-message"] += 1

    def receive_records(self, records: list[EntryRecord], source: NodeId, now: float) -> None:
        """`receive` for a run of fast-path entry records of one payload, in
        order, with the per-message checks made once per run: a peer does this
        for every connection of the cluster (docs/benchmarks.md, sync path)."""
        if source == self.node_id:
            self._rejected["own-message"] += len(records)
            return
        if self._owed_after_skip and source in self._owed_after_skip:
            self._owed_after_skip.discard(source)
            self._start_round(self._all_groups, "peer-stream-skipped")
        table: RecordTable | None = None
        buckets, limit = self.buckets, self.max_cache_entries
        resyncs = 0
        for rec in records:
            if rec.resync:
                resyncs += 1
            if rec.bucket >= buckets:
                self._rejected["bucket-out-of-range"] += 1
                continue
            if table is None:
                table = self._cache(source, now)
            key = rec.key
            if len(table) >= limit and key not in table:
                self._rejected["cache-full"] += 1
                continue
            table.put_record(key, rec.bucket, rec.hash, rec.record, rec.kind)
            if rec.resync:
                self._collected.setdefault(source, set()).add(key)
        if resyncs:
            self._received["CtNewResync"] += resyncs
        if len(records) > resyncs:
            self._received["CtNew"] += len(records) - resyncs

    def _cache(self, peer: NodeId, now: float) -> RecordTable:
        table = self._caches.get(peer)
        if table is None:
            table = self._caches[peer] = RecordTable(self.groups)
            self._unsynced_since[peer] = now
        return table

    def _receive_entry(self, msg: CtNew | CtNewResync, source: NodeId, now: float) -> None:
        conn = msg.to_connection()  # cannot fail: validated when the message was built
        if self.wire_version < VERSION_HELPERS:
            conn = with_helper(conn, "")  # as a v1 node reads it (attribute skipped)
        if conn.bucket >= self.buckets:
            self._rejected["bucket-out-of-range"] += 1
            return
        key = conn.key
        table = self._cache(source, now)
        if self._full(table, key):
            return
        table.put(key, conn)  # a known key is replaced
        if isinstance(msg, CtNewResync):
            self._collected.setdefault(source, set()).add(key)

    def _receive_record(self, rec: EntryRecord, source: NodeId, now: float) -> None:
        """`_receive_entry` for a record the fast path took: no helper in it,
        so every wire version reads it alike."""
        if rec.bucket >= self.buckets:
            self._rejected["bucket-out-of-range"] += 1
            return
        table = self._cache(source, now)
        if self._full(table, rec.key):
            return
        table.put_record(rec.key, rec.bucket, rec.hash, rec.record, rec.kind)
        if rec.resync:
            self._collected.setdefault(source, set()).add(rec.key)

    def _receive_expect(self, msg: CtExpect, source: NodeId, now: float) -> None:
        exp = msg.to_expectation()  # cannot fail: validated when the message was built
        if exp.bucket >= self.buckets:
            self._rejected["bucket-out-of-range"] += 1
            return
        self._cache(source, now)  # the peer is known from here on, like for an entry
        exps = self._expect_caches.setdefault(source, {})
        if exp.key not in exps and len(exps) >= MAX_EXPECTATIONS_PER_PEER:
            self._rejected["expectations-full"] += 1
            return
        exps[exp.key] = exp

    def _full(self, table: RecordTable, key: bytes) -> bool:
        """A new key for a peer cache at its limit: counted and not cached (the
        digest check then reports the difference, which is the alarm)."""
        if len(table) < self.max_cache_entries or key in table:
            return False
        self._rejected["cache-full"] += 1
        return True

    def _receive_update(self, msg: CtUpdate, source: NodeId) -> None:
        table = self._caches.get(source)
        if table is not None and table.restate(msg.key, msg.state, msg.status, msg.mark):
            return  # a plain record, patched in place
        old = table.get(msg.key) if table is not None else None
        if table is None or old is None:
            self._unknown_updates += 1  # lost NEW; the next digest check repairs it
            return
        table.put(
            msg.key, dataclasses.replace(old, state=msg.state, status=msg.status, mark=msg.mark)
        )

    def _receive_delete(self, msg: CtDelete, source: NodeId) -> None:
        table = self._caches.get(source)
        if table is None or not table.remove(msg.key):
            self._unknown_deletes += 1
            return
        exps = self._expect_caches.get(source)
        if exps:  # a master's expectations die with it (the kernel removes them too)
            for k in [k for k, e in exps.items() if e.master_key == msg.key]:
                del exps[k]
        collected = self._collected.get(source)
        if collected is not None:
            collected.discard(msg.key)

    def _receive_digest(self, msg: CtDigest, source: NodeId, now: float) -> None:
        theirs = msg.groups()
        if len(theirs) != self.groups:
            self._rejected["digest-groups-mismatch"] += 1  # configuration differs
            return
        ours = self._cache(source, now).digests()
        since = self._unsynced_since.get(source)
        if since is not None and now - since < 2 * self.check_interval:
            # Our cache of it is incomplete until its first full round for us
            # ends, and that round may not even have started: comparing now
            # would only request a second full round. Past the grace time the
            # round (or its end) must have been lost, and the check asks anew.
            self._rejected["digest-before-resync"] += 1
            return
        bad = frozenset(g for g in range(self.groups) if ours[g] != theirs[g])
        if not bad:
            return
        self._digest_mismatches += 1
        scope = frozenset() if bad == self._all_groups else bad
        requested = self._request(source, scope, "digest-mismatch", now)
        self._events.append(DigestMismatch(peer=source, groups=bad, requested=requested))

    def _receive_request(self, msg: CtResyncRequest) -> None:
        if msg.target != self.node_id:
            return  # a broadcast meant for another node
        if any(g >= self.groups for g in msg.groups):
            self._rejected["group-out-of-range"] += 1
            return
        full = not msg.groups
        self._start_round(
            self._all_groups if full else frozenset(msg.groups),
            "request-full" if full else "request-groups",
        )

    def _receive_done(self, msg: CtResyncDone, source: NodeId, now: float) -> None:
        if any(g >= self.groups for g in msg.groups):
            self._rejected["group-out-of-range"] += 1
            return
        scope = frozenset(msg.groups) if msg.groups else self._all_groups
        table = self._cache(source, now)
        collected = self._collected.pop(source, set())
        stale = [k for k in table.keys_in_groups(scope) if k not in collected]
        for key in stale:
            table.remove(key)
        self._stale_dropped += len(stale)
        self._requested_at.pop(source, None)
        if not msg.groups:
            self._unsynced_since.pop(source, None)
        self._events.append(
            ResyncReceived(
                peer=source,
                groups=frozenset(msg.groups) if msg.groups else None,
                stale_dropped=len(stale),
            )
        )

    # -- resync rounds (sending side) -----------------------------------------

    def _start_round(self, scope: frozenset[int], cause: str) -> None:
        self._resyncs[cause] += 1
        if self._round is not None:
            # Merged: the pending round sends all of it when it begins; a
            # burst of starts (one per lost datagram) costs nothing more.
            if scope <= self._pending_scope:
                self._merged_starts += 1
            self._pending_scope |= scope
            return
        self._begin_round(scope)

    def _begin_round(self, scope: frozenset[int]) -> None:
        if self.wire_version >= VERSION_HELPERS:
            # Few and short-lived: re-sent at once, not paced with the entries.
            self._queue.extend(
                CtExpect.from_expectation(e)
                for e in self._expect_mirror.values()
                if e.bucket % self.groups in scope
            )
        self._round = _Round(scope, self._mirror.keys_in_groups(scope))

    def _request(
        self, peer: NodeId, groups: frozenset[int], cause: str, now: float, *, force: bool = False
    ) -> bool:
        """Ask `peer` for a resync (all groups if `groups` is empty). Unless
        forced, not while a request of ours is unanswered: a digest that crossed
        our request in flight would only ask again. Forced (data was lost) at
        most once per `request_holdoff`: a later one waits for the holdoff
        and then goes out once, its scope merged with every one asked
        meanwhile, so a burst of losses (a long outage healing) costs the
        peer one round, not one per lost datagram."""
        asked = self._requested_at.get(peer)
        if not force and asked is not None and now - asked < 2 * self.check_interval:
            return False
        if force:
            forced = self._forced_at.get(peer)
            if forced is not None and now < forced + self.request_holdoff:
                held = self._held_requests.get(peer)
                if held is None:
                    self._held_requests[peer] = groups
                elif held and groups:
                    self._held_requests[peer] = held | groups
                else:
                    self._held_requests[peer] = frozenset()  # all groups
                self._held_causes[peer] = cause
                self._requests_held += 1
                return False
            self._forced_at[peer] = now
        self._requested_at[peer] = now
        self._requests[cause] += 1
        self._queue.append(CtResyncRequest(peer, tuple(sorted(groups))))
        return True

    def _send_held_requests(self, now: float) -> None:
        for peer, scope in list(self._held_requests.items()):
            # the same sum as next_timer's: a float difference could stay
            # below the holdoff at the very deadline and spin the timer
            if now >= self._forced_at[peer] + self.request_holdoff:
                del self._held_requests[peer]
                self._request(peer, scope, self._held_causes.pop(peer), now, force=True)

    def _next_round_message(self) -> EntryRecord | CtNewResync | CtResyncDone | None:
        r = self._round
        if r is None:
            return None
        while r.pos < len(r.keys):
            key = r.keys[r.pos]
            r.pos += 1
            stored = self._mirror.stored(key)
            if stored is None:
                continue  # deleted since the snapshot; its DELETE went out
            if stored_plain(stored):
                return stored_entry_record(key, stored, resync=True)
            return CtNewResync.from_connection(stored_connection(stored), self.wire_version)
        done = CtResyncDone(() if r.scope == self._all_groups else tuple(sorted(r.scope)))
        self._round = None
        if self._pending_scope:
            scope, self._pending_scope = self._pending_scope, frozenset()
            self._begin_round(scope)
        return done

    # -- sans-I/O surface ------------------------------------------------------

    def messages_to_send(self, now: float) -> list[Outgoing]:
        """Messages for the reliable broadcast, in order, at most
        `max_messages_per_call`. Live changes go out as soon as they are pulled;
        a resync round adds at most one batch per `pace_interval`, so a big
        table neither overruns the broadcast's sender buffer nor starves the
        heartbeats that share the link (next_timer says when to pull again)."""
        self._last_pull = now
        out: list[Outgoing] = []
        cap = self.max_messages_per_call
        while self._queue and len(out) < cap:
            out.append(self._queue.popleft())
        if self._round is not None and len(out) < cap and now >= self._round_due:
            while self._round is not None and len(out) < cap:
                step = self._next_round_message()
                if step is not None:
                    out.append(step)
            self._round_due = now + self.pace_interval
        for msg in out:
            self._sent[msg.type_name if type(msg) is EntryRecord else type(msg).__name__] += 1
        return out

    def next_timer(self) -> float | None:
        if self._queue:
            return self._last_pull  # due already: pull again
        at = self._check_at
        if self._round is not None:
            at = min(at, self._round_due)
        if self._young:
            at = min(at, next(iter(self._young.values()))[0])
        for peer in self._held_requests:
            at = min(at, self._forced_at[peer] + self.request_holdoff)
        return at

    def handle_timer(self, now: float) -> None:
        self._release_due(now)
        # A round's pacing deadline needs no action: the caller pulls messages_to_send next.
        if self._held_requests:
            self._send_held_requests(now)
        if now < self._check_at:
            return
        self._check_at = now + self.check_interval * self._rng.uniform(0.9, 1.1)
        if self._round is None:  # mid-round, receivers' caches are legitimately behind
            self._queue.append(CtDigest.from_groups(self._mirror.digests()))

    def next_event(self) -> ConntrackSyncEvent | None:
        return self._events.popleft() if self._events else None

    # -- queries for the Node ----------------------------------------------------

    def cached_in_buckets(self, buckets: frozenset[int]) -> list[Connection]:
        """Peers' cached entries (alive or dead) in `buckets`, one per key: the
        most advanced copy when several peers hold it (ties: lowest peer id)."""
        best: dict[bytes, Connection] = {}
        for peer in sorted(self._caches):
            for key, conn in self._caches[peer].in_buckets(buckets):
                have = best.get(key)
                if have is None or progress(conn) > progress(have):
                    best[key] = conn
        return list(best.values())

    def local_in_buckets(self, buckets: frozenset[int]) -> list[Connection]:
        return [conn for _, conn in self._mirror.in_buckets(buckets)]

    def local_keys_in_buckets(self, buckets: frozenset[int]) -> list[bytes]:
        return list(self._mirror.keys_in_buckets(buckets))

    def local_entries(self) -> list[Connection]:
        """Every mirrored entry, decoded (a status view or a test)."""
        return self._mirror.connections()

    def local_keys(self) -> list[bytes]:
        return list(self._mirror.keys())

    def has_local(self, key: bytes) -> bool:
        """Whether the local table (as mirrored) has this connection."""
        return key in self._mirror

    def cache_entries(self, peer: NodeId) -> list[Connection]:
        """Every cached entry of `peer`, decoded (a status view or a test; the
        protocol itself decodes only what it injects)."""
        table = self._caches.get(peer)
        return table.connections() if table is not None else []

    def cache_keys(self, peer: NodeId) -> list[bytes]:
        table = self._caches.get(peer)
        return list(table.keys()) if table is not None else []

    def cache_size(self, peer: NodeId) -> int:
        table = self._caches.get(peer)
        return len(table) if table is not None else 0

    def peers(self) -> dict[NodeId, bool]:
        """Peers with a cache, and whether each is alive."""
        return {p: p not in self._dead for p in sorted(self._caches)}

    def local_digests(self) -> list[tuple[int, int]]:
        return self._mirror.digests()

    def cache_digests(self, peer: NodeId) -> list[tuple[int, int]]:
        table = self._caches.get(peer)
        return table.digests() if table is not None else [(0, 0)] * self.groups

    # -- the operator's view and commands (clusterctl cache, resync, flush-cache) --

    def listing_keys(self, table: NodeId | None, buckets: Iterable[int]) -> list[bytes]:
        """Keys in `buckets` of our mirror (`table` None) or of a peer's cache,
        in bucket order: a snapshot a listing pages through with `listing_get`
        (entries may go meanwhile; those read as None and are skipped)."""
        source = self._mirror if table is None else self._caches.get(table)
        return [] if source is None else list(source.keys_in_buckets(buckets))

    def listing_count(self, table: NodeId | None, buckets: Iterable[int]) -> int:
        """How many entries `listing_keys` would give, without building the list."""
        source = self._mirror if table is None else self._caches.get(table)
        return 0 if source is None else source.count_in_buckets(buckets)

    def listing_get(self, table: NodeId | None, key: bytes) -> Connection | None:
        source = self._mirror if table is None else self._caches.get(table)
        return None if source is None else source.get(key)

    def request_resync(self, peers: Iterable[NodeId], now: float) -> list[NodeId]:
        """The operator asks `peers` to send their whole table again
        (conntrackd -n). Each request is forced: an earlier one unanswered
        does not hold it back. Returns the peers asked (alive ones with a cache)."""
        asked = [p for p in sorted(set(peers)) if p in self._caches and p not in self._dead]
        for peer in asked:
            self._request(peer, frozenset(), "operator", now, force=True)
        return asked

    def flush_caches(self, peers: Iterable[NodeId]) -> int:
        """The operator empties the caches of `peers` (conntrackd -f); returns
        how many entries went. Until a resync refills a cache this node cannot
        take over that peer's connections. A live peer's next digest shows the
        difference and asks for one by itself (`_receive_digest`); a dead
        peer's cache is not refilled."""
        dropped = 0
        for peer in set(peers):
            table = self._caches.get(peer)
            if table is not None:
                dropped += len(table)
                self._caches[peer] = RecordTable(self.groups)
                self._expect_caches.pop(peer, None)
        return dropped

    @property
    def resync_in_progress(self) -> bool:
        return self._round is not None

    @property
    def stats(self) -> ConntrackSyncStats:
        return ConntrackSyncStats(
            sent=dict(self._sent),
            received=dict(self._received),
            rejected=dict(self._rejected),
            local_entries=len(self._mirror),
            cache_sizes={p: len(t) for p, t in sorted(self._caches.items())},
            dead_peers=frozenset(self._dead),
            resyncs=dict(self._resyncs),
            resync_requests=dict(self._requests),
            resync_requests_held=self._requests_held,
            resync_starts_merged=self._merged_starts,
            digest_mismatches=self._digest_mismatches,
            unknown_updates=self._unknown_updates,
            unknown_deletes=self._unknown_deletes,
            stale_dropped=self._stale_dropped,
            local_ignored=self._local_ignored,
            held_back=len(self._young),
            died_before_sync=self._died_young,
        )
