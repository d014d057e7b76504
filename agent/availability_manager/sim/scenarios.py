"""Named simulator scenarios and the random "mixed" one.

Owns the fault schedules. A scenario boots its nodes, starts the workload
and schedules its faults on the cluster's clock, then returns the virtual time
at which its faults are over. The runner then heals everything and lets the
cluster settle (see `run.run_scenario`), so every scenario ends with
the convergence checks.

Node indexes are 0-based (0 = A = 192.0.2.1). Scenario lengths are chosen so
that 2000 mixed seeds run in a few minutes on two cores.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from functools import partial

from .runner import Cluster

BOOT_SPREAD = 0.03  # nodes of the initial cluster boot within 30 ms of each other
WORKLOAD_START = 0.3  # right after the first stable configuration (about 0.25 s)
ZONE_LINKS_SHARE = 0.25  # of the mixed runs, with zone links (heartbeats there too)


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    build: Callable[[Cluster, random.Random], float]
    rate: float = 30.0  # new connections per second (the batch scenario uses fewer: speed)
    # the same schedule for any cluster size (`--nodes N`); None: a fixed-size story
    sized: Callable[[Cluster, random.Random, int], float] | None = None
    min_nodes: int = 3  # the smallest size its schedule works with

    def with_nodes(self, nodes: int) -> Scenario:
        """This scenario at `nodes` nodes. Raises ValueError if it has a fixed size."""
        if self.sized is None:
            raise ValueError(f"scenario {self.name} has a fixed size: --nodes does not apply")
        if not self.min_nodes <= nodes <= MAX_NODES:
            raise ValueError(f"--nodes must be {self.min_nodes}..{MAX_NODES}, got {nodes}")
        sized = self.sized
        return dataclasses.replace(self, build=lambda cluster, rng: sized(cluster, rng, nodes))


MAX_NODES = 64  # node names and run time: 64 nodes run about 30 s of wall time per second


def _boot(cluster: Cluster, rng: random.Random, count: int) -> None:
    for index in range(count):
        cluster.scheduler.at(
            rng.random() * BOOT_SPREAD,
            partial(cluster.start_node, index),
        )
    cluster.scheduler.at(WORKLOAD_START, cluster.workload.start)


def _at(cluster: Cluster, when: float, action: Callable[[], object]) -> None:
    cluster.scheduler.at(when, action)


def failover3(cluster: Cluster, rng: random.Random) -> float:
    """The seed's table: 3 nodes stable, node 2 (B) dies, 1 and 3 take its range."""
    _boot(cluster, rng, 3)
    _at(cluster, 2.0 + rng.random() * 0.2, lambda: cluster.crash(1))
    return 3.0


def join(cluster: Cluster, rng: random.Random) -> float:
    """A 4th node joins a 3-node cluster under load."""
    _boot(cluster, rng, 3)
    _at(cluster, 2.0 + rng.random() * 0.2, lambda: cluster.start_node(3))
    return 3.0


def loss30(cluster: Cluster, rng: random.Random) -> float:
    """30 % loss on the sync network, with a crash and a restart during it."""
    _boot(cluster, rng, 3)
    _at(cluster, 1.5, lambda: cluster.set_loss(0.3, duplicate=0.02, jitter=0.002))
    _at(cluster, 2.2 + rng.random() * 0.3, lambda: cluster.crash(2))
    _at(cluster, 3.2 + rng.random() * 0.3, lambda: cluster.start_node(2))
    return 4.5


def sync_partition(cluster: Cluster, rng: random.Random) -> float:
    """The sync network splits (A | B C) while every node keeps forwarding; then heals."""
    _boot(cluster, rng, 3)
    _at(cluster, 1.5, lambda: cluster.partition_sync([[0], [1, 2]]))
    return 3.0 + rng.random() * 0.5


def sync_partition_zones(cluster: Cluster, rng: random.Random) -> float:
    """With zone links: the sync network splits (A | B C) for longer than the
    heartbeat timeout while the zone links stay up. The zone heartbeats keep
    everyone up, so nobody takes over anybody's buckets (zone-guard), then the
    streams repair or resync once the sync network heals."""
    cluster.add_zone_links()
    _boot(cluster, rng, 3)
    _at(cluster, 1.5, lambda: cluster.partition_sync([[0], [1, 2]]))
    return 2.5 + rng.random() * 0.5


# The long-partition scenario: a repair buffer of 64 payloads, outrun about
# ten times over by two seconds of traffic (the case: 25,000 payloads
# ahead of a 16,384-payload buffer).
LONG_PARTITION_BUFFER = 64
# What a node may do per simulated second after the heal. The table is the
# workload's (a few hundred entries): one full round per peer and direction
# is a few dozen datagrams; a storm (a round per datagram past the window)
# is thousands.
HEAL_LIMITS = {"resyncs": 6, "out_of_sync": 8, "resync_requests": 4, "datagrams_sealed": 400}


def long_sync_partition(cluster: Cluster, rng: random.Random) -> float:
    """With zone links: the sync network splits (A | B C) for seconds while
    the zone heartbeats keep A up, so A's stream runs far beyond what the
    others can repair. After the heal each receiver skips once and asks for
    one resync; the liveness rule bounds the work per simulated second."""
    cluster.add_zone_links()
    cluster.set_stream_buffer(LONG_PARTITION_BUFFER)
    _boot(cluster, rng, 3)
    heal_at = 3.5 + rng.random()
    _at(cluster, 1.5, lambda: cluster.partition_sync([[0], [1, 2]]))
    _at(cluster, heal_at, cluster.heal)
    cluster.watch_load(heal_at, 3, HEAL_LIMITS)
    return heal_at + 3.1


def hostile_claims(cluster: Cluster, rng: random.Random) -> float:
    """D, a member with the key, claims every bucket every heartbeat from
    1 s on, through a crash of B and the settle phase. Only the buckets it
    aims for (or held before) count as its own, so every honest owner keeps
    forwarding its aim (the forwarding rule) and the takeover of B's buckets
    goes to their aimed owners."""
    _boot(cluster, rng, 4)
    cluster.hostile_claims(3, 1.0, 9.0, 0.05)
    _at(cluster, 2.0 + rng.random() * 0.3, lambda: cluster.crash(1))
    return 3.0


def clock_step(cluster: Cluster, rng: random.Random) -> float:
    """B's clock steps back a minute and B restarts; then A's steps forward
    30 days and A restarts. Each new life starts its nonce counter above the
    earlier ones (the nonce rule: the state directory's reservation, not the
    clock) and the peers take it back (the assignment and forwarding rules:
    neither its counter nor its incarnation is refused as too old or as a
    jump)."""
    _boot(cluster, rng, 3)
    _at(cluster, 1.5, lambda: cluster.step_clock(1, -60.0))
    _at(cluster, 1.6 + rng.random() * 0.2, lambda: cluster.crash(1))
    _at(cluster, 2.0 + rng.random() * 0.2, lambda: cluster.start_node(1))
    _at(cluster, 3.0, lambda: cluster.step_clock(0, 30 * 86400.0))
    _at(cluster, 3.1 + rng.random() * 0.2, lambda: cluster.crash(0))
    _at(cluster, 3.5 + rng.random() * 0.2, lambda: cluster.start_node(0))
    return 4.5


def duplicate_node_id(cluster: Cluster, rng: random.Random) -> float:
    """A second process configured as B starts elsewhere while B runs (with a
    higher incarnation, as its own state directory gives it) and runs for
    2 s. It hears B while it listens before talking and stays silent (the
    duplicate rule); B is never taken for restarted, so nothing moves (the
    assignment and forwarding checks, and no failover gap)."""
    _boot(cluster, rng, 3)
    _at(cluster, 1.5 + rng.random() * 0.2, lambda: cluster.start_twin(1, until=3.5))
    return 4.0


def crash_during_resync(cluster: Cluster, rng: random.Random) -> float:
    """D joins and is being resynced when B crashes."""
    _boot(cluster, rng, 3)
    join_at = 2.0
    _at(cluster, join_at, lambda: cluster.start_node(3))
    # D is admitted after a few heartbeats; the resync follows at once.
    _at(cluster, join_at + 0.05 + rng.random() * 0.2, lambda: cluster.crash(1))
    return 3.2


def drain(cluster: Cluster, rng: random.Random) -> float:
    """B is drained (its buckets move, its connections keep flowing), checked, then undrained."""
    _boot(cluster, rng, 3)
    _at(cluster, 1.5, lambda: cluster.drain(1))
    # 2 s of quiet after the drain: the assignment check runs without B.
    _at(cluster, 4.0, lambda: cluster.undrain(1))
    return 4.2


def restart(cluster: Cluster, rng: random.Random) -> float:
    """B crashes and comes back with a new incarnation and a higher counter."""
    _boot(cluster, rng, 3)
    _at(cluster, 1.8, lambda: cluster.crash(1))
    _at(cluster, 2.3 + rng.random() * 0.4, lambda: cluster.start_node(1))
    return 3.0


def leave(cluster: Cluster, rng: random.Random) -> float:
    """C leaves gracefully: hands over its buckets, then stops."""
    _boot(cluster, rng, 3)
    _at(cluster, 1.8, lambda: cluster.leave(2))
    return 3.0


def isolate(cluster: Cluster, rng: random.Random) -> float:
    """A full partition: C loses both networks, then comes back."""
    _boot(cluster, rng, 3)
    _at(cluster, 1.6, lambda: cluster.isolate([2]))
    return 3.0 + rng.random() * 0.5


def link_down(cluster: Cluster, rng: random.Random) -> float:
    """B's data-plane links go down (its sync link stays up), then come back."""
    _boot(cluster, rng, 3)
    _at(cluster, 1.5, partial(cluster.set_links, 1, False))
    _at(cluster, 2.5 + rng.random() * 0.5, partial(cluster.set_links, 1, True))
    return 3.2


def status_flap(cluster: Cluster, rng: random.Random) -> float:
    """B's own status flaps: down and back up, again and again, each time for
    a random time from a few ms to longer than a handover; a failing health
    check (B's data plane still works) or a bouncing link. B must never
    forward a bucket a peer still forwards (the exclusive invariant)."""
    _boot(cluster, rng, 3)
    fault = cluster.set_health if rng.random() < 0.7 else cluster.set_links
    t = 1.5
    for _ in range(rng.randint(2, 4)):
        _at(cluster, t, partial(fault, 1, False))
        t += rng.choice((0.005, 0.02, 0.1, 0.3)) * (0.5 + rng.random())
        _at(cluster, t, partial(fault, 1, True))
        t += rng.random() * 1.5
    return t + 1.5


def step_back_in_handoff(cluster: Cluster, rng: random.Random) -> float:
    """B is drained, then undrained: A and C announce handoffs of its buckets
    to B, and before their instant B steps back (a health check, a link) for
    longer than the quiet period. The givers keep those buckets and must
    forward them again once the instant has passed (the forwarding check):
    their stop switches took them out of the data plane, and nothing else
    changes until B is back."""
    _boot(cluster, rng, 3)
    _at(cluster, 1.5, lambda: cluster.drain(1))
    _at(cluster, 3.5, lambda: cluster.undrain(1))
    fault = cluster.set_health if rng.random() < 0.5 else cluster.set_links
    down_at = 3.5 + 0.01 + rng.random() * 0.05  # within the 0.1 s handover delay
    _at(cluster, down_at, partial(fault, 1, False))
    if rng.random() < 0.5:  # and C crashes meanwhile (the lab's case: A alone is left)
        _at(cluster, down_at + rng.random() * 0.03, lambda: cluster.crash(2))
    _at(cluster, down_at + 2.6, partial(fault, 1, True))
    return down_at + 4.0


def stall(cluster: Cluster, rng: random.Random) -> float:
    """3-4 nodes under load; one node's agent stands still for 0.05-1.5 s
    (past the peers' timeout in most seeds: they take its buckets, its fence
    expires), and in a third of the seeds a second node's soon after. Back,
    it relearns its forwarding from the peers' claims: no bucket may be
    forwarded by two nodes at once (the exclusive invariant), and after the
    quiet period every bucket is owned as aimed."""
    count = rng.choice((3, 4))
    _boot(cluster, rng, count)
    first = rng.randrange(count)
    seconds = 0.05 + rng.random() * 1.45
    _at(cluster, 1.5, partial(cluster.stall, first, seconds))
    end = 1.5 + seconds
    if rng.random() < 1 / 3:
        second = (first + 1 + rng.randrange(count - 1)) % count
        at = 1.5 + rng.random() * (seconds + 0.5)
        more = 0.05 + rng.random() * 1.45
        _at(cluster, at, partial(cluster.stall, second, more))
        end = max(end, at + more)
    return end + 3.0


# -- the mixed random scenario --------------------------------------------------------


def mixed(cluster: Cluster, rng: random.Random, nodes: int | None = None) -> float:
    """3-5 nodes (or `nodes`), then 1-3 faults drawn at random, each on a running cluster."""
    count = rng.choice((3, 3, 3, 4, 4, 5))  # mostly small: 2000 seeds must stay fast
    if nodes is not None:
        count = nodes
    spare = max(6, count + 3)  # node indexes a join may use
    _boot(cluster, rng, count)
    running = set(range(count))  # indexes expected to be alive when the fault fires
    stopped: set[int] = set()
    t = 0.6
    for _ in range(rng.randint(1, 3)):
        t += 0.3 + rng.random() * 0.8
        kind = rng.choice(
            (
                "crash",
                "restart",
                "join",
                "loss",
                "sync-partition",
                "isolate",
                "drain",
                "leave",
                "link-down",
            )
        )
        if len(running) <= 2 and kind in ("crash", "isolate", "drain", "leave", "link-down"):
            kind = "join"
        victim = rng.choice(sorted(running))
        if kind == "crash":
            running.discard(victim)
            stopped.add(victim)
            _at(cluster, t, partial(cluster.crash, victim))
        elif kind == "restart":
            _at(cluster, t, partial(cluster.crash, victim))
            t += 0.1 + rng.random() * 0.6
            _at(cluster, t, partial(cluster.start_node, victim))
        elif kind == "join":
            fresh = next((i for i in range(spare) if i not in running and i not in stopped), spare)
            if fresh >= spare:
                continue
            running.add(fresh)
            _at(cluster, t, partial(cluster.start_node, fresh))
        elif kind == "loss":
            loss = rng.choice((0.05, 0.1, 0.3))
            _at(cluster, t, partial(cluster.set_loss, loss, 0.01, 0.002))
            t += 0.5 + rng.random()
            _at(cluster, t, lambda: cluster.set_loss(0.0))
        elif kind == "sync-partition":
            order = sorted(running)
            rng.shuffle(order)
            cut = rng.randint(1, len(order) - 1)
            groups = [order[:cut], order[cut:]]
            _at(cluster, t, partial(cluster.partition_sync, groups))
            t += 0.4 + rng.random() * 0.8
            _at(cluster, t, cluster.heal)
        elif kind == "isolate":
            _at(cluster, t, partial(cluster.isolate, [victim]))
            t += 0.4 + rng.random() * 0.8
            _at(cluster, t, cluster.heal)
        elif kind == "drain":
            _at(cluster, t, partial(cluster.drain, victim))
            t += 0.4 + rng.random() * 1.0
            _at(cluster, t, partial(cluster.undrain, victim))
        elif kind == "link-down":
            _at(cluster, t, partial(cluster.set_links, victim, False))
            t += 0.4 + rng.random() * 1.0
            _at(cluster, t, partial(cluster.set_links, victim, True))
        elif kind == "leave":
            running.discard(victim)
            stopped.add(victim)
            _at(cluster, t, partial(cluster.leave, victim))
    if rng.random() < ZONE_LINKS_SHARE:  # drawn last: the faults above stay as they were
        cluster.add_zone_links()
    return t + 0.3


def membership(cluster: Cluster, rng: random.Random, nodes: int) -> float:
    """`nodes` nodes, then one membership change after another, each on a
    settled cluster: a crash, a join of a fresh node, a drain and undrain, a
    graceful leave, a restart. Each acts on a different node; the order is
    drawn, so every seed tests another sequence."""
    _boot(cluster, rng, nodes)
    victims = rng.sample(range(nodes), 4)
    steps: list[tuple[str, int]] = [
        ("crash", victims[0]),
        ("join", nodes),
        ("drain", victims[1]),
        ("leave", victims[2]),
        ("restart", victims[3]),
    ]
    rng.shuffle(steps)
    t = 1.0 + nodes * 0.02  # a larger cluster boots a little longer
    for kind, index in steps:
        t += 0.6 + rng.random() * 0.4  # settled (well under 0.5 s) before the next
        if kind == "crash":
            _at(cluster, t, partial(cluster.crash, index))
        elif kind == "join":
            _at(cluster, t, partial(cluster.start_node, index))
        elif kind == "drain":
            _at(cluster, t, partial(cluster.drain, index))
            t += 0.5
            _at(cluster, t, partial(cluster.undrain, index))
        elif kind == "leave":
            _at(cluster, t, partial(cluster.leave, index))
        else:
            _at(cluster, t, partial(cluster.crash, index))
            t += 0.3
            _at(cluster, t, partial(cluster.start_node, index))
    if rng.random() < ZONE_LINKS_SHARE:
        cluster.add_zone_links()
    return t + 0.6


def _membership_at(nodes: int) -> Scenario:
    return Scenario(
        f"membership{nodes}",
        f"{nodes} nodes: crash, join, drain, leave, restart one after another",
        partial(membership, nodes=nodes),
        rate=20.0,
        sized=membership,
        min_nodes=5,  # four distinct victims, and two nodes left to take over
    )


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("failover3", "3 nodes stable, B crashes, A and C take its range", failover3),
        Scenario("join", "a 4th node joins a 3-node cluster under load", join),
        Scenario("loss30", "30% sync loss with a crash and a restart", loss30),
        Scenario("sync-partition", "sync network split A | B C, then healed", sync_partition),
        Scenario(
            "sync-partition-zones",
            "sync network split A | B C with the zone links up: nobody is taken for dead",
            sync_partition_zones,
        ),
        Scenario(
            "long-sync-partition",
            "sync network split for seconds with zone links up, then healed: no storm",
            long_sync_partition,
            rate=100.0,
        ),
        Scenario(
            "hostile-claims",
            "member D claims every bucket every heartbeat, B crashes: owners keep forwarding",
            hostile_claims,
        ),
        Scenario(
            "clock-step",
            "B restarts after a clock step back, A after one forward: no nonce reuse, rejoined",
            clock_step,
        ),
        Scenario(
            "duplicate-node-id",
            "a second process starts as B while B runs: it stays silent, nothing moves",
            duplicate_node_id,
        ),
        Scenario(
            "crash-during-resync", "B crashes while joining D is resynced", crash_during_resync
        ),
        Scenario("drain", "B drained, checked, undrained", drain),
        Scenario("restart", "B crashes and restarts with a new incarnation", restart),
        Scenario("leave", "C leaves gracefully and stops", leave),
        Scenario("isolate", "C cut from both networks, then back", isolate),
        Scenario("link-down", "B's data-plane links down, then up", link_down),
        Scenario("status-flap", "B's own status down and up again and again", status_flap),
        Scenario(
            "step-back-in-handoff",
            "B undrained, then steps back before the handoff instant: givers keep forwarding",
            step_back_in_handoff,
        ),
        Scenario(
            "stall",
            "an agent stands still 0.05-1.5 s (fence expires, peers take over), then relearns",
            stall,
        ),
        Scenario("mixed", "3-5 nodes and 1-3 random faults", mixed, rate=20.0, sized=mixed),
        _membership_at(8),
        _membership_at(16),
        _membership_at(32),
    )
}
