"""The asyncio adapter that drives a `Node` on a real firewall node.

It does only what the sans-I/O Node cannot: read sockets (sync network,
conntrack events, link events, control), keep one timer armed at
`node.next_timer()`, and carry out the node's events on the kernel in the
order they come (inject, reprogram, delete). After every input it "pumps":
events first, then datagrams, then re-arms the timer. Nothing here decides
anything about the cluster.

Kernel work (nft transactions, conntrack writes) runs on one worker thread,
in event order: an `nft -f` under load can take tens of milliseconds, and
the event loop must keep sending heartbeats meanwhile, or a busy node looks
dead to its peers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, assert_never

from .. import node_events as ev
from ..connection import Connection
from ..crypto import Keyring
from ..ct_messages import Expectation
from ..dataplane.base import DataPlane
from ..dataplane.conntrack_netlink import EventsLost
from ..node import Destination, Node
from ..node_config import NodeConfig
from ..types import format_node_id
from .config import AgentConfig, ConfigError, fence_timeout, load_config, reload_incompatible
from .control import ControlError, ControlServer
from .health import HealthRunner
from .kernel_guard import KernelGuard
from .kernel_work import brief, conntrack_probe, injection_attempts, retrying
from .keyfile import KeyFileError, load_keys
from .link_hold_down import LinkHoldDown
from .links import LinkMonitor
from .notify_hooks import HookRunner, call_for_event, call_for_fault, call_for_phase
from .ops_commands import OperatorCommands, kernel_listing
from .own_status import OwnStatus
from .read_moderation import ModeratedReader
from .state_dir import StateDir, StateDirError
from .systemd import Notifier
from .transport import SyncSocket

log = logging.getLogger("availability-manager")

LINK_RECHECK_S = 1.0
# New local connections wait this long before their sync datagram leaves, so
# that a burst shares datagrams: per datagram the sender, the network and
# every peer pay a syscall, an AEAD operation and the broadcast bookkeeping,
# which at thousands of connections per second costs more than the entries
# themselves (docs/benchmarks.md, sync throughput). A connection created in
# the last 2 ms before its owner dies was not synced either way.
CONNTRACK_FLUSH_DELAY_S = 0.002
# While the conntrack and sync sockets are busy they are read at most once per
# this interval (read_moderation.py); a quiet socket is read at once.
BUSY_READ_INTERVAL_S = 0.002
# Heartbeat intervals without any input (a timer is due every interval) after
# which the runtime takes the gap for its own event loop's stall.
STALL_HEARTBEATS = 2
# Python's cyclic garbage collector walks every tracked object in a full
# collection: with the peers' caches (three objects per connection) that
# stops the loop for hundreds of milliseconds, long enough to miss heartbeats
# and be taken for dead. Every second the objects alive by then are frozen
# (gc.freeze: left out of later collections, still freed by reference
# counting), so a collection only walks what is newer. bench/gc_pause.py,
# 300,000 cached connections: longest pause 411 ms unfrozen, 14 ms frozen
# every 10,000 (a second at 10,000/s). The price: a reference cycle among
# frozen objects is never collected; the agent's long-lived objects (tables,
# caches) hold none.
GC_FREEZE_EVERY_S = 1.0
METRICS_PUBLISH_S = 1.0
# The data plane is compared with what was installed after every nftables
# notification that names the agent's table (nft_monitor.py), this long after
# the first (`nft flush ruleset` sends dozens), and every RULESET_RECHECK_S in
# case notifications were lost or the backend has none (clusterdev).
RULESET_CHECK_DELAY_S = 0.02
RULESET_RECHECK_S = 10.0
# With a watch the periodic check is only a backstop (a lost notification is
# reported as a change, nft_monitor.py): it costs an nft listing of the whole
# table, about 5 % of an idle agent's CPU at every 10 s in the 16-node lab.
RULESET_RECHECK_WATCHED_S = 60.0


class ConntrackTable(Protocol):
    refused: list[tuple[Connection, str]]  # of the last inject() or delete()

    def fileno(self) -> int: ...
    def read_events(self) -> Sequence[tuple[str, Connection | Expectation]]: ...
    def dump(self) -> list[Connection]: ...
    def inject(self, conns: list[Connection]) -> int: ...
    def delete(self, conns: list[Connection]) -> int: ...
    def inject_expectations(self, exps: list[Expectation]) -> int: ...
    def close(self) -> None: ...


def node_config(
    cfg: AgentConfig, keyring: Keyring, incarnation: int, initial_counter: int
) -> NodeConfig:
    return NodeConfig(
        node_id=cfg.node_id,
        settings=cfg.cluster,
        keyring=keyring,
        incarnation=incarnation,
        # above every counter an earlier life reserved (state_dir.py): a
        # restarted node never reuses a nonce, whatever the clock did
        initial_counter=initial_counter,
        heartbeat_interval=cfg.heartbeat.interval_ms / 1000.0,
        heartbeat_misses=cfg.heartbeat.misses,
        weight=cfg.weight,
        protocols=cfg.protocols,
        mark_mask=cfg.mark_mask,  # synced: entries the data plane classified (relevance.py)
        max_wire_version=cfg.max_wire_version,
        zone_heartbeats=cfg.heartbeat.zone_heartbeats,
        sync_filter=cfg.sync_filter,
        sync_delay=cfg.sync_delay_s,
        members=cfg.members,
        max_peers=cfg.limits.max_peers,
        max_cache_entries=cfg.limits.max_cache_entries,
        handover_delay=cfg.heartbeat.handover_delay_ms / 1000.0,
        # nftables' `meta time` compares whole seconds (nft_handover.py)
        handover_quantum=1.0,
    )


# Counter names in Runtime.stats(): what the Node asked the kernel for ...
REQUESTED = {
    "injected": "injected_requested",
    "injected_expectations": "injected_expectations_requested",
    "deleted": "deleted_requested",
}
# ... and what the kernel wrote (the runtime's own counters of the same events).
WRITTEN = {
    "injected": "kernel_injected",
    "injected_expectations": "kernel_injected_expectations",
    "deleted": "kernel_deleted",
}


class RulesetWatch(Protocol):
    def fileno(self) -> int: ...
    def changed(self) -> bool: ...
    def close(self) -> None: ...


class Runtime:
    def __init__(
        self,
        cfg: AgentConfig,
        dataplane: DataPlane,
        conntrack: ConntrackTable,
        sync: SyncSocket,
        links: LinkMonitor | None,
        notifier: Notifier | None = None,
        metrics: Any = None,
        zone_sockets: list[SyncSocket] | None = None,
        state: StateDir | None = None,
        ruleset_watch: RulesetWatch | None = None,
    ) -> None:
        self.cfg = cfg
        self.dataplane = dataplane
        self.conntrack = conntrack
        self.sync = sync
        self.zone_sockets = list(zone_sockets or [])
        self.links = links
        self.ruleset_watch = ruleset_watch
        self.notifier = notifier or Notifier({})
        self.metrics = metrics
        self.loop = asyncio.get_running_loop()
        keys, send_id = load_keys(cfg.key_file)
        # main() takes the state directory's lock before it opens anything
        # (one agent per state directory); taken here when it did not.
        if state is None:
            state = StateDir(cfg.state_dir)
            state.acquire(format_node_id(cfg.node_id))
        self.state = state
        self.node = Node(
            node_config(
                cfg,
                Keyring(keys, send_id),
                self.state.next_incarnation(),
                self.state.first_nonce_counter(),
            ),
            random.Random(os.urandom(16)),
            self.loop.time(),
        )
        self._set_clock_offset()
        self.counters: Counter[str] = Counter()
        self._timer: asyncio.TimerHandle | None = None
        self._flush: asyncio.TimerHandle | None = None
        self._stopped: asyncio.Future[str] = self.loop.create_future()
        self._leaving = False
        self._links_up: bool | None = None
        self.link_hold_down = LinkHoldDown(
            links.interfaces if links is not None else (),
            cfg.links.hold_down_ms / 1000.0,
            cfg.links.hold_down_max_ms / 1000.0,
        )
        self._link_release: asyncio.TimerHandle | None = None
        self.own_status = OwnStatus()
        self._own_status_told: bool | None = None  # what the Node was told last
        self._own_datagrams_seen = 0
        # A gap longer than this between two inputs is the loop's own stall.
        self._stall_after = STALL_HEARTBEATS * cfg.heartbeat.interval_ms / 1000.0
        self._last_ran = self.loop.time()
        # The data plane's fence (dataplane/fence.py) is refreshed after every
        # heartbeat sent and expires `fence_timeout` after it (config.py).
        self._fence_timeout = fence_timeout(cfg)
        self._fenced_from: float | None = None  # the heartbeat the fence counts from
        # After a stall long enough for the peers to take this node's
        # buckets, the fence stays down while the Node learns its forwarding
        # again from their claims (Node.host_stalled).
        self._fence_held = False
        self.kernel_guard = KernelGuard()
        # what the Node wants forwarded (the last ActiveBucketsChanged), kept
        # by the worker thread: a restore or probe programs it again
        self._wanted_active: frozenset[int] = frozenset()
        self._ruleset_check_since: float | None = None  # a check is queued
        self._last_ruleset_check = 0.0
        self._kernel = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kernel")
        # Reads of the kernel for `status` (nft listings): a thread of their
        # own, so that an operator polling status never queues ahead of a
        # write (a release the loop waits for, a restore, a step back).
        self._kernel_reads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kernel-read")
        self.hooks = HookRunner(cfg.notify, format_node_id(cfg.node_id))
        self._phase = self.node.phase()  # what the hooks were told last
        self.ops = OperatorCommands(
            self.node,
            cfg.cluster.buckets,
            cfg.mark_mask,
            now=self.loop.time,
            pump=self._pump,
            reread_kernel=lambda: self._kernel.submit(self._redump),
            kernel_dump=lambda: kernel_listing(self.cfg.mark_mask),
            stats=self.stats,
            kernel_refusals=lambda: getattr(self.conntrack, "request_errors", {}),
        )
        self.control = ControlServer(cfg.control_socket, self._control_handlers())
        self.health = self._health_runner()
        busy = BUSY_READ_INTERVAL_S
        self._moderated = (
            ModeratedReader(self.loop, self.sync.fileno(), lambda: self._on_sync(sync), busy),
            ModeratedReader(self.loop, self.conntrack.fileno(), self._on_conntrack, busy),
        )

    # -- lifecycle --------------------------------------------------------------

    async def run(self) -> str:
        """Run until a leave completes or a fatal error; returns why it stopped."""
        self.dataplane.install()
        self._last_ran = self.loop.time()  # installing is not a stall
        for reader in self._moderated:
            reader.start()
        for zs in self.zone_sockets:
            self.loop.add_reader(zs.fileno(), self._on_zone, zs)
        if self.links is not None:
            self.loop.add_reader(self.links.fileno(), self._on_links)
        if self.ruleset_watch is not None:
            # Woken for at once: a flushed table forwards nothing until it is
            # restored or the node steps back. (Read once per heartbeat instead,
            # to save the wakeup each fence refresh's notification costs, the
            # refusing-kernel lab test lost 3-6 times the packets.) The fence
            # refresh's own notifications are read right after it, in its
            # wakeup (_keep_fence_up).
            self.loop.add_reader(self.ruleset_watch.fileno(), self._read_ruleset_watch)
        await self.control.start()
        # the sync socket is read from here on: the Node's listening and join
        # grace start now, not at its creation before the install above
        self.node.start_listening(self.loop.time())
        self._check_links()
        self.health.start()
        self.node.local_table_dump(self.conntrack.dump(), self.loop.time())
        self._periodic()
        if self.notifier.watchdog_interval:
            self._watchdog()
        for sig, handler in (
            (signal.SIGTERM, self.request_leave),
            (signal.SIGINT, self.request_leave),
            (signal.SIGHUP, self.reload),
        ):
            self.loop.add_signal_handler(sig, handler)
        log.info(
            "started node %s backend %s, %d zones, sync %s via %s",
            format_node_id(self.cfg.node_id),
            self.cfg.cluster.backend,
            len(self.cfg.zones),
            self.cfg.sync.interface,
            self.cfg.sync.transport,
        )
        self._pump()
        try:
            return await self._stopped
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        for reader in self._moderated:
            reader.stop()
        for fd_owner in (
            self.links,
            self.ruleset_watch,
            *self.zone_sockets,
        ):
            if fd_owner is not None:
                self.loop.remove_reader(fd_owner.fileno())
        for zs in self.zone_sockets:
            zs.close()
        if self._timer:
            self._timer.cancel()
        if self._flush:
            self._flush.cancel()
        if self._link_release:
            self._link_release.cancel()
        self.health.close()
        await self.health.wait_closed()
        await self.control.close()
        self.ops.close()
        self._kernel.shutdown(wait=True)  # finish queued kernel work first
        self._kernel_reads.shutdown(wait=True, cancel_futures=True)
        self._pump_hooks()
        await self.hooks.close(grace=max((h.timeout_s for h in self.cfg.notify), default=0))
        self.dataplane.uninstall()
        self.sync.close()
        self.conntrack.close()
        if self.links:
            self.links.close()
        if self.ruleset_watch is not None:
            self.ruleset_watch.close()
        self.state.release()

    def request_leave(self) -> None:
        """SIGTERM: a graceful leave, bounded by leave_timeout_s."""
        if self._leaving:
            return
        self._leaving = True
        log.info(
            "leaving: handing buckets to the other nodes (timeout %gs)", self.cfg.leave_timeout_s
        )
        self.notifier.stopping("leaving the cluster")
        self.node.leave(self.loop.time())
        self.loop.call_later(self.cfg.leave_timeout_s, self._leave_timeout)
        self._pump()

    def _leave_timeout(self) -> None:
        if not self._stopped.done():
            log.warning(
                "leave not confirmed within %gs: stopping anyway, still owning %d buckets",
                self.cfg.leave_timeout_s,
                len(self.node.owned_buckets()),
            )
            self._stop("leave-timeout")

    def reload(self) -> None:
        """SIGHUP: apply what can change live; a bad file keeps the running config."""
        try:
            new = load_config(self.cfg.path)
            keys, send_id = load_keys(new.key_file)
            keyring = Keyring(keys, send_id)
        except (ConfigError, KeyFileError, ValueError) as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            self.counters["reload_failed"] += 1
            return
        fixed = reload_incompatible(self.cfg, new)
        if fixed:
            log.error(
                "reload refused, keeping the running configuration: %s cannot change "
                "without a restart (drain, restart, join)",
                ", ".join(fixed),
            )
            self.counters["reload_failed"] += 1
            return
        self.node.set_keyring(keyring)
        self.hooks.set_hooks(new.notify)
        self.link_hold_down.configure(
            new.links.hold_down_ms / 1000.0, new.links.hold_down_max_ms / 1000.0
        )
        health_changed = new.health != self.cfg.health
        self.cfg = dataclasses.replace(new)
        if health_changed:
            self._restart_health()
        self.counters["reloads"] += 1
        log.info("configuration reloaded from %s", new.path)
        self._pump()

    # -- inputs -----------------------------------------------------------------

    def _clock(self) -> float:
        """The loop's time for an input; first tells the Node if the loop
        itself did not run for a while (a timer is due at least every
        heartbeat interval, so a longer gap is the host's stall, not the
        peers' silence: Availability.host_stalled)."""
        now = self.loop.time()
        if now - self._last_ran > self._stall_after:
            self.counters["loop_stalls"] += 1
            log.warning(
                "event loop stalled %.0f ms: peers not judged by it", (now - self._last_ran) * 1e3
            )
            self.node.host_stalled(self._last_ran, now)
            # A shorter stall let the fence expire at most: it rises with the
            # next heartbeat. After a longer one the peers may have taken our
            # buckets: down until the Node knows what it forwards.
            if self.node.relearning:
                self._fence_held = True
        self._last_ran = now
        return now

    def _fence_may_rise(self) -> bool:
        """False while the fence is held down after a long stall. Not until
        the Node is stable: the peers hand our buckets back at their own
        instants, and the Node starts each at its instant (Node.host_stalled);
        a fence held until the last one left the first ones unforwarded
        (a second of a peer's share lost in the stalled-agent lab test)."""
        if not self._fence_held:
            return True
        if self.node.relearning:
            return False
        self._fence_held = False
        log.info("fence up again after the stall: forwarding what no peer claims")
        return True

    def _keep_fence_up(self, now: float) -> None:
        """After a heartbeat went out, let the data plane forward until
        `fence_timeout` after it: the peers' deadline for this node runs from
        that heartbeat, not from whenever the loop last ran. Most heartbeats
        did so on their way out (their packets carry the fence's mark, see
        _pump); this refreshes by netlink the others: a backend without the
        mark, a heartbeat none of whose copies left (a link down), and the
        last heartbeat when the fence may rise again only after it (a stall
        relearned)."""
        sent = self.node.last_heartbeat_sent
        if sent is None or sent == self._fenced_from or not self._fence_may_rise():
            return
        self._fenced_from = sent
        expires = sent + self._fence_timeout
        if expires > now:  # else the elements expire on their own, earlier
            self.dataplane.keep_alive(expires - now)
            # The refresh is an nftables transaction: the kernel queued its
            # notifications on the ruleset watch during the send (set
            # elements and the generation, which the watch ignores). Read
            # them now, in this wakeup: left for the selector, they cost a
            # wakeup of their own per heartbeat, a third of an idle agent's
            # wakeups at N = 3 (docs/benchmarks/lab_scale.md, issue 19). The
            # watch stays on the selector, so a change by anyone else is
            # seen as soon as before, or sooner.
            self._read_ruleset_watch()

    def _on_sync(self, sock: SyncSocket) -> None:
        now = self._clock()
        via = Destination.ZONES if sock.link_only else Destination.SYNC
        for datagram in sock.receive_all():
            self.node.receive_datagram(datagram, now, via)
        self._pump()

    def _on_zone(self, sock: SyncSocket) -> None:
        """A zone link's datagrams, after whatever the sync socket holds: a
        peer sends a heartbeat's sync copy before its zone copy, and the
        sync socket's reads may be held back (read_moderation.py). Read in
        that order, a zone copy that answers a doubt is found stale, as
        meant, and not opened and taken for a doubt of its own (Node,
        "Zone heartbeats"), which would keep the zone copies going."""
        now = self._clock()
        for datagram in self.sync.receive_all():
            self.node.receive_datagram(datagram, now, Destination.SYNC)
        for datagram in sock.receive_all():
            self.node.receive_datagram(datagram, now, Destination.ZONES)
        self._pump()

    def _on_conntrack(self) -> None:
        now = self._clock()
        try:
            events = self.conntrack.read_events()
        except EventsLost:  # the table is the truth: read it again
            self.counters["conntrack_redumps"] += 1
            log.warning("conntrack events lost: re-reading the table")
            self._kernel.submit(self._redump)
            return
        for kind, conn in events:
            if isinstance(conn, Expectation):  # wire version 2 syncs them
                if kind == "new":
                    self.node.expectation_new(conn, now)
                elif kind == "destroy":
                    self.node.expectation_destroy(conn, now)
            elif kind == "new":
                self.node.connection_new(conn, now)
            elif kind == "update":
                self.node.connection_update(conn, now)
            elif kind == "amend":
                self.node.connection_amend(conn, now)
            elif kind == "destroy":
                self.node.connection_destroy(conn, now)
        if self._flush is None:
            self._flush = self.loop.call_later(CONNTRACK_FLUSH_DELAY_S, self._flush_local)

    def _flush_local(self) -> None:
        self._flush = None
        self._pump()

    def _redump(self) -> None:
        """Worker thread: read the whole table, hand it to the node in the loop."""
        conns = self.conntrack.dump()

        def apply() -> None:
            self.node.local_table_dump(conns, self.loop.time())
            self._pump()

        self.loop.call_soon_threadsafe(apply)

    def _on_links(self) -> None:
        assert self.links is not None
        self.links.drain_events()
        self._check_links()
        self._pump()

    def _check_links(self) -> None:
        """A link down is a fault at once; a link back only after its
        hold-down (link_hold_down.py), released by a timer of its own."""
        now = self.loop.time()
        if self.links is not None:
            self.link_hold_down.update(self.links.down(), now)
        fault = self.link_hold_down.fault(now)
        self._links_up = fault is None
        self.set_fault("links", fault)
        if self._link_release is not None:
            self._link_release.cancel()
            self._link_release = None
        release = self.link_hold_down.next_deadline(now)
        if release is not None:
            self._link_release = self.loop.call_at(release, self._on_link_release)

    def _on_link_release(self) -> None:
        self._link_release = None
        self._check_links()
        self._pump()

    def set_fault(self, watcher: str, fault: str | None) -> None:
        """A watcher's verdict on this node's fitness to forward (None: fit).
        The Node hears only the combined bit, and only when it changes."""
        before = self.own_status.faults().get(watcher)
        self.own_status.set(watcher, fault)
        self.hooks.fire(call_for_fault(watcher, before, fault))
        if fault != before:
            if fault is not None:
                log.warning("own status: %s: %s", watcher, fault)
            elif before is not None:
                log.info("own status: %s content again", watcher)
        up = self.own_status.up
        if up != self._own_status_told:
            if up and self._own_status_told is False:
                log.info("own status up: every watcher content")
            self._own_status_told = up
            self.node.set_link_status(up, self.loop.time())

    def _health_runner(self) -> HealthRunner:
        return HealthRunner(
            self.cfg.health,
            self.cfg.zones,
            self.loop,
            set_fault=self._set_fault_and_pump,
            set_weight_cap=self.set_weight_cap,
            set_nexthops_ok=lambda ok: self.node.set_nexthops_ok(ok, self.loop.time()),
            peers_reach_nexthops=lambda: bool(self.node.peers_reaching_nexthops()),
        )

    def _restart_health(self) -> None:
        """New health settings (a reload): the old checks' verdicts go with them,
        the new ones start from their first result."""
        self.health.close()
        self.loop.create_task(self.health.wait_closed())
        for watcher in self.health.watchers():
            self.set_fault(watcher, None)
            if watcher in self.own_status.weight_caps():
                self.set_weight_cap(watcher, None)
        self.node.set_nexthops_ok(True, self.loop.time())
        self.health = self._health_runner()
        self.health.start()

    def _set_fault_and_pump(self, watcher: str, fault: str | None) -> None:
        """set_fault from a watcher outside the runtime's inputs (health checks):
        what the Node decided must reach the kernel and the peers now."""
        self.set_fault(watcher, fault)
        self._pump()

    def set_weight_cap(self, watcher: str, cap: int | None) -> None:
        """A watcher asks for a lower weight (None: no longer): the Node
        announces the lowest cap, never above the configured weight."""
        self.own_status.set_weight_cap(watcher, cap)
        weight = self.own_status.weight(self.cfg.weight)
        log.info("own weight %d (configured %d, caps %s)", weight, self.cfg.weight,
                 self.own_status.weight_caps())  # fmt: skip
        self.node.set_weight(weight, self.loop.time())
        self._pump()

    def _set_clock_offset(self) -> None:
        """Handoff switch times are wall-clock instants (the clock nftables'
        `meta time` reads); the Node runs on the loop's monotonic clock."""
        self.node.set_clock_offset(time.time() - self.loop.time())

    def _periodic(self) -> None:
        gc.freeze()  # see GC_FREEZE_EVERY_S
        self._set_clock_offset()  # NTP slews the wall clock
        self._check_links()
        self._check_nonces()
        self._check_own_datagrams()
        self._check_kernel()
        if self.metrics is not None:
            self.metrics.publish(self.stats(), {"node": format_node_id(self.cfg.node_id)})
        self._pump()
        self.loop.call_later(
            min(LINK_RECHECK_S, METRICS_PUBLISH_S, GC_FREEZE_EVERY_S), self._periodic
        )

    def _check_nonces(self) -> None:
        """Reserve the next block of nonce counters on disk before the sender
        needs it (state_dir.py). A node that cannot must stop sending: a
        repeated nonce would expose the cluster key's traffic."""
        try:
            self.state.ensure_nonces(self.node.send_counter)
        except StateDirError as exc:
            log.error("cannot reserve nonces, stopping: %s", exc)
            self._stop(f"nonce reservation failed: {exc}")

    def _check_own_datagrams(self) -> None:
        """Multicast loopback is off (transport.py), so a datagram carrying our
        own node id was sent by another process configured as this node: two
        agents claiming the same buckets. An alarm, not a statistic."""
        seen = self.node.own_datagrams
        if seen > self._own_datagrams_seen:
            self._own_datagrams_seen = seen
            self.counters["duplicate_node_id_alarms"] += 1
            log.error(
                "another process sends as node %s (%d datagrams so far): "
                "two agents share one node id; stop one of them",
                format_node_id(self.cfg.node_id),
                seen,
            )

    def _watchdog(self) -> None:
        # pinged from the event loop itself: a stuck loop stops the pings
        self.notifier.watchdog()
        assert self.notifier.watchdog_interval
        self.loop.call_later(self.notifier.watchdog_interval, self._watchdog)

    def _on_timer(self) -> None:
        self._timer = None
        self.node.handle_timer(self._clock())
        self._pump()

    # -- outputs ----------------------------------------------------------------

    def _pump(self) -> None:
        # Through the stall check: a pump after a stall that no input noticed
        # first (a control command, a worker's result) would send the overdue
        # heartbeat and raise the fence before the stall is judged.
        now = self._clock()
        while (event := self.node.next_event()) is not None:
            self._perform(event)
        self._pump_hooks()
        heard_before = self.node.last_heartbeat_sent
        out = self.node.datagrams_to_send(now)
        # A heartbeat's packets refresh the fence in the kernel on their way
        # out (fence.py): no syscall of its own. _keep_fence_up refreshes by
        # netlink whatever they did not.
        mark = 0
        sent = self.node.last_heartbeat_sent
        if out and sent != heard_before and self.dataplane.fence_mark and self._fence_may_rise():
            mark = self.dataplane.fence_mark
        refreshed = False  # a copy left marked: the fence counts from `sent`
        for datagram, destination in out:
            if destination is Destination.SYNC:
                refreshed = self.sync.send(datagram, mark) or refreshed
            else:
                for zs in self.zone_sockets:
                    refreshed = zs.send(datagram, mark) or refreshed
        if mark and refreshed:
            self._fenced_from = sent
            self.counters["fence_heartbeats"] += 1
        self._keep_fence_up(now)
        deadline = self.node.next_timer()
        if self._timer is not None:
            if deadline is not None and self._timer.when() == max(deadline, now):
                return  # armed for that already (most pumps: a datagram in, none due)
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = self.loop.call_at(max(deadline, now), self._on_timer)

    def _pump_hooks(self) -> None:
        """A phase change (drain, join, leave) for the notify hooks."""
        phase = self.node.phase()
        if phase != self._phase:
            self.hooks.fire(call_for_phase(self._phase, phase))
            self._phase = phase

    def _perform(self, event: ev.NodeEvent) -> None:
        """Queue an event for the kernel worker; events keep their order.

        One exception waits: when the data plane must stop forwarding buckets,
        the loop blocks until the kernel has done so, because the datagrams
        sent right after tell the other nodes they may start forwarding them.
        Announcing the release before the kernel let go would let two nodes
        forward the same connections for a moment."""
        done = self._kernel.submit(self._perform_in_worker, event)
        call = call_for_event(event)
        if call is not None:  # told once the kernel carried it out
            done.add_done_callback(lambda _: self.loop.call_soon_threadsafe(self.hooks.fire, call))
        if isinstance(event, ev.ActiveBucketsChanged) and event.removed:
            done.result()

    def _perform_in_worker(self, event: ev.NodeEvent) -> None:
        try:
            self._carry_out(event)
        except Exception:  # a kernel error must not stop later events silently
            self.counters["kernel_errors"] += 1
            log.exception("carrying out %s failed", type(event).__name__)

    def _carry_out(self, event: ev.NodeEvent) -> None:
        match event:
            case ev.InjectConnections():
                before = self.counters["injected"]
                attempts = injection_attempts(self.conntrack, event.conns, self.counters)
                problem = retrying("conntrack injection", attempts, self.counters)
                log.info("%s (%d written)", event.describe(), self.counters["injected"] - before)
                # A refusal of these entries only, or of every write? A node
                # whose kernel takes no entry must step back; one refused entry
                # must not: every node would refuse it, and step back in turn.
                if problem is not None and (probe := conntrack_probe(self.conntrack)):
                    self._step_back_soon("conntrack injection", f"{problem}; {probe}")
                elif problem is not None:
                    log.error("%s: the kernel takes other entries, so no step back", problem)
            case ev.InjectExpectations():
                done = self.conntrack.inject_expectations(list(event.exps))
                self.counters["injected_expectations"] += done
                log.info("%s (%d written)", event.describe(), done)
            case ev.ActiveBucketsChanged():
                self._wanted_active = event.active
                problem = retrying(
                    f"programming the {self.dataplane.name} data plane",
                    lambda: self.dataplane.set_owned_buckets(event.active, event.switches),
                    self.counters,
                )
                log.info("%s", event.describe())
                if problem is not None:
                    self._step_back_soon(f"{self.dataplane.name} programming", problem)
            case ev.DeleteConnections():
                # Not retried into a step back: an entry left behind is not
                # forwarded by a node that does not own its bucket (the owned
                # marks check), only kept until its timeout.
                done = self.conntrack.delete(list(event.conns)) if event.conns else 0
                self.counters["deleted"] += done
                log.info("%s (%d removed)", event.describe(), done)
            case ev.Ready():
                log.info("%s", event.describe())
                self.notifier.ready(event.describe())
            case ev.LeaveComplete():
                log.info("%s", event.describe())
                self.loop.call_soon_threadsafe(self._stop, "left")
            case (
                ev.OwnedBucketsChanged()
                | ev.NodeUp()
                | ev.NodeDown()
                | ev.PeerRefused()
                | ev.OutOfSync()
            ):
                log.info("%s", event.describe())  # the data plane follows ActiveBucketsChanged
            case _:
                assert_never(event)

    # -- the kernel refuses: step back, probe, return (kernel_guard.py) ------------

    def _step_back_soon(self, what: str, problem: str) -> None:
        """Worker thread: hand the verdict to the event loop."""
        self.loop.call_soon_threadsafe(self._kernel_refused, what, problem)

    def _kernel_refused(self, what: str, problem: str) -> None:
        now = self.loop.time()
        fault = self.kernel_guard.failed(what, problem, now)
        self._kernel_verdict(fault, now, "the kernel refuses our work: buckets to the others")

    def _check_kernel(self) -> None:
        """Periodic: a probe when one is due, a ruleset check every
        RULESET_RECHECK_S (RULESET_RECHECK_WATCHED_S with a watch)."""
        now = self.loop.time()
        if self.kernel_guard.probe_due(now):
            self._submit_unless_stopped(self._probe_in_worker)
        every = RULESET_RECHECK_S if self.ruleset_watch is None else RULESET_RECHECK_WATCHED_S
        if now - self._last_ruleset_check >= every:
            self._queue_ruleset_check()

    def _probe_in_worker(self) -> None:
        try:
            if self.dataplane.check() is not None:
                self.dataplane.install()
            self.dataplane.set_owned_buckets(self._wanted_active)
            problem = conntrack_probe(self.conntrack)
        except Exception as exc:  # any refusal keeps the node back
            problem = brief(f"{type(exc).__name__}: {exc}")
        self.loop.call_soon_threadsafe(self._probe_done, problem)

    def _probe_done(self, problem: str | None) -> None:
        now = self.loop.time()
        fault = self.kernel_guard.probe_result(problem, now)
        self._kernel_verdict(fault, now, "still stepped back")

    def _kernel_verdict(self, fault: str | None, now: float, what: str) -> None:
        if fault is None:
            log.info("the kernel takes the agent's work again: this node may own buckets")
        else:
            wait = self.kernel_guard.next_probe_in(now) or 0.0
            log.error("%s (next attempt in %.1fs): %s", what, wait, fault)
        self.set_fault("kernel", fault)
        self._pump()

    def _read_ruleset_watch(self) -> None:
        if self.ruleset_watch is not None and self.ruleset_watch.changed():
            self._queue_ruleset_check(RULESET_CHECK_DELAY_S)

    def _queue_ruleset_check(self, delay: float = 0.0) -> None:
        if self._ruleset_check_since is not None:
            return  # one is queued; it reads the kernel after this change too
        self._ruleset_check_since = self.loop.time()
        self.loop.call_later(delay, self._submit_unless_stopped, self._check_ruleset_in_worker)

    def _submit_unless_stopped(self, work: Callable[[], None]) -> None:
        if not self._stopped.done():  # the worker is shut down on the way out
            self._kernel.submit(work)

    def _check_ruleset_in_worker(self) -> None:
        """Compare the data plane with what was installed; restore it if it
        differs (someone flushed the ruleset). A restore that keeps failing
        steps the node back, as any refused kernel write does."""
        since = self._ruleset_check_since or self.loop.time()
        self._ruleset_check_since = None
        self._last_ruleset_check = self.loop.time()
        self.counters["ruleset_checks"] += 1
        try:
            missing = self.dataplane.check()
        except Exception as exc:  # nobody reads this thread's results: say it here
            missing = f"cannot check the data plane: {type(exc).__name__}: {exc}"
        if missing is None:
            return
        log.warning("%s: restoring it", missing)
        wanted = self._wanted_active

        def restore() -> None:
            self.dataplane.install()
            self.dataplane.set_owned_buckets(wanted)

        problem = retrying("restoring the data plane", restore, self.counters)
        if problem is not None:
            self._step_back_soon("restoring the data plane", problem)
            return
        took_ms = (self.loop.time() - since) * 1000.0
        self.counters["ruleset_restores"] += 1
        self.counters["ruleset_restore_last_ms"] = round(took_ms)
        log.warning("data plane restored %.0f ms after the change was seen", took_ms)
        if self.kernel_guard.fault is not None:
            self._probe_in_worker()  # the kernel took a write again: try it all now

    def _stop(self, reason: str) -> None:
        if not self._stopped.done():
            self._stopped.set_result(reason)

    # -- views for control and metrics --------------------------------------------

    def stats(self) -> dict[str, Any]:
        # The Node counts the entries it asks for (`injected`, `deleted`), this
        # runtime those the kernel took: both kept, under names that say which.
        stats = {REQUESTED.get(k, k): v for k, v in self.node.stats().items()}
        stats.update({WRITTEN.get(k, k): v for k, v in self.counters.items()})
        stats["sync_send_errors"] = self.sync.send_errors
        stats["zone_send_errors"] = sum(zs.send_errors for zs in self.zone_sockets)
        stats["zone_filtered"] = sum(sum(zs.filtered.values()) for zs in self.zone_sockets)
        stats["links_up"] = bool(self._links_up)
        stats["own_status_up"] = self.own_status.up
        stats["kernel_step_backs"] = self.kernel_guard.step_backs
        stats["kernel_probes_failed"] = self.kernel_guard.probes_failed
        stats["busy_reads_deferred"] = sum(r.deferred_drains for r in self._moderated)
        stats["ready"] = self.node.ready
        stats["stable"] = self.node.stable
        stats["members"] = len(self.node.members())
        stats["owned_buckets"] = len(self.node.owned_buckets())
        stats.update(self.hooks.stats())
        return stats

    async def status(self) -> dict[str, Any]:
        # The data plane's view is read with `nft` (processes, tens of ms under
        # load) or netlink: in a thread, never on the loop that sends the
        # heartbeats (at 16 lab nodes polled every 50 ms, reading it there
        # stalled every loop past the peers' timeout, issue 19), and not in
        # the kernel worker either, where a polling operator's reads would
        # queue ahead of writes the loop or a step back waits for.
        try:
            dataplane = await self.loop.run_in_executor(self._kernel_reads, self.dataplane.status)
        except Exception as exc:  # status must answer most when the kernel is in trouble
            dataplane = {"backend": self.dataplane.name, "error": f"{type(exc).__name__}: {exc}"}
        owners = self.node.bucket_owners()
        members = self.node.members()
        me = format_node_id(self.cfg.node_id)
        member_list = []
        for node_id, info in sorted(members.items()):
            name = format_node_id(node_id)
            member_list.append(
                {
                    "node": name,
                    "state": info.state.name.lower(),
                    "weight": info.weight,
                    "incarnation": info.incarnation,
                    "self": node_id == self.cfg.node_id,
                    "owned": sum(1 for o in owners if node_id in o),
                }
            )
        stats = self.stats()
        return {
            "node_id": me,
            "state": self.node.phase(),
            "backend": self.cfg.cluster.backend,
            "buckets": self.cfg.cluster.buckets,
            "ready": bool(stats.get("ready", False)),
            "stable": self.node.stable,
            "owned": sorted(self.node.owned_buckets()),
            "active": sorted(self.node.active_buckets()),
            "members": member_list,
            "owners": [sorted(format_node_id(n) for n in o) for o in owners],
            "sync": {k: v for k, v in stats.items() if isinstance(v, (int, float, bool))},
            "dataplane": dataplane,
            "faults": self.own_status.faults(),
            "weight_caps": self.own_status.weight_caps(),
            "health": self.health.status(),
        }

    def _control_handlers(self) -> dict[str, Any]:
        def drain(_req: Any) -> dict[str, Any]:
            if self._leaving:
                raise ControlError("the node is leaving")
            self.node.drain(self.loop.time())
            self._pump()
            return {"state": self.node.phase()}

        def join(_req: Any) -> dict[str, Any]:
            if self._leaving:
                raise ControlError("the node is leaving")
            self.node.undrain(self.loop.time())
            self._pump()
            return {"state": self.node.phase()}

        def leave(_req: Any) -> dict[str, Any]:
            self.request_leave()
            return {"state": self.node.phase()}

        def connections(_req: Any) -> dict[str, Any]:
            return self.node.connection_counts()

        return {
            "status": lambda _req: self.status(),
            "connections": connections,
            "drain": drain,
            "join": join,
            "leave": leave,
            **self.ops.handlers(),
        }
