"""The simulator's driver: N `Node`s on one virtual clock.

Owns the simulated cluster: which nodes exist and are alive, their kernels,
the networks between them (the sync network, and the zone links where zone
heartbeats travel when a scenario adds them), the workload, the fault operations a scenario calls
(crash, restart, join, leave, drain, partitions, loss) and the wiring of every
act to the invariant checker. It is the second adapter of `Node` (the daemon
is the first) and does exactly what the daemon does: feed an input, perform
the node's events in order, broadcast its datagrams, re-arm its one timer.

Everything random comes from one seed: the network, the workload and every
node's `random.Random` are derived from it in a fixed order, so
`run_scenario(name, seed)` is a pure function and a failing seed replays.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from collections.abc import Callable, Mapping
from functools import partial
from typing import assert_never

from ..assignment import aimed_assignment
from ..connection import Connection
from ..crypto import Keyring
from ..daemon.state_dir import NONCE_BLOCK
from ..node import Destination
from ..node_config import NodeConfig
from ..node_events import (
    ActiveBucketsChanged,
    DeleteConnections,
    InjectConnections,
    InjectExpectations,
    LeaveComplete,
    NodeDown,
    NodeEvent,
    NodeUp,
    OutOfSync,
    OwnedBucketsChanged,
    PeerRefused,
    Ready,
)
from ..ranges import RangeDistribution
from ..types import ClusterSettings, NodeId
from .clock import Scheduler
from .invariants import Invariants, Violation
from .kernel import Kernel
from .names import node_address, node_name
from .network import LinkProfile, Network
from .variants import ObservedNode
from .workload import Workload, WorkloadProfile

_ADDRESS = re.compile(r"\b192\.0\.2\.(\d{1,3})\b")
QUIET_PERIOD = 2.0  # seconds without faults or membership change before convergence is due
QUIET_CHECK_EVERY = 0.25
MAX_SPINS = 10_000
TWIN_TICK = 0.005  # how often the simulated duplicate process looks at its timer
SYNC_LATENCY = 0.0002  # what a duplicate process adds to hear a datagram


@dataclasses.dataclass(frozen=True)
class SimOptions:
    buckets: int = 64
    # the range distribution the nodes run: variants.ImmediateRelease is known-bad
    ranges: type[RangeDistribution] = RangeDistribution
    drop_injections: bool = False  # known-bad variant: the driver never injects
    heartbeat_interval: float = 0.05
    heartbeat_misses: int = 3
    # Where a scenario adds zone links: do the nodes send their heartbeats
    # there too? False is the known-bad variant (the zone-guard breaks).
    zone_heartbeats: bool = True
    # Payloads each node keeps for repairs (NodeConfig.rb_buffer_size): the
    # long-partition scenario makes it small so that a partition of seconds
    # outruns it, as one of minutes does with the real size.
    rb_buffer_size: int = 16384
    # Make-before-break handovers (NodeConfig.handover_delay); 0.0 is the
    # known-bad variant for the seamless invariant (break-before-make: a gap)
    handover_delay: float = 0.1
    handover_quantum: float = 0.0  # the daemon's 1.0: switches on whole seconds


@dataclasses.dataclass
class SimNode:
    """One machine: a Node (None while down) and its kernel."""

    node_id: NodeId
    kernel: Kernel
    node: ObservedNode | None = None
    incarnation: int = 0
    isolated: bool = False  # fully partitioned: no sync and no data-plane traffic
    links_down: bool = False  # its own data-plane links are down (sync still works)
    health_down: bool = False  # a health check failed: a member no more, its data plane works
    draining: bool = False
    leaving: bool = False
    ready: bool = False
    stop_requested: bool = False
    spins: int = 0  # consecutive services that left the timer due
    timer_token: int = 0
    timer_at: float | None = None
    online_since: float | None = None  # on the zone links without a break since
    clock_offset: float = 0.0  # its wall clock minus the simulated time (a stepped clock)
    # Its host stopped running the agent at this time (Cluster.stall); what
    # reached it since waits in its sockets: (sync network?, datagram) or a
    # kernel event (kind, connection).
    stalled_since: float | None = None
    waiting: list[tuple[str, object]] = dataclasses.field(default_factory=list)
    # What its state directory holds (daemon/state_dir.py): the end of the
    # last nonce reservation; and the highest counter any life of it sealed.
    nonce_reserved: int = 0
    counter_used: int = 0

    @property
    def name(self) -> str:
        return node_name(self.node_id)

    @property
    def alive(self) -> bool:
        return self.node is not None

    @property
    def offline(self) -> bool:
        """Out of the data plane: packets neither reach it nor leave it."""
        return self.isolated or self.links_down


class Cluster:
    def __init__(
        self,
        seed: int,
        options: SimOptions | None = None,
        trace: Callable[[str], None] | None = None,
        workload: WorkloadProfile | None = None,
    ) -> None:
        self.seed = seed
        self.options = options or SimOptions()
        self._trace = trace
        master = random.Random(seed)
        self._node_rng_source = random.Random(master.getrandbits(64))
        self.scheduler = Scheduler()
        self.settings = ClusterSettings(
            buckets=self.options.buckets, hash_seed=master.getrandbits(32), backend="sim"
        )
        key = hashlib.blake2b(b"fwcluster-sim-key" + seed.to_bytes(8, "big"), digest_size=32)
        self.keyring = Keyring.single(key.digest())
        self.network = Network(self.scheduler, random.Random(master.getrandbits(64)), self._deliver)
        self.invariants = Invariants(self.options.buckets)
        self.workload = Workload(
            self.scheduler,
            random.Random(master.getrandbits(64)),
            self,
            self.options.buckets,
            self.settings.hash_seed,
            workload,
        )
        # Drawn last: the draws above are the same with or without zone links.
        self.zone_network = Network(
            self.scheduler, random.Random(master.getrandbits(64)), self._deliver_zone
        )
        self.zone_links = False  # see add_zone_links
        self.twins: dict[NodeId, ObservedNode] = {}  # see start_twin
        self.nodes: dict[NodeId, SimNode] = {}
        self.last_disturbance = 0.0
        # a fault other than a planned membership change (start, drain,
        # undrain, leave) happened: the seamless invariant stops applying
        self.faulted = False
        # the sync network lost, delayed or split datagrams: a peer may be
        # taken for dead while it forwards, so the exclusive invariant stops
        self.sync_faulted = False
        self._settle_since: float | None = None  # a membership change not settled yet
        self._quiet_checked_at = -1.0
        self.scheduler.after(QUIET_CHECK_EVERY, self._quiet_tick)

    # -- tracing ---------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.scheduler.now

    def log(self, who: str, text: str) -> None:
        if self._trace is not None:
            # Node events name peers by address; the trace uses the letters.
            text = _ADDRESS.sub(lambda m: node_name(node_address(int(m.group(1)) - 1)), text)
            self._trace(f"{self.now * 1000:9.1f}ms  {who:<3} {text}")

    def disturb(self, what: str, membership: bool | None = False) -> None:
        """A fault or membership change: convergence checks wait QUIET_PERIOD from now.
        A membership change starts a settle measurement, any other fault voids
        it; None (the end of a change already counted) leaves it running."""
        self.last_disturbance = self.now
        if membership is not None:
            self._settle_since = self.now if membership else None
        self.log("sim", what)

    def add_zone_links(self) -> None:
        """Before any node starts: the nodes also share zone links (their data
        networks), which carry a copy of every heartbeat (NodeConfig.zone_heartbeats).
        A sync-only partition then takes nobody for dead. A node is on the
        zone links while it is alive, its links are up and it is not isolated."""
        if self.nodes:
            raise RuntimeError("zone links must be added before the first node starts")
        self.zone_links = True

    def set_stream_buffer(self, payloads: int) -> None:
        """Before any node starts: the repair buffer of every node's stream."""
        if self.nodes:
            raise RuntimeError("the stream buffer must be set before the first node starts")
        self.options = dataclasses.replace(self.options, rb_buffer_size=payloads)

    def watch_load(self, start: float, seconds: int, limits: Mapping[str, int]) -> None:
        """The liveness rule after a heal (invariants.py): from `start`, in
        every simulated second, no live node's counters in `limits` grow by
        more than the limit (datagrams sent, resync rounds started...)."""
        before: dict[NodeId, dict[str, int]] = {}

        def snapshot() -> dict[NodeId, dict[str, int]]:
            return {s.node_id: s.node.stats() for s in self.nodes.values() if s.node is not None}

        def check(second: int) -> None:
            now = snapshot()
            for node_id, stats in now.items():
                old = before.get(node_id)
                if old is None:
                    continue
                for name, limit in limits.items():
                    grew = stats.get(name, 0) - old.get(name, 0)
                    self.invariants.load_checked(node_id, name, grew, limit, second, self.now)
            before.clear()
            before.update(now)
            if second < seconds:
                self.scheduler.at(self.now + 1.0, partial(check, second + 1))

        def first() -> None:
            before.update(snapshot())
            self.scheduler.at(self.now + 1.0, partial(check, 1))

        self.scheduler.at(start, first)

    def step_clock(self, index: int, seconds: float) -> None:
        """Node `index`'s wall clock steps by `seconds` (NTP, a bad RTC): seen
        at its next start (the protocol runs on monotonic time)."""
        sim = self.nodes[node_address(index)]
        sim.clock_offset += seconds
        self.log("sim", f"{sim.name}'s clock steps {seconds:+.0f} s")

    def start_twin(self, index: int, until: float) -> None:
        """A second process configured as node `index` starts on another
        machine (its own state directory: a higher incarnation, its own
        counter) and runs until `until`. It hears the sync network; what it
        sends would reach every other node. The rule 'duplicate' fails if it
        ever sends, claims or becomes ready."""
        node_id = node_address(index)
        real = self.nodes[node_id]
        config = NodeConfig(
            node_id=node_id,
            settings=self.settings,
            keyring=self.keyring,
            incarnation=real.incarnation + 1000,
            initial_counter=int(self.now * 1_000_000) + 10**12,
            heartbeat_interval=self.options.heartbeat_interval,
            heartbeat_misses=self.options.heartbeat_misses,
            rb_buffer_size=self.options.rb_buffer_size,
        )
        twin = ObservedNode(
            config,
            random.Random(self._node_rng_source.getrandbits(64)),
            self.now,
            invariants=Invariants(self.options.buckets),  # its view is not the cluster's
            clock=lambda: self.now,
        )
        self.twins[node_id] = twin
        self.log("sim", f"a second process starts as {real.name}")

        def tick() -> None:
            if node_id not in self.twins:
                return
            deadline = twin.next_timer()
            if deadline is not None and deadline <= self.now:
                twin.handle_timer(self.now)
            self._twin_speaks(node_id, twin)
            if self.now + TWIN_TICK <= until:
                self.scheduler.after(TWIN_TICK, tick)
            else:
                del self.twins[node_id]

        self.scheduler.after(0.0, tick)

    def _twin_hears(self, node_id: NodeId, twin: ObservedNode, datagram: bytes) -> None:
        if self.twins.get(node_id) is twin:
            twin.receive_datagram(datagram, self.now)
            self._twin_speaks(node_id, twin)

    def _twin_speaks(self, node_id: NodeId, twin: ObservedNode) -> None:
        while (event := twin.next_event()) is not None:
            if isinstance(event, (Ready, OwnedBucketsChanged)):
                self.invariants.duplicate_acted(node_id, type(event).__name__, self.now)
        for datagram, _ in twin.datagrams_to_send(self.now):
            self.invariants.duplicate_acted(node_id, "sent a datagram", self.now)
            self.network.broadcast(node_id, datagram)

    def hostile_claims(self, index: int, start: float, until: float, every: float) -> None:
        """From `start` to `until`, node `index` also broadcasts a claim of
        every bucket on the sync network every `every` seconds (a member
        with the key gone bad; not a disturbance: the checks run under it)."""

        def send() -> None:
            sim = self.nodes.get(node_address(index))
            if sim is not None and sim.node is not None:
                self.network.broadcast(sim.node_id, sim.node.forge_claim_of_everything())
            if self.now + every <= until:
                self.scheduler.after(every, send)

        self.scheduler.at(start, send)

    # -- membership operations -----------------------------------------------------------

    def start_node(self, index: int, weight: int = 1) -> SimNode:
        """Boot node `index` (a join if the cluster already runs, a restart if it existed)."""
        node_id = node_address(index)
        sim = self.nodes.get(node_id)
        if sim is None:
            sim = SimNode(node_id, Kernel(node_id))
            self.nodes[node_id] = sim
        elif sim.alive:
            raise RuntimeError(f"node {sim.name} is already running")
        else:
            sim.kernel = Kernel(node_id)  # a rebooted machine starts with an empty table
        sim.kernel.drop_injections = self.options.drop_injections
        sim.incarnation += 1
        sim.isolated = sim.links_down = sim.health_down = sim.draining = sim.leaving = False
        sim.ready = sim.stop_requested = False
        # As the daemon does (state_dir.py): the counter starts above the last
        # reservation, with the wall clock in microseconds as a floor, so a
        # restart after the clock stepped back never reuses a nonce.
        clock_us = max(int((self.now + sim.clock_offset) * 1_000_000) + 1, 0)
        initial_counter = max(sim.nonce_reserved, clock_us)
        sim.nonce_reserved = initial_counter + NONCE_BLOCK
        self.invariants.life_started(sim.node_id, initial_counter, sim.counter_used, self.now)
        config = NodeConfig(
            node_id=node_id,
            settings=self.settings,
            keyring=self.keyring,
            incarnation=sim.incarnation,
            initial_counter=initial_counter,
            heartbeat_interval=self.options.heartbeat_interval,
            heartbeat_misses=self.options.heartbeat_misses,
            weight=weight,
            zone_heartbeats=self.zone_links and self.options.zone_heartbeats,
            rb_buffer_size=self.options.rb_buffer_size,
            handover_delay=self.options.handover_delay,
            handover_quantum=self.options.handover_quantum,
        )
        rng = random.Random(self._node_rng_source.getrandbits(64))
        sim.node = ObservedNode(
            config,
            rng,
            self.now,
            invariants=self.invariants,
            clock=lambda: self.now,
            ranges=self.options.ranges,
        )
        self.invariants.forget_node(node_id)
        self.network.attach(node_id)
        self.zone_network.attach(node_id)
        sim.online_since = self.now
        self.disturb(f"start {sim.name} (incarnation {sim.incarnation})", membership=True)
        self._service(sim)
        return sim

    def crash(self, index: int) -> None:
        """The machine dies: its Node, its kernel table and its in-flight datagrams vanish."""
        self.faulted = True
        sim = self.nodes[node_address(index)]
        if sim.node is None:
            return
        sim.counter_used = max(sim.counter_used, sim.node.send_counter)
        self.disturb(f"crash {sim.name}", membership=True)
        self._count_unsynced(sim)
        self._detach(sim)
        if not sim.offline:
            self.invariants.node_gone(sim.node_id, sim.kernel.owned, self.now, graceful=False)
        sim.node = None
        sim.kernel = Kernel(sim.node_id)
        sim.timer_token += 1
        sim.timer_at = None
        sim.stalled_since, sim.waiting = None, []

    def stall(self, index: int, seconds: float) -> None:
        """The node's host stops running its agent for `seconds` (SIGSTOP, CPU
        starvation): no timer fires and nothing is read; datagrams and kernel
        events wait in its sockets. Its data plane forwards until the fence
        expires, `misses - 0.5` intervals after its last heartbeat
        (daemon/config.py fence_timeout). Back, it is told of the stall first
        (as the runtime's _clock does), then reads what waited; its fence
        stays down while the Node relearns its forwarding and rises with the
        next heartbeat after that (runtime._keep_fence_up)."""
        self.faulted = True
        sim = self.nodes[node_address(index)]
        if sim.node is None or sim.stalled_since is not None:
            return
        self.disturb(f"stall {sim.name} for {seconds * 1000:.0f} ms")
        sim.stalled_since = self.now
        sent = sim.node.last_heartbeat_sent
        sim.kernel.fenced_at = (self.now if sent is None else sent) + self._fence_timeout()
        self.scheduler.at(max(self.now, sim.kernel.fenced_at), self._check_seamless)
        sim.timer_token += 1  # its timer does not fire while it stands still
        sim.timer_at = None
        self.scheduler.after(seconds, partial(self._resume, sim))

    def _resume(self, sim: SimNode) -> None:
        node, since = sim.node, sim.stalled_since
        if node is None or since is None:
            return
        sim.stalled_since = None
        self.disturb(f"{sim.name} runs again")
        node.host_stalled(since, self.now)
        waiting, sim.waiting = sim.waiting, []
        for kind, item in waiting:
            if kind in ("sync", "zones"):
                via = Destination.SYNC if kind == "sync" else Destination.ZONES
                node.receive_datagram(item, self.now, via=via)  # type: ignore[arg-type]
            else:
                self.report(sim.node_id, kind, item)  # type: ignore[arg-type]
        self._service(sim)

    def _lift_fence(self, sim: SimNode) -> None:
        """After a stall: up again with the first heartbeat sent once the
        Node no longer relearns (runtime._fence_may_rise)."""
        node, kernel = sim.node, sim.kernel
        if node is None or kernel.fenced_at is None or node.relearning:
            return
        sent = node.last_heartbeat_sent
        # any heartbeat after the last one before the stall refreshes it (a
        # stall shorter than the fence leaves no gap, as in the runtime)
        if sent is not None and sent > kernel.fenced_at - self._fence_timeout():
            kernel.fenced_at = None
            self._check_seamless()

    def leave(self, index: int) -> None:
        sim = self.nodes[node_address(index)]
        if sim.node is None:
            return
        sim.leaving = True
        self.disturb(f"leave {sim.name}", membership=True)
        sim.node.leave(self.now)
        self._service(sim)

    def drain(self, index: int) -> None:
        sim = self.nodes[node_address(index)]
        if sim.node is None:
            return
        sim.draining = True
        self.disturb(f"drain {sim.name}", membership=True)
        sim.node.drain(self.now)
        self._service(sim)

    def undrain(self, index: int) -> None:
        sim = self.nodes[node_address(index)]
        if sim.node is None:
            return
        sim.draining = False
        self.disturb(f"undrain {sim.name}", membership=True)
        sim.node.undrain(self.now)
        self._service(sim)

    def _stop_after_leave(self, sim: SimNode) -> None:
        if sim.node is None:
            return
        self.disturb(f"stop {sim.name} after its leave", membership=None)
        self._detach(sim)
        if not sim.offline:
            self.invariants.node_gone(sim.node_id, sim.kernel.owned, self.now, graceful=True)
        sim.counter_used = max(sim.counter_used, sim.node.send_counter)
        sim.node = None
        sim.kernel = Kernel(sim.node_id)
        sim.timer_token += 1
        sim.timer_at = None
        sim.stalled_since, sim.waiting = None, []

    def _detach(self, sim: SimNode) -> None:
        self.network.detach(sim.node_id)
        self.zone_network.detach(sim.node_id)
        sim.online_since = None

    # -- network faults -------------------------------------------------------------------

    def set_loss(self, loss: float, duplicate: float = 0.0, jitter: float = 0.0001) -> None:
        self.faulted = True
        self.sync_faulted = self.sync_faulted or loss > 0.0
        self.disturb(f"network loss {loss:.0%} duplicate {duplicate:.0%}")
        self.network.set_default(LinkProfile(loss=loss, duplicate=duplicate, jitter=jitter))

    def partition_sync(self, groups: list[list[int]]) -> None:
        """Split the sync network only: every node keeps its data-plane traffic."""
        self.faulted = self.sync_faulted = True
        names = " | ".join("".join(node_name(node_address(i)) for i in g) for g in groups)
        self.disturb(f"sync network partitioned: {names}")
        self.network.partition([[node_address(i) for i in g] for g in groups])

    def isolate(self, indexes: list[int]) -> None:
        """Cut these nodes from both the sync network and the data plane."""
        self.faulted = self.sync_faulted = True
        group = [node_address(i) for i in indexes]
        self.disturb(f"isolate {''.join(node_name(n) for n in group)} (sync and data plane)")
        self.network.partition([group])
        for node_id in group:
            sim = self.nodes.get(node_id)
            if sim is not None and sim.alive and not sim.isolated:
                was_offline = sim.offline
                sim.isolated = True
                sim.online_since = None
                if was_offline:
                    continue
                self._count_unsynced(sim)
                self.invariants.node_gone(node_id, sim.kernel.owned, self.now, graceful=False)

    def set_links(self, index: int, up: bool) -> None:
        """The node's own data-plane links go down (or come back): it tells its
        Node, which tells the peers; the sync network still works."""
        self.faulted = True
        sim = self.nodes[node_address(index)]
        if sim.node is None or sim.links_down == (not up):
            return
        self.disturb(f"{sim.name}'s links {'up' if up else 'down'}")
        if not up:
            if not sim.offline:
                self._count_unsynced(sim)
                self.invariants.node_gone(sim.node_id, sim.kernel.owned, self.now, graceful=False)
            sim.links_down = True
            sim.online_since = None
        else:
            sim.links_down = False
            if not sim.offline:
                sim.online_since = self.now
                self.invariants.node_back(sim.node_id, sim.kernel.owned, self.now)
        sim.node.set_link_status(up, self.now)
        self._service(sim)

    def set_health(self, index: int, ok: bool) -> None:
        """The node's own status goes down (or back up) for a reason that
        leaves its data plane working: a failed health check or next hop.
        Packets still reach it, so whatever it forwards counts."""
        self.faulted = True
        sim = self.nodes[node_address(index)]
        if sim.node is None:
            return
        self.disturb(f"{sim.name}'s health {'ok' if ok else 'failed'}")
        sim.health_down = not ok
        sim.node.set_link_status(ok, self.now)
        self._service(sim)

    def heal(self) -> None:
        if not (self.network.faulty() or any(s.offline for s in self.nodes.values())):
            return  # nothing to heal: not a disturbance
        self.disturb("network healed")
        self.network.heal()
        self.network.set_default(LinkProfile())
        self.network.clear_links()
        for sim in self.nodes.values():
            if sim.offline:
                sim.isolated = False
                if sim.links_down and sim.node is not None:
                    sim.links_down = False
                    sim.node.set_link_status(True, self.now)
                    self._service(sim)
                sim.links_down = False
                if sim.alive:
                    sim.online_since = self.now
                    self.invariants.node_back(sim.node_id, sim.kernel.owned, self.now)

    # -- the workload's view (workload.Host) ------------------------------------------------------

    def dataplane_kernels(self) -> list[Kernel]:
        now = self.now
        return [
            s.kernel
            for s in self.nodes.values()
            if s.alive and not s.offline and not s.kernel.fenced(now)
        ]

    def report(self, node: NodeId, kind: str, conn: Connection) -> None:
        sim = self.nodes[node]
        if sim.node is None:
            return
        if sim.stalled_since is not None:
            sim.waiting.append((kind, conn))
            return
        if kind == "new":
            sim.node.connection_new(conn, self.now)
        elif kind == "update":
            sim.node.connection_update(conn, self.now)
        else:
            sim.node.connection_destroy(conn, self.now)
        self._service(sim)

    def hole(self, bucket: int) -> None:
        self.invariants.hole_seen_by_new(bucket)

    # -- driving the nodes -------------------------------------------------------------------

    def _deliver(self, receiver: NodeId, sender: NodeId, datagram: bytes) -> None:
        sim = self.nodes.get(receiver)
        if sim is None or sim.node is None:
            return
        if sim.stalled_since is not None:
            sim.waiting.append(("sync", datagram))
            return
        sim.node.receive_datagram(datagram, self.now)
        self._service(sim)

    def _deliver_zone(self, receiver: NodeId, sender: NodeId, datagram: bytes) -> None:
        sim = self.nodes.get(receiver)
        if sim is not None and not sim.offline and sim.node is not None:  # zone links up
            if sim.stalled_since is not None:
                sim.waiting.append(("zones", datagram))
                return
            sim.node.receive_datagram(datagram, self.now, via=Destination.ZONES)
            self._service(sim)

    def _zone_heard_for(self, viewer: SimNode, peer: NodeId) -> float:
        """How long viewer and peer have both been on the zone links (0: not now)."""
        other = self.nodes.get(peer)
        if not self.zone_links or other is None:
            return 0.0
        if viewer.online_since is None or other.online_since is None:
            return 0.0
        return self.now - max(viewer.online_since, other.online_since)

    def _fence_timeout(self) -> float:
        """The data plane's fence after the last heartbeat (config.fence_timeout)."""
        return self.options.heartbeat_interval * (self.options.heartbeat_misses - 0.5)

    def _peer_timeout(self) -> float:
        """A bound on the nodes' heartbeat timeout (misses, tolerance, delivery)."""
        return self.options.heartbeat_interval * (self.options.heartbeat_misses + 1) + 0.01

    def _timer(self, sim: SimNode, token: int) -> Callable[[], None]:
        def fire() -> None:
            if token != sim.timer_token or sim.node is None:
                return
            sim.timer_at = None
            deadline = sim.node.next_timer()
            if deadline is not None and deadline <= self.now:
                sim.node.handle_timer(self.now)
            self._service(sim)

        return fire

    def _service(self, sim: SimNode) -> None:
        """After any input: perform the node's events, send its datagrams, re-arm its timer."""
        node = sim.node
        if node is None or sim.stalled_since is not None:
            return
        now = self.now
        claimed_now: set[int] = set()
        while (event := node.next_event()) is not None:
            self._perform(sim, event, claimed_now)
        if claimed_now and not sim.offline:
            self.invariants.check_injection(
                sim.node_id,
                frozenset(claimed_now),
                self.workload.live.values(),
                node.known_keys(),
                sim.kernel.table,
                now,
            )
        for datagram, destination in node.datagrams_to_send(now):
            match destination:
                case Destination.SYNC:
                    self.network.broadcast(sim.node_id, datagram)
                    for twin_id, twin in self.twins.items():  # it hears every sender
                        self.scheduler.after(
                            SYNC_LATENCY, partial(self._twin_hears, twin_id, twin, datagram)
                        )
                case Destination.ZONES:
                    if not sim.offline:
                        self.zone_network.broadcast(sim.node_id, datagram)
                case _:
                    assert_never(destination)
        if sim.kernel.fenced_at is not None:
            self._lift_fence(sim)
        if self._settle_since is not None:
            self._check_settled()
        if sim.stop_requested:
            self._stop_after_leave(sim)  # after its last datagrams went out
            return
        deadline = node.next_timer()
        if deadline is not None and deadline <= now:
            # A timer that stays due after being handled would spin forever at
            # one instant: a livelock of the node, reported, then slowed down.
            sim.spins += 1
            if sim.spins > MAX_SPINS:
                if sim.spins == MAX_SPINS + 1:
                    self.invariants.fail(now, "livelock", f"node {sim.name}'s timer stays due")
                deadline = now + 0.001
        else:
            sim.spins = 0
        if deadline is not None and (sim.timer_at is None or deadline < sim.timer_at):
            sim.timer_token += 1
            sim.timer_at = deadline
            self.scheduler.at(deadline, self._timer(sim, sim.timer_token))

    def _perform(self, sim: SimNode, event: NodeEvent, claimed_now: set[int]) -> None:
        now = self.now
        self.log(sim.name, event.describe())
        match event:
            case InjectConnections():
                sim.kernel.inject(event, now)
            case OwnedBucketsChanged():
                claimed, released = sim.kernel.program(event, now)
                claimed_now.update(claimed)
                if not sim.offline:
                    self.invariants.programmed(sim.node_id, claimed, released, now)
            case DeleteConnections():
                sim.kernel.delete(event)
            case ActiveBucketsChanged():
                self._activate(sim, event)
            case Ready():
                sim.ready = True
            case LeaveComplete():
                sim.stop_requested = True
            case NodeDown():
                if event.reason == "timeout" and self.zone_links:
                    self.invariants.peer_timed_out(
                        sim.node_id,
                        event.node,
                        self._zone_heard_for(sim, event.node),
                        self._peer_timeout(),
                        now,
                    )
            case InjectExpectations() | NodeUp() | PeerRefused() | OutOfSync():
                pass  # the simulated kernel keeps no expectations; the rest is news
            case _:
                assert_never(event)

    def _activate(self, sim: SimNode, event: ActiveBucketsChanged) -> None:
        added = sim.kernel.set_active(event)
        self._check_seamless()
        for switch in event.switches:
            if switch.at > self.now:
                self.scheduler.at(switch.at, self._check_seamless)
        if not sim.offline:
            others = [
                s.kernel.active
                for s in self.nodes.values()
                if s is not sim and s.alive and not s.offline
            ]
            self.invariants.report.double_forwarding += sum(
                1 for b in added if any(b in other for other in others)
            )

    def _check_seamless(self) -> None:
        """The seamless and exclusive invariants (invariants.py), at every
        programming and at every switch time: the only instants the
        forwarding can change."""
        if self.sync_faulted or not self.invariants.armed:
            return
        now = self.now
        kernels = [
            (s.node_id, s.kernel)
            for s in self.nodes.values()
            if s.alive and not s.offline and not s.kernel.fenced(now)
        ]
        forwarders = [
            frozenset(n for n, k in kernels if k.forwards(b, now))
            for b in range(self.options.buckets)
        ]
        if self.faulted:
            self.invariants.check_exclusive(forwarders, now)
        else:
            self.invariants.check_seamless(forwarders, now)

    def _count_unsynced(self, sim: SimNode) -> None:
        """Report-only: connections of a dying node that no other live node knows."""
        survivors = [
            s for s in self.nodes.values() if s.node is not None and s is not sim and not s.offline
        ]
        known: set[bytes] = set()
        held: set[bytes] = set()
        for s in survivors:
            assert s.node is not None
            known |= s.node.known_keys()
            held |= s.kernel.table.keys()
        for key in sim.kernel.table:
            if key in self.workload.live and key not in held and key not in known:
                self.invariants.report.unsynced_at_crash += 1

    # -- convergence checks ------------------------------------------------------------------

    def active_members(self) -> dict[NodeId, int]:
        """The live, reachable, healthy, non-draining, non-leaving nodes and
        their weights."""
        out: dict[NodeId, int] = {}
        for s in self.nodes.values():
            if s.node is not None and not (s.offline or s.health_down or s.draining or s.leaving):
                out[s.node_id] = s.node.config.weight
        return out

    def quiet(self) -> bool:
        return (
            self.now - self.last_disturbance >= QUIET_PERIOD
            and not self.network.faulty()
            and bool(self.active_members())
        )

    def _quiet_tick(self) -> None:
        if self.quiet() and self._quiet_checked_at < self.last_disturbance:
            self._quiet_checked_at = self.now
            self.check_assignment()
        self.scheduler.after(QUIET_CHECK_EVERY, self._quiet_tick)

    def _check_settled(self) -> None:
        """Record the settle time once every live node is stable, forwards all
        it owns, and the programmed buckets are exactly the aimed ones."""
        assert self._settle_since is not None
        live = [s for s in self.nodes.values() if s.node is not None and not s.offline]
        if not live or self.network.faulty():
            return
        for s in live:
            assert s.node is not None
            if not s.node.stable or s.node.active_buckets() != s.node.owned_buckets():
                return
        aimed = aimed_buckets(self.active_members(), self.settings)
        for s in live:
            mine = {b for b, owner in aimed.items() if owner == s.node_id}
            if s.kernel.owned != mine:
                return
        self.invariants.report.settle_times.append(self.now - self._settle_since)
        self.log("sim", f"settled {(self.now - self._settle_since) * 1000:.0f} ms after the change")
        self._settle_since = None

    def check_assignment(self) -> None:
        aimed = aimed_buckets(self.active_members(), self.settings)
        programmed = {
            s.node_id: s.kernel.owned
            for s in self.nodes.values()
            if s.node is not None and not s.offline
        }
        self.invariants.check_assignment(programmed, aimed, self.now)
        active = {
            s.node_id: s.kernel.active
            for s in self.nodes.values()
            if s.node is not None and not s.offline
        }
        self.invariants.check_forwarding(active, aimed, self.now)

    def check_caches(self) -> None:
        live = [s for s in self.nodes.values() if s.node is not None and not s.offline]
        caches = {}
        tables = {s.node_id: dict(s.kernel.table) for s in live}
        for viewer in live:
            assert viewer.node is not None
            for peer in live:
                if peer is not viewer:
                    caches[(viewer.node_id, peer.node_id)] = viewer.node.peer_cache(peer.node_id)
        self.invariants.check_caches(caches, tables, self.now)

    # -- running ------------------------------------------------------------------------------

    def run_until(self, end: float) -> None:
        self.scheduler.run_until(end)

    def violations(self) -> list[Violation]:
        return self.invariants.violations

    def counters(self) -> dict[str, int]:
        """Totals for reports: workload, network, kernels and every node's stats."""
        out: dict[str, int] = {}
        for name, value in dataclasses.asdict(self.workload.stats).items():
            if isinstance(value, int):
                out[f"workload_{name}"] = value
        for name, value in dataclasses.asdict(self.network.stats).items():
            out[f"network_{name}"] = value
        if self.zone_links:
            for name, value in dataclasses.asdict(self.zone_network.stats).items():
                out[f"zone_network_{name}"] = value
        for s in self.nodes.values():
            for name, value in dataclasses.asdict(s.kernel.stats).items():
                out[f"kernel_{name}"] = out.get(f"kernel_{name}", 0) + value
            if s.node is not None:
                for name, value in s.node.stats().items():
                    out[f"node_{name}"] = out.get(f"node_{name}", 0) + value
        return out


def aimed_buckets(members: dict[NodeId, int], settings: ClusterSettings) -> dict[int, NodeId]:
    """bucket -> node, as every node should compute it for `members`."""
    owners = aimed_assignment(members, settings.buckets, settings.hash_seed)
    return dict(enumerate(owners))
