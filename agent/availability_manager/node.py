"""`Node`: the protocol layers of one cluster node composed; what drivers talk to.

Owns the glue between the layers and nothing they own themselves: the datagram
in/out path (Encryption + wire), the routing of each layer's events to the
others, the membership handed to the range distribution, the join gate, and
the data-plane orders to the driver (node_events). Sans-I/O in bytes, like
aioquic's QuicConnection: inputs are `receive_datagram`, `handle_timer` and the
host API (conntrack events, drain/undrain/leave, link status); outputs are
pulled with `datagrams_to_send` (each datagram with its `Destination`, as
aioquic returns (data, addr)), `next_timer` and `next_event`.

Glue, per layer event (docs/architecture.md):

    Heartbeat received        -> Availability.receive, then
                                 ReliableBroadcast.observe_next_seq (its rb_next_seq)
    NodeUp(p)                 -> RB.peer_up(p), ConntrackSync.peer_up(p) (send it our
                                 table), ask p for its table, membership recomputed
    NodeDown(p)               -> RB.peer_down(p), ConntrackSync.peer_down(p) (its cache
                                 is kept for the takeover), Ranges.peer_down(p)
    RB Delivered(p, payload)  -> CT messages decoded -> ConntrackSync.receive; an entry
                                 in a bucket we own that we lack is injected at once
    RB OutOfSync(p, role)     -> ConntrackSync.out_of_sync (sender: a round to all) or
                                 .stream_skipped (receiver: ask p, and owe p a round)
    CT messages to send       -> packed into RB payloads -> RB.send
    Ranges Claim(B)           -> InjectConnections(cached entries of B we lack), then
                                 OwnedBucketsChanged; the injected entries are adopted
    Ranges Release(B)         -> OwnedBucketsChanged, then DeleteConnections(our entries
                                 of B); peers are told with CT DELETEs
    Ranges Handoff(B, at)     -> ActiveBucketsChanged with a stop switch for B at `at`
                                 (make-before-break; the Release follows at `at`)
    a peer's claim announcing a handoff of buckets we own
                              -> ActiveBucketsChanged with a start switch at its time
    Ranges Stable (first)     -> Ready (once)
    a peer down for forget_after  -> ConntrackSync.forget_peer (its cache was kept
                                 so a false timeout under loss needs no full resync)

The driver performs InjectConnections / OwnedBucketsChanged / DeleteConnections
in order, right away; the Node mirrors the injected and deleted entries in its
own table immediately (kernel echo events of them are idempotent no-ops).
After every input the driver pulls events, then datagrams, then re-arms one
timer at `next_timer()` (a deadline in the past means "call handle_timer now").

Node lifecycle (`phase()`):

    (start)  --listen 1.5 heartbeat intervals, sending nothing--> joining
             --own node id heard meanwhile--> duplicate (silent, never Ready)
    joining  --grace over, every up peer's table and claim received (or join
               timeout)--> member
    member   --drain()--> draining  --undrain()--> member
    member|draining --leave()--> leaving --owns nothing, others hold all--> left
                                                                  [LeaveComplete]

A joining node does not count itself in the membership, so it claims no
bucket until it holds the connection tables of the nodes it takes buckets
from; the others keep those buckets until it claims them (release after claim).
Nor before it holds every up peer's claim: the buckets it claims are forwarded
at once unless a peer is known to own them (then from the peer's handoff), so
a claim made before the peers' claims arrived (rule 1 holds them back until
our table reached them; rule 3 until we sent it) forwarded what the peers
still forwarded, every packet twice until their handoff.

Handover safety: releasing a bucket deletes our entries of it, so whoever
claimed it must hold them first. Ranges guarantees the claim came first; the
Node adds what makes the claimer *know* the entries:
1. after a peer comes up we withhold our own RangeState until its whole table
   has arrived (or `join_timeout`), so nobody releases to us before we hold
   their entries (this covers a node back from a partition, whose old claims
   predate the entries made meanwhile);
2. a peer's RangeState is applied only when everything the peer sent before
   it was delivered (no gap in its stream: a resync request may be in it);
3. and not while we owe that peer our table (it came up, or asked for a
   resync): FIFO then delivers our table before our DELETEs, and entries that
   reach the claimer after its claim are injected at once (`_inject_late`).

Zone heartbeats (`NodeConfig.zone_heartbeats`): a copy of the heartbeat on the
zone links keeps a node a member while the sync network alone fails. The
copies go out only while some node doubts the sync network, so that an idle
cluster's zone links (customer-facing) carry no heartbeats and no node pays
for (N - 1) x zones extra datagrams per interval:
- doubt: a peer heard within its timeout was not heard on the sync network for
  SYNC_DOUBT_INTERVALS (checked on inputs, at most every quarter interval), no
  peer was ever heard there, or our own links are down (the dead one may be
  the sync link). We send a heartbeat at once and, for `misses + 1` intervals
  after the doubt ends, a zone copy of each, sealed after its sync copy, so
  every peer opens it;
- answer: a zone copy opened (it was sealed after its sync copy, or the sync
  copy never came) means its sender doubts; we send a heartbeat at once and
  zone copies for as long, sealed before their sync copy, so a peer that hears
  the sync copy drops them unopened (`_zone_copy_stale`) and does not answer.
A sync path lost in one direction alone is covered too: the side that stops
hearing doubts, the other answers. The peers' timeout runs from the last
heartbeat they heard on any path: the doubt starts 1.25-1.5 intervals after a
peer's last sync heartbeat, before the timeout (`misses` + 0.2 intervals).
"""

from __future__ import annotations

import collections
import enum
import math
import random
from collections import deque
from collections.abc import Iterable
from typing import assert_never

from . import node_events as ev
from . import wire
from .availability import (
    Availability,
    AvailabilityEvent,
    Heartbeat,
    MemberInfo,
    NodeState,
    NodeStateChanged,
    OwnStatusChanged,
)
from .availability import NodeDown as AvNodeDown
from .availability import NodeUp as AvNodeUp
from .availability import PeerRefused as AvPeerRefused
from .broadcast import (
    MAX_PAYLOAD,
    BroadcastEvent,
    Delivered,
    RbData,
    RbLost,
    RbMessage,
    RbNak,
    ReliableBroadcast,
)
from .broadcast import OutOfSync as RbOutOfSync
from .connection import Connection
from .conntrack_sync import (
    ConntrackSync,
    ConntrackSyncEvent,
    DigestMismatch,
    ResyncReceived,
)
from .crypto import Encryption, Keyring
from .ct_messages import (
    CT_MESSAGE_TYPES,
    VERSION_HELPERS,
    CtExpect,
    CtNew,
    CtNewResync,
    CtResyncRequest,
    Expectation,
)
from .node_config import NodeConfig
from .node_stats import layer_stats
from .packing import pack
from .ranges import (
    Claim,
    Handoff,
    RangeDistribution,
    RangeEvent,
    RangeState,
    Release,
    Stable,
    Unstable,
)
from .record_table import EntryRecord, decode_ct_payload, encode_ct_fast
from .types import NodeId, format_node_id

# What a sync datagram may carry at its top level (CT messages travel inside
# RbData payloads); anything else is counted and dropped.
DatagramMessage = Heartbeat | RangeState | RbMessage
DATAGRAM_MESSAGE_TYPES = (Heartbeat, RangeState, RbData, RbNak, RbLost)
ZONE_MESSAGE_TYPES = (Heartbeat, RangeState)  # what a zone link may carry
LISTEN_INTERVALS = 1.5  # heartbeat intervals a starting node listens before it sends
# Zone heartbeats on doubt (module docstring, "Zone heartbeats"): a peer not
# heard on the sync network for this many intervals is in doubt; the sync
# paths are checked at most every quarter interval, on the inputs that come
# anyway (a timer of its own only once the sync network fell silent); zone
# copies go out for `misses + 1` intervals after the last doubt.
SYNC_DOUBT_INTERVALS = 1.25
SYNC_CHECK_INTERVALS = 0.25
ZONE_HOLD_EXTRA_INTERVALS = 1
# How long a bucket handed back unstarted is remembered (seconds after its
# instant): a peer's claim that still announces that handoff is older.
GIVEN_UNSTARTED_MEMORY_S = 10.0
# After a long stall the node learns its forwarding again from the peers'
# claims (host_stalled): for at least this many heartbeat intervals (the
# queued claims are read in the first, every live peer's answer to our
# return arrives within one more), and at most STALL_RELEARN_LIMIT_S while a
# peer still claims one of our buckets without handing it back (one that
# never does must not keep our share unforwarded for good).
STALL_RELEARN_INTERVALS = 2
STALL_RELEARN_LIMIT_S = 2.0


class Destination(enum.Enum):
    """Where a datagram of `Node.datagrams_to_send` goes (aioquic's addr)."""

    SYNC = "sync"  # the sync network: every peer
    # every zone link: a copy of each heartbeat (with the range state), so that
    # peers still hearing us there do not take us for dead when only the sync
    # network fails
    ZONES = "zones"


class Node:
    """One cluster node's protocol stack (see the module docstring)."""

    def __init__(self, config: NodeConfig, rng: random.Random, now: float) -> None:
        self.config = config
        self.node_id = config.node_id
        settings = config.settings
        self._buckets = settings.buckets
        self._encryption = Encryption(
            config.node_id,
            config.keyring,
            config.initial_counter,
            allowed_senders=config.members,
            max_senders=config.max_peers,
        )
        self._encryption.version = config.max_wire_version
        self._availability = Availability(
            config.node_id,
            config.incarnation,
            settings.fingerprint(),
            interval=config.heartbeat_interval,
            misses=config.heartbeat_misses,
            weight=config.weight,
            wire_version=config.max_wire_version,
            now=now,
        )
        self._broadcast = ReliableBroadcast(
            config.node_id, rng, buffer_size=config.rb_buffer_size, now=now
        )
        self._ranges = self._new_ranges(config, now)
        self._sync = ConntrackSync(
            config.node_id,
            settings.buckets,
            is_relevant=config.relevance(),
            wire_version=config.max_wire_version,
            sync_delay=config.sync_delay,
            max_cache_entries=config.max_cache_entries,
            rng=rng,
            now=now,
        )
        self._events: deque[ev.NodeEvent] = deque()
        self._owned: frozenset[int] = frozenset()
        self._ready = False
        self._stable = False
        self._joined = False
        self._listened = False
        self._listen_from(now)  # again when the driver starts reading (start_listening)
        self._duplicate = False
        self._up: set[NodeId] = set()  # peers reported up (NodeUp without NodeDown since)
        self._state_counter: dict[NodeId, int] = {}  # newest datagram with state, per peer
        # Zone heartbeats on doubt: when each peer was last heard on the sync
        # network; until when zone copies go out (answering a peer's doubt),
        # and until when they are sealed after the sync copy (our own doubt,
        # so that every peer opens them and answers).
        self._sync_heard: dict[NodeId, float] = {}
        self._sync_heard_last = -math.inf  # any peer, on the sync network
        self._zone_copies_until = -math.inf
        self._zone_doubt_until = -math.inf
        self._zone_check_at = now
        # The state of the handover safety rules 1-3 (module docstring):
        self._awaiting_table: dict[NodeId, float] = {}  # rule 1: peer -> give-up time
        self._table_owed: set[NodeId] = set()  # rule 3: peers that lack our table
        self._deferred_claims: dict[NodeId, RangeState] = {}  # rules 2, 3: applied later
        self._down_since: dict[NodeId, float] = {}  # dead peers whose cache we keep
        self._range_state_pending = False  # send ours as soon as rule 1 allows
        self._leaving = False
        self._left = False
        self._draining = False
        self._counters: collections.Counter[str] = collections.Counter()
        self._active: frozenset[int] = frozenset()
        self._switches: tuple[ev.Switch, ...] = ()
        # buckets whose start switch is programmed, with its time (wall clock):
        # kept as a switch until that time even if the giver's release came
        # first (skewed clocks), so that we never start before the giver stops
        self._starts: dict[int, float] = {}
        self._start_timer: float | None = None
        self._active_dirty = False  # the claims may have changed since _refresh_active
        # buckets we handed back unstarted, with the instant: never started
        # from a peer's handoff at that same instant (_refresh_active)
        self._given_unstarted: dict[int, float] = {}
        # After a long stall (host_stalled): the earliest and the latest end
        # of relearning our forwarding from the peers' claims, and whether a
        # peer still holds one of our buckets without handing it back.
        self._relearn: tuple[float, float] | None = None
        self._relearn_waits = False

    def _new_ranges(self, config: NodeConfig, now: float) -> RangeDistribution:
        """The range distribution; a test driver's subclass may build a variant."""
        settings = config.settings
        return RangeDistribution(
            config.node_id,
            settings.buckets,
            settings.hash_seed,
            now=now,
            handover_delay=config.handover_delay,
            handover_quantum=config.handover_quantum,
        )

    # -- datagrams in ------------------------------------------------------------

    def receive_datagram(
        self, data: bytes, now: float, via: Destination = Destination.SYNC
    ) -> None:
        """One datagram from the sync network, or from a zone link (`via`).
        Anything unusable is counted (stats "drop_<reason>") and dropped
        whole; nothing raises. A zone link carries only heartbeats and range
        state (what the peers send there): anything else that arrives on a
        customer-facing link is dropped, whoever sealed it."""
        if via is Destination.ZONES and self._zone_copy_stale(data):
            self._counters["drop_zone-copy-stale"] += 1
            return
        opened = self._encryption.open(data)
        if opened is None:
            if not self._listened and self._encryption.drops["own-datagram"]:
                self._duplicate_heard()
            return  # Encryption counted the reason
        header, plaintext = opened
        if via is Destination.SYNC:
            self._sync_heard[header.sender] = self._sync_heard_last = now
            if self.config.zone_heartbeats and now >= self._zone_check_at:
                self._check_sync_paths(now)
        elif self.config.zone_heartbeats:
            self._zone_answer(now)  # a fresh zone copy: its sender doubts its sync path
        try:
            decoded = wire.decode_messages(plaintext)
        except wire.WireError as exc:
            self._counters[f"drop_{exc.reason}"] += 1
            return
        allowed = DATAGRAM_MESSAGE_TYPES if via is Destination.SYNC else ZONE_MESSAGE_TYPES
        messages: list[DatagramMessage] = []
        for msg in decoded:
            if isinstance(msg, allowed):
                messages.append(msg)
            elif via is Destination.ZONES and isinstance(msg, DATAGRAM_MESSAGE_TYPES):
                self._counters["drop_not-for-zone-link"] += 1
            else:
                self._counters["drop_unexpected-message"] += 1
        source = header.sender
        # Heartbeats first (a NodeUp starts the peer's stream and their
        # rb_next_seq reveals lost data), then the stream, then claims, so a
        # claim is judged after everything the peer sent before it.
        messages.sort(key=_dispatch_rank)
        if not self._fresh_state(source, header.counter, messages):
            # Heartbeat and range state are state, not log: one that was
            # overtaken on the way (reordered) would revert a newer one.
            self._counters["drop_stale-state"] += 1
            messages = [m for m in messages if _dispatch_rank(m) == 1]
        for msg in messages:
            self._dispatch(msg, source, now)
        self._pump(now)

    def _duplicate_heard(self) -> None:
        """Our own id heard while we listen before talking: another process
        runs as this node. Refuse to become a member (no heartbeat, no claim,
        never Ready), so the one already running is not displaced; the driver
        raises the alarm (`own_datagrams`)."""
        if not self._duplicate:
            self._duplicate = True
            self._counters["duplicate_node_id"] += 1
            self._events.append(ev.PeerRefused(node=self.node_id, reason="duplicate-node-id"))

    def _zone_hold(self, now: float) -> float:
        return now + (self.config.heartbeat_misses + ZONE_HOLD_EXTRA_INTERVALS) * (
            self.config.heartbeat_interval
        )

    def _zone_answer(self, now: float) -> None:
        """A peer's zone copy was opened: it was sealed after its sync copy (the
        peer doubts the sync network) or its sync copy never came. Our
        heartbeats go to the zone links too for a while, the first at once."""
        if now >= self._zone_copies_until:
            self._availability.send_soon(now)
            self._counters["zone_answers"] += 1
        self._zone_copies_until = max(self._zone_copies_until, self._zone_hold(now))

    def _check_sync_paths(self, now: float) -> None:
        """Doubt the sync network if a peer heard within its timeout (on any
        path) was not heard on it for SYNC_DOUBT_INTERVALS, or if no peer was
        ever heard on it (a node alone, or one whose sync link is dead from
        the start: its zone copies are how the others learn of it)."""
        self._zone_check_at = now + SYNC_CHECK_INTERVALS * self.config.heartbeat_interval
        limit = now - SYNC_DOUBT_INTERVALS * self.config.heartbeat_interval
        heard = self._sync_heard
        doubt = not heard or any(
            heard.get(p, -math.inf) < limit for p in self._availability.peers_heard()
        )
        if not doubt:
            return
        if now >= self._zone_doubt_until:
            self._availability.send_soon(now)
            self._counters["zone_doubts"] += 1
        self._zone_doubt_until = max(self._zone_doubt_until, self._zone_hold(now))
        self._zone_copies_until = max(self._zone_copies_until, self._zone_doubt_until)

    def _zone_copy_stale(self, data: bytes) -> bool:
        """A zone datagram carries only state (heartbeat, claim); one sealed
        before state already applied from its sender would be dropped as stale
        after opening (`_fresh_state`), so it is dropped before: the usual fate
        of a zone copy while the sync network works, since the sender seals it
        just before the sync copy and sends it just after. Saves the AEAD and
        the decode of most zone datagrams; the sync copy carried the same."""
        try:
            header = wire.decode_header(data)
        except wire.WireError:
            return False  # Encryption.open counts the reason
        return header.counter < self._state_counter.get(header.sender, -1)

    def _fresh_state(self, source: NodeId, counter: int, messages: list[DatagramMessage]) -> bool:
        """False if the datagram carries state older than state already applied.
        Counters only grow, across restarts too (they start at the boot time)."""
        if not any(_dispatch_rank(m) != 1 for m in messages):
            return True
        if counter < self._state_counter.get(source, -1):
            return False
        self._state_counter[source] = counter
        return True

    def _dispatch(self, msg: DatagramMessage, source: NodeId, now: float) -> None:
        match msg:
            case Heartbeat():
                self._availability.receive(msg, source, now)
                self._pump(now)  # a NodeUp must reach the broadcast layer before the next step
                if self._broadcast.expected_seq(source) is not None:
                    self._broadcast.observe_next_seq(source, msg.rb_next_seq, now)
            case RangeState():
                self._on_range_state(msg, source, now)
            case RbData() | RbNak() | RbLost():
                self._broadcast.receive(msg, source, now)
            case _:
                assert_never(msg)

    def _on_range_state(self, msg: RangeState, source: NodeId, now: float) -> None:
        if source not in self._up:
            self._counters["drop_range-state-from-non-member"] += 1
        elif self._claim_must_wait(source):
            self._deferred_claims[source] = msg  # the latest claim is all that matters
            self._counters["range_state_deferred"] += 1
        else:
            self._deferred_claims.pop(source, None)
            if self._ranges.receive(msg, source, now):
                self._active_dirty = True  # a repeated claim changes no owner

    # -- host inputs ---------------------------------------------------------------

    def set_clock_offset(self, offset: float) -> None:
        """Wall-clock time minus the `now` this driver passes (seconds).
        Handoff times are wall-clock times (the clock nodes share, NTP-kept);
        the daemon sets this at start and every second."""
        self._ranges.clock_offset = offset

    def set_link_status(self, up: bool, now: float) -> None:
        if self.config.zone_heartbeats and up != self._availability.own_status:
            # The dead link may be the sync link: the heartbeat saying so goes
            # to the zone links too, from now until a while after it is back.
            until = math.inf if not up else self._zone_hold(now)
            self._zone_doubt_until = self._zone_copies_until = until
        self._availability.set_own_status(up, now)
        self._pump(now)

    def host_stalled(self, since: float, now: float) -> None:
        """The host did not run the Node from `since` to `now` (a stalled
        event loop): peers are not judged by that time (Availability).

        A stall past the peers' patience (a heartbeat timeout after our last
        heartbeat, less an interval) let them declare us dead and take our
        buckets; our data plane's fence expired meanwhile, so we forwarded
        nothing either. What we forwarded before the stall is then no ground
        for make-before-break: kept, it would count as forwarded while the
        peers hand the buckets back one by one, and nobody would start them.
        While `relearning` (at least STALL_RELEARN_INTERVALS, to read the
        peers' queued claims and their answer to our return; longer while a
        peer holds one of ours without handing it back, up to
        STALL_RELEARN_LIMIT_S) we forward only what no live peer claims and
        start the rest at the peers' handoff instants (_after_stall); the
        runtime keeps the fence down until it ends."""
        self._availability.host_stalled(since, now)
        sent = self.last_heartbeat_sent
        # A peer declares us dead `peer_timeout` after it heard that heartbeat,
        # and may do so in the moment we return, before our next heartbeat
        # reaches it (the simulator's stall scenario found it: forwarded by
        # both): an interval of margin for the way there.
        margin = self.config.heartbeat_interval
        if now >= (since if sent is None else sent + self.peer_timeout - margin):
            earliest = now + STALL_RELEARN_INTERVALS * self.config.heartbeat_interval
            self._relearn = (earliest, now + STALL_RELEARN_LIMIT_S)
            self._relearn_waits = True
            self._counters["stall_relearns"] += 1
            self._active_dirty = True
        self._pump(now)

    @property
    def relearning(self) -> bool:
        """True while this node learns its forwarding again after a long
        stall (host_stalled): its data plane must not forward yet."""
        return self._relearn is not None

    def _relearn_done(self, now: float) -> bool:
        """Ends relearning when its time has come (see host_stalled)."""
        if self._relearn is None:
            return True
        earliest, limit = self._relearn
        if now >= limit or (now >= earliest and not self._relearn_waits):
            if self._relearn_waits:
                self._counters["stall_relearn_limits"] += 1
            self._relearn = None
            return True
        return False

    def set_nexthops_ok(self, ok: bool, now: float) -> None:
        """Whether this node reaches every next hop it watches: announced in
        heartbeats, so a peer that lost its own knows it may step back."""
        self._availability.set_nexthops_ok(ok, now)
        self._pump(now)

    def set_weight(self, weight: int, now: float) -> None:
        """A new weight (an operator check asks for less): the buckets are
        distributed again by every node, this one at once."""
        self._availability.set_weight(weight, now)
        self._update_membership(now)  # our own weight raises no availability event
        self._pump(now)

    def connection_new(self, conn: Connection, now: float) -> None:
        self._sync.local_new(conn, now)

    def connection_update(self, conn: Connection, now: float) -> None:
        self._sync.local_update(conn, now)

    def connection_amend(self, conn: Connection, now: float) -> None:
        """An UPDATE event that does not carry the TCP state (see
        ConntrackSync.local_amend)."""
        self._sync.local_amend(conn, now)

    def connection_destroy(self, conn: Connection, now: float) -> None:
        self._sync.local_destroy(conn, now)

    def local_table_dump(self, conns: list[Connection], now: float) -> None:
        self._sync.local_dump(conns, now)

    def expectation_new(self, exp: Expectation, now: float) -> None:
        """A kernel expectation event (wire version 2 syncs them)."""
        self._sync.local_expect_new(exp, now)

    def expectation_destroy(self, exp: Expectation, now: float) -> None:
        self._sync.local_expect_destroy(exp, now)

    def drain(self, now: float) -> None:
        """Hand every bucket over but keep forwarding the connections we have."""
        if self._leaving:
            return
        self._draining = True
        self._sync.announce_held()  # the sync delay ends where the handover begins
        self._availability.set_state(NodeState.DRAINING, now)
        self._update_membership(now)  # our own state raises no availability event
        self._pump(now)

    def undrain(self, now: float) -> None:
        if self._leaving or not self._draining:
            return
        self._draining = False
        self._availability.set_state(NodeState.ACTIVE, now)
        self._update_membership(now)
        self._pump(now)

    def leave(self, now: float) -> None:
        """Hand every bucket over, then LeaveComplete (the driver stops the node)."""
        self._leaving = True
        self._sync.announce_held()
        self._availability.set_state(NodeState.LEAVING, now)
        self._update_membership(now)
        self._pump(now)

    # -- timers ----------------------------------------------------------------------

    def next_timer(self) -> float | None:
        deadlines = [
            self._availability.next_timer(),
            self._broadcast.next_timer(),
            self._sync.next_timer(),
        ]
        if not self._awaiting_table:
            deadlines.append(self._ranges.next_timer())
            if self._range_state_pending:
                deadlines.append(0.0)  # due at once: send the withheld claim
        else:
            deadlines.append(min(self._awaiting_table.values()))
        if not self._joined and not self._duplicate:  # a duplicate never joins
            deadlines.append(self._join_timer)
        if self._down_since:
            deadlines.append(min(self._down_since.values()) + self.config.forget_after)
        if self._deferred_claims and self._deferred_ready():
            deadlines.append(0.0)  # applicable now (our table went out): handle_timer applies it
        if self._start_timer is not None:  # a start switch turns into plain forwarding
            deadlines.append(self._start_timer)
        if self._relearn is not None:
            deadlines.append(self._relearn[0] if not self._relearn_waits else self._relearn[1])
        if self.config.zone_heartbeats:
            # Checked on the inputs that come anyway; a wakeup of its own only
            # when the sync network fell silent, and in doubt just before
            # the zone copies would stop.
            interval = self.config.heartbeat_interval
            deadlines.append(
                max(
                    self._zone_check_at,
                    self._sync_heard_last + SYNC_DOUBT_INTERVALS * interval,
                    self._zone_doubt_until - interval,
                )
            )
        times = [t for t in deadlines if t is not None]
        if not times:
            return None
        # While listening nothing is sent, so nothing is due before it ends.
        return max(min(times), self._listen_until) if not self._listened else min(times)

    def handle_timer(self, now: float) -> None:
        self._availability.handle_timer(now)
        deadline = self._broadcast.next_timer()
        if deadline is not None and deadline <= now:
            self._broadcast.handle_timer(now)
        self._sync.handle_timer(now)
        handing_off = self._ranges.handoff() is not None
        self._ranges.handle_timer(now)
        if handing_off and self._ranges.handoff() is None:
            # The handoff's instant passed. Its stop switch took the buckets
            # out of our data plane; those it keeps (the taker went down
            # before the instant, or hands them back) raise no range event,
            # yet must be forwarded again at once: left as programmed, nobody
            # forwarded them until the next membership change (seconds:
            # lab/tests/test_kernel_faults.py lost a TCP stream to it).
            self._active_dirty = True
        expired = [p for p, t in self._awaiting_table.items() if t <= now]
        for peer in expired:
            # Its table never completed (a lossy or overloaded peer): stop
            # waiting, or our claims would never be heard.
            del self._awaiting_table[peer]
            self._counters["table_wait_timeouts"] += 1
        self._forget_dead_peers(now)
        if self.config.zone_heartbeats and now >= self._zone_check_at:
            self._check_sync_paths(now)
        if self._start_timer is not None and self._start_timer <= now:
            self._start_timer = None
            self._active_dirty = True
        if self._relearn is not None and self._relearn_done(now):
            self._active_dirty = True
        self._pump(now)

    # -- datagrams out -----------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Destination]]:
        """Every message due, packed into as few sealed datagrams as fit:
        heartbeat and range state first, then broadcast control, then data;
        with `zone_heartbeats`, the heartbeat (and range state) again for the
        zone links, sealed apart (a second copy would be a replay)."""
        if not self._listened:
            if now < self._listen_until:
                return []  # listen before talk (module docstring)
            self._listened = True
        if self._duplicate:
            self._drop_everything_due(now)
            return []
        self._feed_broadcast(now)
        self._availability.set_rb_next_seq(self._broadcast.next_seq)
        unreliable: list[object] = list(self._availability.messages_to_send(now))
        if not self._awaiting_table:
            range_due = self._ranges.next_timer()
            if (
                self._range_state_pending
                or (range_due is not None and range_due <= now)
                or (unreliable and self._ranges.claim_rides_on_heartbeat())
            ):
                unreliable.extend(self._ranges.messages_to_send(now))
                self._range_state_pending = False
        else:
            self._range_state_pending = True
        rb_out = self._broadcast.messages_to_send(now)
        if not unreliable and not rb_out:
            return []  # most calls: the driver asks after every datagram in
        control = [m for m in rb_out if not isinstance(m, RbData)]
        data = [m for m in rb_out if isinstance(m, RbData)]
        state = [wire.encode_message(m) for m in unreliable]
        # The zone copy answering a peer's doubt is sealed first (a lower
        # counter) and sent last: a peer that hears the sync copy first drops
        # it unopened as stale (`_zone_copy_stale`); when the sync network
        # fails, it is all it hears. Our own doubt's copy is sealed last, so
        # every peer opens it and answers (`_zone_answer`).
        zone_due = (
            self.config.zone_heartbeats
            and now < self._zone_copies_until
            and any(isinstance(m, Heartbeat) for m in unreliable)
        )
        doubt = now < self._zone_doubt_until
        zone: list[tuple[bytes, Destination]] = []
        if zone_due and not doubt:
            zone = self._sealed(state, Destination.ZONES)
        encoded = [*state, *(wire.encode_message(m) for m in (*control, *data))]
        out = self._sealed(encoded, Destination.SYNC)
        if zone_due and doubt:
            zone = self._sealed(state, Destination.ZONES)
        out.extend(zone)
        return out

    def _sealed(self, encoded: list[bytes], to: Destination) -> list[tuple[bytes, Destination]]:
        return [
            (self._encryption.seal(p), to) for p in pack(encoded, self._encryption.max_plaintext)
        ]

    def _drop_everything_due(self, now: float) -> None:
        """A duplicate sends nothing: what the layers have due is dropped, so
        their queues do not grow while the operator stops one of the two."""
        self._feed_broadcast(now)
        self._broadcast.messages_to_send(now)
        self._availability.messages_to_send(now)
        if self._ranges.next_timer() is not None:
            self._ranges.messages_to_send(now)
        self._counters["duplicate_datagrams_withheld"] += 1

    def _feed_broadcast(self, now: float) -> None:
        """CT messages -> as few reliable-broadcast payloads as fit MAX_PAYLOAD."""
        msgs = self._sync.messages_to_send(now)
        for payload in pack([encode_ct_fast(m) for m in msgs], MAX_PAYLOAD):
            self._broadcast.send(payload, now)
        if self._table_owed and not self._sync.resync_in_progress:
            # Every round, including the ones for these peers, has been handed
            # to the broadcast; their deferred claims are applied at the next
            # input or timer (this call only sends, it never raises events).
            self._table_owed.clear()

    def _claim_must_wait(self, peer: NodeId) -> bool:
        """Rules 2 and 3 of handover safety (module docstring)."""
        return (
            peer in self._table_owed
            or self._broadcast.missing_count(peer) > 0
            or self._broadcast.held_count(peer) > 0
        )

    def _deferred_ready(self) -> bool:
        return any(not self._claim_must_wait(p) for p in self._deferred_claims)

    def _apply_deferred_claims(self, now: float) -> None:
        for peer in sorted(self._deferred_claims):
            if peer not in self._up:
                del self._deferred_claims[peer]
            elif not self._claim_must_wait(peer) and self._ranges.receive(
                self._deferred_claims.pop(peer), peer, now
            ):
                self._active_dirty = True

    # -- events out ------------------------------------------------------------------

    def next_event(self) -> ev.NodeEvent | None:
        return self._events.popleft() if self._events else None

    # -- read-only views -------------------------------------------------------------

    def members(self) -> dict[NodeId, MemberInfo]:
        """Peers that are up (admitted, links up) and this node, with their state."""
        return self._availability.members()

    def distribution_members(self) -> dict[NodeId, int]:
        """The membership the buckets are distributed over (node -> weight)."""
        return self._ranges.members()

    def peers_reaching_nexthops(self) -> frozenset[NodeId]:
        return self._availability.peers_reaching_nexthops()

    def owned_buckets(self) -> frozenset[int]:
        return self._owned

    def active_buckets(self) -> frozenset[int]:
        """Owned buckets no other live node claims: what the data plane forwards."""
        return self._active

    def bucket_owners(self) -> tuple[frozenset[NodeId], ...]:
        """Per bucket, the nodes known to own it (this node's view)."""
        return tuple(self._ranges.owners())

    def phase(self) -> str:
        """The lifecycle phase (module docstring): joining, member, draining,
        leaving or left."""
        if self._duplicate:
            return "duplicate"
        if self._left:
            return "left"
        if self._leaving:
            return "leaving"
        if not self._joined:
            return "joining"
        return "draining" if self._draining else "member"

    def connection_counts(self) -> dict[str, object]:
        """Entries per table: our own and each peer's cache (alive or dead)."""
        peers = {
            format_node_id(peer): {
                "entries": self._sync.cache_size(peer),
                "alive": alive,
            }
            for peer, alive in self._sync.peers().items()
        }
        return {"local": self._sync.stats.local_entries, "peers": peers}

    def set_keyring(self, keyring: Keyring) -> None:
        """A key rotation step at runtime (see crypto.Keyring)."""
        self._encryption.set_keyring(keyring)

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def stable(self) -> bool:
        """Every member owns exactly its aim and all agree on the membership."""
        return self._stable

    @property
    def peer_timeout(self) -> float:
        """How long after a peer's last heartbeat it is declared dead (and so
        how long the peers wait for ours)."""
        return self._availability.timeout

    @property
    def last_heartbeat_sent(self) -> float | None:
        """When this node last sent a heartbeat (None before the first): a
        peer declares it dead a heartbeat timeout after hearing it."""
        return self._availability.last_sent

    @property
    def send_counter(self) -> int:
        """The nonce counter the next sealed datagram will carry."""
        return self._encryption.counter

    @property
    def own_datagrams(self) -> int:
        """Datagrams received that carry this node's own id (see the runtime)."""
        return self._encryption.drops["own-datagram"]

    def known_keys(self) -> frozenset[bytes]:
        """Keys of every entry this node knows: its own and every cached peer's."""
        keys = set(self._sync.local_keys())
        for peer in self._sync.peers():
            keys.update(self._sync.cache_keys(peer))
        return frozenset(keys)

    def peer_cache(self, peer: NodeId) -> dict[bytes, Connection]:
        return {c.key: c for c in self._sync.cache_entries(peer)}

    def local_entries(self) -> dict[bytes, Connection]:
        return {c.key: c for c in self._sync.local_entries()}

    # -- the operator's tools (daemon/ops_commands.py) -------------------------------

    @property
    def conntrack_sync(self) -> ConntrackSync:
        """For reading only: listings and counters of our table and the peers'
        caches. Changes go through `request_resync` and `flush_caches`."""
        return self._sync

    def request_resync(self, peers: Iterable[NodeId], now: float) -> list[NodeId]:
        asked = self._sync.request_resync(peers, now)
        self._pump(now)
        return asked

    def flush_caches(self, peers: Iterable[NodeId]) -> int:
        return self._sync.flush_caches(peers)

    def stats(self) -> dict[str, int]:
        """A flat dict of counters and gauges for metrics (node_stats.py)."""
        out = layer_stats(
            self._counters,
            self._encryption,
            self._availability,
            self._broadcast,
            self._sync,
            self._ranges,
        )
        out["owned_buckets"] = len(self._owned)
        out["stable"] = int(self._stable)
        out["ready"] = int(self._ready)
        return out

    # -- the glue ----------------------------------------------------------------------

    def _pump(self, now: float) -> None:
        """Route every pending layer event until all layers are quiet."""
        busy = True
        while busy:
            busy = False
            while (a := self._availability.next_event()) is not None:
                busy = True
                self._on_availability(a, now)
            self._maybe_join(now)
            while (b := self._broadcast.next_event()) is not None:
                busy = True
                self._on_broadcast(b, now)
            while (c := self._sync.next_event()) is not None:
                busy = True
                self._on_sync(c)
            while (r := self._ranges.next_event()) is not None:
                busy = True
                self._on_ranges(r, now)
            if self._deferred_claims and self._deferred_ready():
                busy = True
                self._apply_deferred_claims(now)
        version = self._availability.cluster_wire_version()
        if version != self._sync.wire_version:
            self._sync.set_wire_version(version, now)
            self._encryption.version = version
            self._counters["wire_version_changes"] += 1
        self._refresh_active(now)
        self._check_leave_complete()

    def _refresh_active(self, now: float) -> None:
        """The buckets the data plane may forward: owned, and claimed by no other
        live node. During a handover the taker holds the injected entries while
        the giver still forwards; if both forwarded, every packet of those
        connections would be delivered twice. Without a handover delay a bucket
        two nodes claim is forwarded by neither until one lets go (a pause of
        one message's latency), never by both. With one (make-before-break),
        the giver keeps forwarding until its handoff's instant (a stop switch)
        and the taker starts at that instant (a start switch), see ranges.py.

        A node whose own status is down (a link of its own, a next hop, a
        health check) forwards nothing at once, with no timed switch: its
        peers take its buckets as soon as its heartbeat says so, without
        waiting for it to let go (it may not be able to tell them: its sync
        link may be the one that failed)."""
        if not self._active_dirty:
            return  # computing owners() per datagram is the Node's main cost
        self._active_dirty = False
        owners = self._ranges.owners()
        me = self.node_id
        ours = self._ranges.handoff()
        giving = ours[0] & self._owned if ours is not None else frozenset()
        now_wall = now + self._ranges.clock_offset
        # Right after a long stall our data plane forwarded nothing (fence)
        # whatever it was programmed with: see host_stalled.
        relearning = not self._relearn_done(now)
        forwarded = frozenset() if relearning else self._forwarded_at(now_wall)
        if giving and ours is not None:
            # One we forward that its taker hands back to us at the same
            # instant (a move reversed: an undrain, a peer back up; whole
            # seconds make the instants equal): the ranges keep it then
            # (ranges.handle_timer), so we never stop forwarding it. The taker
            # had not started it: it gives it back unstarted and remembers
            # never to start it from our handoff at that instant.
            giving -= self._handed_back(owners, giving & forwarded, ours[1])
            for b in giving - forwarded:
                self._given_unstarted[b] = ours[1]
        for b, at in list(self._given_unstarted.items()):
            if at < now_wall - GIVEN_UNSTARTED_MEMORY_S:
                del self._given_unstarted[b]
        # A stop switch forwards until its instant: only for buckets forwarded
        # now. One we were still waiting to start (its giver forwards it until
        # our start), or one whose earlier stop has passed, is given back
        # unforwarded, or both would forward it.
        stopping = giving & forwarded
        # Make-before-break: a bucket we forward stays forwarded while others
        # claim it, until our handoff's instant: nobody else starts it before
        # (a taker starts on our handoff or on our release, never on its claim).
        # That includes one whose start switch has passed: its giver stopped.
        keep = forwarded if self.config.handover_delay > 0.0 else frozenset()
        active = frozenset(
            b for b in self._owned if b not in giving and (owners[b] <= {me} or b in keep)
        )
        starts = {b: at for b, at in self._start_times(owners, giving).items() if b not in active}
        for b, at in self._starts.items():  # programmed earlier, not yet reached
            if b in self._owned and b not in giving and b not in keep and at > now_wall:
                starts[b] = max(starts.get(b, at), at)
        active -= starts.keys()
        if relearning:
            active = self._after_stall(active, starts)
        self._starts = starts
        # a start kept only for its time (the giver's release came first) turns
        # into plain forwarding then: a timer
        waiting = [at for b, at in starts.items() if owners[b] <= {me} and at > now_wall]
        self._start_timer = min(waiting) - self._ranges.clock_offset if waiting else None
        switches: list[ev.Switch] = []
        if stopping and ours is not None:
            switches.append(ev.Switch(buckets=stopping, at=ours[1], start=False))
        by_time: dict[float, set[int]] = {}
        for b, at in starts.items():
            by_time.setdefault(at, set()).add(b)
        switches += [
            ev.Switch(buckets=frozenset(bs), at=at, start=True)
            for at, bs in sorted(by_time.items())
        ]
        if not self._availability.own_status:
            # Own status down: the peers take this node's buckets as soon as
            # its heartbeat says so, without waiting for a release or a
            # handoff. So it stops forwarding first: the runtime carries this
            # out before that heartbeat leaves, and no connection is forwarded
            # by two nodes at once.
            active, switches = frozenset(), []
            self._starts = {}
            self._start_timer = None
        if active != self._active or tuple(switches) != self._switches:
            # forwarded until now in some form: plainly, or until a stop switch
            # (a backend without clock rules, clusterdev, forwards those until
            # the release: the daemon must have let go before it announces it)
            old_active = self._active
            old = old_active.union(*(w.buckets for w in self._switches if not w.start))
            self._active = active
            self._switches = tuple(switches)
            self._events.append(
                ev.ActiveBucketsChanged(
                    active=active,
                    added=active - old_active,
                    removed=old - active,
                    switches=self._switches,
                )
            )

    def _after_stall(self, active: frozenset[int], starts: dict[int, float]) -> frozenset[int]:
        """Relearning after a long stall: of `active`, a bucket a live peer
        claims (even a claim our view does not honour: the peer took it
        while we were silent, under a membership without us) starts at the
        latest instant its claimants hand it back (into `starts`); one a
        claimant does not hand back yet is not forwarded. Returns the rest."""
        claims = self._ranges.peer_claims()
        handoffs = self._ranges.peer_handoffs()
        waiting = False
        out = set()
        for b in active:
            claimants = [p for p, owned in claims.items() if b in owned]
            times = [h[1] for p in claimants if (h := handoffs.get(p)) is not None and b in h[0]]
            if not claimants:
                out.add(b)
            elif len(times) == len(claimants):
                starts[b] = max(times)
            else:
                waiting = True
        self._relearn_waits = waiting
        return frozenset(out)

    def _handed_back(
        self, owners: list[frozenset[NodeId]], buckets: frozenset[int], at: float
    ) -> frozenset[int]:
        """Those of `buckets` (of our handoff at `at`) that every other
        claimant hands back to us at that same instant."""
        handoffs = self._ranges.peer_handoffs()
        me = self.node_id
        back = set()
        for b in buckets:
            others = owners[b] - {me}
            if others and all(
                (h := handoffs.get(p)) is not None and b in h[0] and h[1] == at for p in others
            ):
                back.add(b)
        return frozenset(back)

    def _forwarded_at(self, wall: float) -> frozenset[int]:
        """What the data plane as last programmed forwards at wall-clock `wall`:
        the active buckets, stop switches not yet reached, start switches passed."""
        out = set(self._active)
        for w in self._switches:
            if (wall >= w.at) if w.start else (wall < w.at):
                out |= w.buckets
        return frozenset(out)

    def _start_times(
        self, owners: list[frozenset[NodeId]], giving: frozenset[int]
    ) -> dict[int, float]:
        """Owned buckets that every other claimant hands to us at a known
        time: we start forwarding them at the latest of those times."""
        handoffs = self._ranges.peer_handoffs()
        if not handoffs:
            return {}
        me = self.node_id
        starts: dict[int, float] = {}
        for b in self._owned - giving:
            others = owners[b] - {me}
            if not others:
                continue
            times = []
            for peer in others:
                handoff = handoffs.get(peer)
                if (
                    handoff is None
                    or b not in handoff[0]
                    or handoff[1] == self._given_unstarted.get(b)
                ):
                    break
                times.append(handoff[1])
            else:
                starts[b] = max(times)
        return starts

    def _on_availability(self, event: AvailabilityEvent, now: float) -> None:
        match event:
            case AvNodeUp():
                self._peer_up(event, now)
            case AvNodeDown():
                self._peer_down(event, now)
            case NodeStateChanged() | OwnStatusChanged():
                self._update_membership(now)
            case AvPeerRefused():
                self._events.append(ev.PeerRefused(node=event.node, reason=event.reason))
            case _:
                assert_never(event)

    def _peer_up(self, event: AvNodeUp, now: float) -> None:
        peer = event.node
        self._broadcast.peer_up(peer, event.rb_next_seq, now)
        self._sync.peer_up(peer, now)
        # Its table may have started before we listened to its stream: ask for it.
        self._sync.out_of_sync(peer, "receiver", now)
        self._awaiting_table[peer] = now + self.config.join_timeout
        self._down_since.pop(peer, None)
        self._up.add(peer)
        self._table_owed.add(peer)
        self._deferred_claims.pop(peer, None)
        self._events.append(ev.NodeUp(node=peer, incarnation=event.incarnation))
        self._update_membership(now)

    def _peer_down(self, event: AvNodeDown, now: float) -> None:
        peer = event.node
        self._broadcast.peer_down(peer, now)
        self._sync.peer_down(peer, now)
        self._ranges.peer_down(peer, now)
        self._active_dirty = True
        self._awaiting_table.pop(peer, None)
        self._down_since[peer] = now
        self._up.discard(peer)
        self._table_owed.discard(peer)
        self._deferred_claims.pop(peer, None)
        self._events.append(ev.NodeDown(node=peer, reason=event.reason))
        self._update_membership(now)

    def _on_broadcast(self, event: BroadcastEvent, now: float) -> None:
        match event:
            case Delivered():
                self._on_delivered(event, now)
            case RbOutOfSync():
                if event.role == "receiver":
                    self._sync.stream_skipped(event.peer, now)
                else:
                    self._sync.out_of_sync(event.peer, event.role, now)
                self._events.append(ev.OutOfSync(peer=event.peer))
            case _:
                assert_never(event)

    def _on_delivered(self, event: Delivered, now: float) -> None:
        try:
            messages = decode_ct_payload(event.payload)  # wire.decode_messages + fast path
        except wire.WireError as exc:
            self._counters[f"drop_rb-payload-{exc.reason}"] += 1
            return
        records: list[EntryRecord] = []  # a run of plain entries, cached as records
        for msg in messages:
            if type(msg) is EntryRecord:
                records.append(msg)
                continue
            if records:
                self._receive_records(records, event.source, now)
                records = []
            if not isinstance(msg, CT_MESSAGE_TYPES):
                self._counters["drop_rb-payload-not-ct"] += 1
                continue
            self._sync.receive(msg, event.source, now)
            if isinstance(msg, CtNew | CtNewResync):
                self._inject_late(msg.to_connection(), now)
            elif isinstance(msg, CtExpect):
                self._inject_late_expectation(msg.to_expectation(), now)
            elif isinstance(msg, CtResyncRequest) and msg.target == self.node_id:
                self._table_owed.add(event.source)  # rule 3: it lacks our table
        if records:
            self._receive_records(records, event.source, now)

    def _receive_records(self, records: list[EntryRecord], source: NodeId, now: float) -> None:
        self._sync.receive_records(records, source, now)
        owned = self._owned
        for rec in records:
            if rec.bucket in owned:
                self._inject_late(rec.to_connection(), now)

    def _on_sync(self, event: ConntrackSyncEvent) -> None:
        match event:
            case ResyncReceived():
                if event.groups is None:
                    self._awaiting_table.pop(event.peer, None)
                    self._counters["tables_received"] += 1
            case DigestMismatch():
                self._counters["digest_mismatch_events"] += 1
            case _:
                assert_never(event)

    def _on_ranges(self, event: RangeEvent, now: float) -> None:
        self._active_dirty = True
        match event:
            case Claim():
                self._claim(event, now)
            case Release():
                self._release(event, now)
            case Handoff():
                self._counters["handoff_buckets"] += len(event.buckets)
            case Stable():
                self._stable = True
                if not self._ready and self._joined:
                    self._ready = True
                    self._events.append(
                        ev.Ready(owned=self._owned, members=tuple(sorted(self._ranges.members())))
                    )
            case Unstable():
                self._stable = False
            case _:
                assert_never(event)

    def _claim(self, event: Claim, now: float) -> None:
        """Inject what we hold of the claimed buckets, then program them."""
        mine = set(self._sync.local_keys_in_buckets(event.buckets))
        conns = tuple(c for c in self._sync.cached_in_buckets(event.buckets) if c.key not in mine)
        if conns:
            self._events.append(ev.InjectConnections(conns=conns, buckets=event.buckets))
            self._sync.adopt(conns, now)
            self._counters["injected"] += len(conns)
        exps = tuple(
            e
            for e in self._sync.cached_expectations_in_buckets(event.buckets)
            if not self._sync.has_local_expectation(e.key)
        )
        if exps:  # after their masters: the kernel attaches each to its master
            self._events.append(ev.InjectExpectations(exps=exps, buckets=event.buckets))
            self._sync.adopt_expectations(exps, now)
            self._counters["injected_expectations"] += len(exps)
        self._owned = self._owned | event.buckets
        self._events.append(ev.OwnedBucketsChanged(owned=self._owned, claimed=event.buckets))

    def _release(self, event: Release, now: float) -> None:
        """Stop forwarding the released buckets, then delete our entries of them."""
        self._owned = self._owned - event.buckets
        self._events.append(ev.OwnedBucketsChanged(owned=self._owned, released=event.buckets))
        self._refresh_active(now)  # the data plane lets go before the entries go
        conns = tuple(self._sync.local_in_buckets(event.buckets))
        if conns:
            self._events.append(ev.DeleteConnections(conns=conns, buckets=event.buckets))
            for conn in conns:
                self._sync.local_destroy(conn, now)
            self._counters["deleted"] += len(conns)

    def _inject_late(self, conn: Connection, now: float) -> None:
        """A peer's entry arrived for a bucket we already own (it was created
        there while the bucket was in transit, or the sync partition healed):
        take it over now, or the peer's release would delete its only copy."""
        if conn.bucket not in self._owned:
            return
        if self._sync.has_local(conn.key):
            return
        self._events.append(ev.InjectConnections(conns=(conn,), buckets=frozenset((conn.bucket,))))
        self._sync.adopt((conn,), now)
        self._counters["injected"] += 1
        self._counters["injected_late"] += 1

    def _inject_late_expectation(self, exp: Expectation, now: float) -> None:
        """An expectation created by the giver during a handover of its
        master's bucket, which we already own: the data connection will come
        to us, so the expectation must be here."""
        if exp.bucket not in self._owned or self._sync.has_local_expectation(exp.key):
            return
        if self._sync.wire_version < VERSION_HELPERS:
            return  # received but skipped by ConntrackSync (a v1 node ignores these)
        self._events.append(ev.InjectExpectations(exps=(exp,), buckets=frozenset((exp.bucket,))))
        self._sync.adopt_expectations((exp,), now)
        self._counters["injected_expectations"] += 1

    def _forget_dead_peers(self, now: float) -> None:
        """A dead peer's cache is what survivors inject when they claim its
        buckets, and what spares a full resync if it was only a false timeout
        (loss). Keep it `forget_after` seconds, then free the memory."""
        for peer, since in list(self._down_since.items()):
            if now - since >= self.config.forget_after:
                del self._down_since[peer]
                if not self._sync.peers().get(peer, True):
                    self._sync.forget_peer(peer)
                    self._counters["peers_forgotten"] += 1

    def start_listening(self, now: float) -> None:
        """The driver reads the network from `now` on: the listening before
        talking and the grace before joining count from here, not from the
        Node's creation. A daemon installs its data plane in between, which
        took 0.5 s on a busy machine: the whole grace passed unheard and the
        node joined alone, claiming every bucket its peers forwarded."""
        if not self._listened and not self._joined:
            self._listen_from(now)

    def _listen_from(self, now: float) -> None:
        interval = self.config.heartbeat_interval
        # Listen before talk: a node hearing its own id in this time is a
        # duplicate (`_duplicate_heard`) and never speaks; a running node's
        # heartbeat arrives within one interval, plus the tolerance.
        self._listen_until = now + interval * LISTEN_INTERVALS
        # Wait a few heartbeats before counting ourselves in: a node joining a
        # running cluster must hear it first, or it would claim every bucket.
        self._join_at = now + interval * (self.config.heartbeat_misses + 1)
        self._join_deadline = self._join_at + self.config.join_timeout
        self._join_timer = self._join_at  # then the deadline: tables are awaited by events

    def _maybe_join(self, now: float) -> None:
        if self._joined or now < self._join_at or self._duplicate:
            return
        self._join_timer = self._join_deadline
        settled = (
            self._availability.settled(now)
            and not self._awaiting_table
            and self._up <= self._ranges.peer_claims().keys()
        )
        if settled or now >= self._join_deadline:
            self._joined = True
            if not settled:
                self._counters["joined_without_tables"] += 1
            self._update_membership(now)

    def _update_membership(self, now: float) -> None:
        members = {
            node: info.weight
            for node, info in self._availability.members().items()
            if info.state == NodeState.ACTIVE and (node != self.node_id or self._joined)
        }
        self._ranges.set_members(members, now)
        self._active_dirty = True

    def _check_leave_complete(self) -> None:
        if (
            self._leaving
            and not self._left
            and not self._owned
            and not self._ranges.holes()
            and any(n != self.node_id for n in self._ranges.members())
        ):
            self._left = True
            self._events.append(ev.LeaveComplete())


def _dispatch_rank(msg: DatagramMessage) -> int:
    if isinstance(msg, Heartbeat):
        return 0
    if isinstance(msg, RangeState):
        return 2
    return 1
