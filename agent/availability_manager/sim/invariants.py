"""What must hold in every simulated run, checked as the run goes.

Owns the verdict of a run: a list of `Violation`s plus report-only counters.
The runner calls a hook for each relevant act (a delivery, a data-plane
program, a crash, a quiet period reached) and the checker compares it with
the rules below, which come from docs/architecture.md:

fifo        each receiver gets each sender's reliable-broadcast messages in
            order and without gaps (a gap is allowed only after an OutOfSync or
            a restart of that stream: a full resync follows);
hole        once the cluster was first complete, a bucket is never left with
            no live owner by a *release* (a crash leaves a gap until the
            survivors notice: that is measured as failover time, not a fault);
injection   when a node's data plane starts owning a bucket, every connection
            of that bucket the node knows about (its cache of the peers) is
            already in its kernel table;
assignment  after 2 s without faults or membership change, every bucket has
            exactly one live owner and the ownership is aimed_assignment of
            the live active members;
nonce       a node's new life starts its nonce counter above every counter an
            earlier life of it sealed, whatever its clock did (issue 18.3);
duplicate   a second process started with a running node's id never sends a
            datagram, claims a bucket or becomes ready (issue 18.3);
forwarding  at the same check, every bucket is forwarded (active in the data
            plane) by exactly that owner: a claim nobody honours in a stable
            cluster, such as a hostile member claiming every bucket, must not
            stop an owner forwarding (issue 18.2);
caches      after a quiet period with no new traffic, every node's cache of
            each live peer equals that peer's kernel table;
zone-guard  where zone links are simulated, no node declares a peer down for a
            heartbeat timeout while both have been on the zone links (alive,
            links up, not isolated) for longer than the timeout: a sync-only
            partition must not make two nodes own the same buckets (the
            split-brain guard of zone heartbeats).
liveness    where a scenario watches it (after a long sync partition heals),
            in every simulated second no live node's datagrams sent, resync
            rounds started or OutOfSync events exceed the scenario's limits:
            healing must not start a storm (issue 18.1). The simulator has no
            CPU model; these counts are what the CPU time follows.

seamless    while the only changes are planned ones (starts, drains, undrains,
            leaves; no crash, loss, partition or link fault in the run so
            far) and once the cluster was first complete, every bucket is
            forwarded by exactly one live node at every instant: a planned
            handover is make-before-break with no overlap (checked at every
            data-plane programming and at every timed switch).
exclusive   after other faults too (crashes, link and health faults), as long
            as the sync network lost no datagram and was never split: no
            bucket is forwarded by two live nodes at once (a failover may
            leave a gap; it never doubles a packet).

Report-only: connections of a crashed node that no survivor knew at the
moment of the crash ("unsynced at crash": their NEW was still in flight),
connections lost, the longest failover gap.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from ..connection import Connection
from ..types import NodeId
from .names import node_name as n

SEQ_MOD = 1 << 32


@dataclasses.dataclass(frozen=True, slots=True)
class Violation:
    time: float
    rule: str
    detail: str

    def describe(self) -> str:
        return f"t={self.time * 1000:.1f}ms {self.rule}: {self.detail}"


@dataclasses.dataclass
class Report:
    """Report-only numbers of a run (not violations)."""

    failover_gaps: int = 0
    max_gap: float = 0.0
    unsynced_at_crash: int = 0
    holes_seen_by_new: int = 0
    deliveries: int = 0
    double_forwarding: int = 0  # a bucket became active while another node forwards it
    injection_checks: int = 0
    assignment_checks: int = 0
    cache_checks: int = 0
    zone_guard_checks: int = 0  # peer timeouts judged against the zone links
    load_checks: int = 0  # (node, counter, second) judged by the liveness rule
    # the highest per-second growth seen of each watched counter, any node
    load_peaks: dict[str, int] = dataclasses.field(default_factory=dict)
    seamless_checks: int = 0
    # virtual seconds from a membership change (start, crash, drain, undrain,
    # leave) until every live node was stable with the aimed buckets
    # programmed; changes overlapped by another fault are not counted
    settle_times: list[float] = dataclasses.field(default_factory=list)


class Invariants:
    MAX_VIOLATIONS = 20  # a broken run would otherwise report the same fault forever

    def __init__(self, buckets: int) -> None:
        self.buckets = buckets
        self.violations: list[Violation] = []
        self.report = Report()
        self._last_seq: dict[tuple[NodeId, NodeId], int] = {}
        self._owners: list[set[NodeId]] = [set() for _ in range(buckets)]
        self._unowned = buckets
        self.armed = False  # the cluster was complete once: holes count from now on
        self._gap_since: dict[int, float] = {}
        # Buckets a crashed node was forwarding, until someone forwards them
        # again: a giver whose handoff to that node was announced before the
        # crash releases them at the handoff's instant (irrevocable, and the
        # crash not yet detected), a hole that is the crash's, like any
        # crashed owner's, so counted as a failover gap, not a violation.
        self._orphaned: set[int] = set()

    def fail(self, now: float, rule: str, detail: str) -> None:
        if len(self.violations) < self.MAX_VIOLATIONS:
            self.violations.append(Violation(now, rule, detail))

    @property
    def ok(self) -> bool:
        return not self.violations

    # -- fifo ----------------------------------------------------------------------

    def delivered(self, receiver: NodeId, sender: NodeId, seq: int, now: float) -> None:
        self.report.deliveries += 1
        key = (receiver, sender)
        last = self._last_seq.get(key)
        if last is not None and seq != (last + 1) % SEQ_MOD:
            self.fail(now, "fifo", f"node {receiver} got seq {seq} from {sender} after {last}")
        self._last_seq[key] = seq

    def restart_stream(self, receiver: NodeId, sender: NodeId) -> None:
        """An OutOfSync, or the peer came (back) up: its next sequence starts afresh."""
        self._last_seq.pop((receiver, sender), None)

    def forget_node(self, node: NodeId) -> None:
        for key in [k for k in self._last_seq if node in k]:
            del self._last_seq[key]

    # -- hole ------------------------------------------------------------------------

    def _add_owner(self, bucket: int, node: NodeId, now: float) -> None:
        owners = self._owners[bucket]
        self._orphaned.discard(bucket)
        if not owners:
            self._unowned -= 1
            since = self._gap_since.pop(bucket, None)
            if since is not None:
                self.report.failover_gaps += 1
                self.report.max_gap = max(self.report.max_gap, now - since)
            if self._unowned == 0:
                self.armed = True
        owners.add(node)

    def _remove_owner(self, bucket: int, node: NodeId, now: float, allowed: bool) -> None:
        owners = self._owners[bucket]
        if node not in owners:
            return
        owners.discard(node)
        if owners:
            return
        self._unowned += 1
        if not self.armed:
            return
        if allowed or bucket in self._orphaned:
            self._gap_since[bucket] = now
        else:
            self.fail(now, "hole", f"node {n(node)} released bucket {bucket}; no live node owns it")

    def programmed(
        self, node: NodeId, claimed: Iterable[int], released: Iterable[int], now: float
    ) -> None:
        """A live node's data plane was reprogrammed (claims first: no false hole)."""
        for bucket in claimed:
            self._add_owner(bucket, node, now)
        for bucket in released:
            self._remove_owner(bucket, node, now, allowed=False)

    def node_gone(self, node: NodeId, owned: Iterable[int], now: float, graceful: bool) -> None:
        """A node left the data plane: crashed/isolated (a gap is allowed until the
        others notice) or stopped after a graceful leave (it must own nothing)."""
        for bucket in owned:
            self._remove_owner(bucket, node, now, allowed=not graceful)
        if not graceful:
            self._orphaned.update(owned)

    def node_back(self, node: NodeId, owned: Iterable[int], now: float) -> None:
        for bucket in owned:
            self._add_owner(bucket, node, now)

    def hole_seen_by_new(self, bucket: int) -> None:
        self.report.holes_seen_by_new += 1

    def owners(self, bucket: int) -> frozenset[NodeId]:
        return frozenset(self._owners[bucket])

    # -- seamless ---------------------------------------------------------------------------

    def check_seamless(self, forwarders: list[frozenset[NodeId]], now: float) -> None:
        """`forwarders[b]`: the live nodes whose data plane forwards bucket b now."""
        self._check_forwarders("seamless", forwarders, now, gaps=True)

    def check_exclusive(self, forwarders: list[frozenset[NodeId]], now: float) -> None:
        """As check_seamless, but a bucket nobody forwards is allowed (a failover's gap)."""
        self._check_forwarders("exclusive", forwarders, now, gaps=False)

    def _check_forwarders(
        self, rule: str, forwarders: list[frozenset[NodeId]], now: float, gaps: bool
    ) -> None:
        self.report.seamless_checks += 1
        for bucket, nodes in enumerate(forwarders):
            if len(nodes) > 1:
                names = ", ".join(sorted(n(x) for x in nodes))
                self.fail(now, rule, f"bucket {bucket} forwarded by {names}")
                return
            if gaps and not nodes:
                self.fail(now, rule, f"bucket {bucket} forwarded by nobody")
                return

    # -- injection -------------------------------------------------------------------------

    def check_injection(
        self,
        node: NodeId,
        claimed: frozenset[int],
        live: Iterable[Connection],
        known: frozenset[bytes],
        table: Mapping[bytes, Connection],
        now: float,
    ) -> None:
        """`known`: the keys the node knows (cache + local) right after the claim."""
        self.report.injection_checks += 1
        for conn in live:
            if conn.bucket in claimed and conn.key in known and conn.key not in table:
                self.fail(
                    now,
                    "injection",
                    f"node {node} claimed bucket {conn.bucket} without its known connection {conn}",
                )

    # -- zone-guard ----------------------------------------------------------------------------

    def peer_timed_out(
        self, viewer: NodeId, peer: NodeId, zone_heard_for: float, timeout: float, now: float
    ) -> None:
        """`viewer` declared `peer` down for a timeout; both have been on the
        zone links for `zone_heard_for` seconds (0 if either is off them now)."""
        self.report.zone_guard_checks += 1
        if zone_heard_for > timeout:
            self.fail(
                now,
                "zone-guard",
                f"node {n(viewer)} timed out {n(peer)} although both were on the zone "
                f"links for {zone_heard_for * 1000:.0f} ms (timeout {timeout * 1000:.0f} ms)",
            )

    # -- quiet-period checks -----------------------------------------------------------------

    def load_checked(
        self, node: NodeId, counter: str, grew: int, limit: int, second: int, now: float
    ) -> None:
        self.report.load_checks += 1
        peaks = self.report.load_peaks
        peaks[counter] = max(peaks.get(counter, 0), grew)
        if grew > limit:
            self.fail(
                now,
                "liveness",
                f"{n(node)}: {counter} grew by {grew} in second {second} after the heal "
                f"(limit {limit})",
            )

    def duplicate_acted(self, node: NodeId, what: str, now: float) -> None:
        self.fail(now, "duplicate", f"a second process running as {n(node)}: {what}")

    def life_started(self, node: NodeId, first_counter: int, used_before: int, now: float) -> None:
        if first_counter < used_before:
            self.fail(
                now,
                "nonce",
                f"{n(node)} starts its counter at {first_counter}, below {used_before} "
                "sealed by an earlier life: nonces repeat under the key",
            )

    def check_assignment(
        self, programmed: Mapping[NodeId, frozenset[int]], aimed: Mapping[int, NodeId], now: float
    ) -> None:
        """`programmed`: live data-plane nodes' bucket sets; `aimed`: bucket -> node."""
        self.report.assignment_checks += 1
        self._one_holder_each("assignment", "owned", programmed, aimed, now)

    def check_forwarding(
        self, active: Mapping[NodeId, frozenset[int]], aimed: Mapping[int, NodeId], now: float
    ) -> None:
        """`active`: what each live data-plane node forwards."""
        self._one_holder_each("forwarding", "forwarded", active, aimed, now)

    def _one_holder_each(
        self,
        rule: str,
        verb: str,
        holdings: Mapping[NodeId, frozenset[int]],
        aimed: Mapping[int, NodeId],
        now: float,
    ) -> None:
        for bucket in range(self.buckets):
            holders = sorted(node for node, buckets in holdings.items() if bucket in buckets)
            want = aimed.get(bucket)
            if holders != [want]:
                names = "".join(n(h) for h in holders) or "nobody"
                self.fail(
                    now,
                    rule,
                    f"after a quiet period bucket {bucket} is {verb} by {names}, "
                    f"aimed {n(want) if want is not None else 'nobody'}",
                )
                return  # one line is enough to replay it

    def check_caches(
        self,
        caches: Mapping[tuple[NodeId, NodeId], Mapping[bytes, Connection]],
        tables: Mapping[NodeId, Mapping[bytes, Connection]],
        now: float,
    ) -> None:
        """`caches[(viewer, peer)]`: what viewer holds for peer; `tables[peer]`: peer's kernel."""
        self.report.cache_checks += 1
        for (viewer, peer), cache in sorted(caches.items()):
            table = tables[peer]
            if cache == table:
                continue
            missing = len(table.keys() - cache.keys())
            extra = len(cache.keys() - table.keys())
            stale = sum(1 for k in table.keys() & cache.keys() if table[k] != cache[k])
            self.fail(
                now,
                "caches",
                f"node {n(viewer)}'s cache of {n(peer)}: {missing} missing, {extra} extra, "
                f"{stale} stale (table has {len(table)})",
            )
