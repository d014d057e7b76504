"""The deterministic cluster simulator: scenarios pass, known-bad variants are
caught, replays are exact, and the invariant checker itself bites."""

from __future__ import annotations

import random

import pytest

from availability_manager.connection import PROTO_TCP, Connection, make_tuple
from availability_manager.node import Node
from availability_manager.sim.__main__ import main
from availability_manager.sim.clock import Scheduler
from availability_manager.sim.invariants import Invariants
from availability_manager.sim.names import node_address, node_name
from availability_manager.sim.network import LinkProfile, Network
from availability_manager.sim.run import run_scenario
from availability_manager.sim.runner import SimOptions
from availability_manager.sim.scenarios import SCENARIOS
from availability_manager.sim.variants import ImmediateRelease

pytestmark = pytest.mark.sim

NAMED = [
    "failover3",
    "join",
    "loss30",
    "sync-partition",
    "sync-partition-zones",
    "crash-during-resync",
    "drain",
    "restart",
    "leave",
    "isolate",
    "link-down",
    "status-flap",
    "membership8",
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("scenario", NAMED)
def test_named_scenario_passes(scenario: str, seed: int) -> None:
    result = run_scenario(scenario, seed)
    assert result.ok, result.describe_failure()
    # The convergence checks really ran (a run that skipped them proves nothing).
    assert result.report.assignment_checks >= 1
    assert result.report.cache_checks == 1
    assert result.counters["workload_created"] > 20


def test_failover3_takes_over_within_the_detection_time() -> None:
    result = run_scenario("failover3", 0)
    assert result.ok, result.describe_failure()
    assert result.report.failover_gaps > 0  # B's buckets were unowned for a while...
    assert 0.1 < result.report.max_gap < 0.25  # ...about 3 heartbeats of 50 ms
    assert result.counters["kernel_injected"] > 0


def test_a_small_random_batch_passes() -> None:
    results = [run_scenario("mixed", seed) for seed in range(12)]
    failures = [r.describe_failure() for r in results if not r.ok]
    assert not failures, "\n".join(failures)
    assert sum(r.report.injection_checks for r in results) > 12


def test_replay_of_a_seed_is_identical() -> None:
    first: list[str] = []
    second: list[str] = []
    run_scenario("mixed", 7, trace=first.append)
    run_scenario("mixed", 7, trace=second.append)
    assert len(first) > 20
    assert first == second
    other: list[str] = []
    run_scenario("mixed", 8, trace=other.append)
    assert other != first


def test_known_bad_immediate_release_opens_holes() -> None:
    """ImmediateRelease drops buckets before anyone claims them."""
    rules = {
        v.rule
        for seed in range(4)
        for v in run_scenario("join", seed, options=SimOptions(ranges=ImmediateRelease)).violations
    }
    assert "hole" in rules


def test_zone_heartbeats_keep_everyone_up_through_a_sync_only_partition() -> None:
    """The split-brain guard: over the zone links nobody times anybody out,
    so nothing moves; the sync partition without zone links does take over."""
    guarded = run_scenario("sync-partition-zones", 0)
    assert guarded.ok, guarded.describe_failure()
    assert guarded.counters["zone_network_delivered"] > 0
    assert guarded.report.failover_gaps == 0 and guarded.report.zone_guard_checks == 0
    unguarded = run_scenario("sync-partition", 0)
    assert unguarded.ok, unguarded.describe_failure()
    assert "zone_network_delivered" not in unguarded.counters
    assert unguarded.counters["kernel_injected"] > 0  # each side took the other's buckets


def test_known_bad_no_zone_heartbeats_breaks_the_zone_guard() -> None:
    """Zone links there, but the nodes send no heartbeats on them: a sync-only
    partition then makes each side take the other for dead."""
    result = run_scenario("sync-partition-zones", 0, options=SimOptions(zone_heartbeats=False))
    assert "zone-guard" in {v.rule for v in result.violations}


def test_planned_handovers_are_seamless_and_break_before_make_is_caught() -> None:
    """Drain, undrain, join and leave hand buckets over make-before-break: at
    every instant each bucket has exactly one forwarder. Without the timed
    handoff (handover_delay 0, the old break-before-make) the giver stops
    before the taker starts, and the seamless invariant sees the gap."""
    for scenario in ("drain", "join", "leave"):
        for seed in range(3):
            result = run_scenario(scenario, seed)
            assert result.ok, result.describe_failure()
            assert result.report.seamless_checks > 0
            # as the daemon runs it: switch instants on whole seconds
            whole = run_scenario(scenario, seed, options=SimOptions(handover_quantum=1.0))
            assert whole.ok, whole.describe_failure()
    rules = {
        v.rule
        for seed in range(3)
        for v in run_scenario("drain", seed, options=SimOptions(handover_delay=0.0)).violations
    }
    assert "seamless" in rules


def test_a_handoff_reversed_by_a_membership_change_leaves_no_hole() -> None:
    """Seed 714 of mixed: after a crash D takes buckets 23 and 28 from A at a
    switch instant; a restart changes the aim back before it, and D hands them
    back to A at the same instant. Releasing on both sides left them unowned
    (a hole); the giver keeps a bucket its taker hands back."""
    result = run_scenario("mixed", 714)
    assert result.ok, result.describe_failure()


def test_a_bucket_waiting_for_the_next_handoff_stays_forwarded() -> None:
    """Seed 1741 of mixed: C claims bucket 38 of D when D's pending handoff
    is too close to take it; D must keep forwarding 38 until its next handoff
    (the old rule, "nobody forwards a bucket two nodes claim", left a gap)."""
    result = run_scenario("mixed", 1741)
    assert result.ok, result.describe_failure()


def test_a_bucket_kept_from_an_abandoned_handoff_is_forwarded_again() -> None:
    """Seed 9 of step-back-in-handoff: A hands buckets to B, B steps back and
    C crashes before the instant. A keeps them; the stop switch had taken
    them out of its data plane and nothing else changed, so they stayed
    forwarded by nobody (the forwarding check after the quiet period)."""
    result = run_scenario("step-back-in-handoff", 9)
    assert result.ok, result.describe_failure()
    assert result.report.assignment_checks >= 1


def test_a_node_back_from_a_stall_at_the_peers_deadline_relearns() -> None:
    """Seed 9 of stall: A stands still 159 ms and runs again 0.3 ms before B
    declares it dead (B had not heard A's next heartbeat yet). Judged by
    `sent + peer_timeout` alone A saw no reason to relearn and forwarded its
    buckets while B, which had just taken them, did too (exclusive). A
    relearns from an interval before that deadline."""
    result = run_scenario("stall", 9)
    assert result.ok, result.describe_failure()


def test_known_bad_kept_forwarding_after_a_stall_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A node that, back from a stall, forwards what nobody else claims in
    its own view (a peer's claim it does not honour counts for nothing)
    forwards the buckets that peer took at the same time."""

    def keep(self: Node, active: frozenset[int], starts: dict[int, float]) -> frozenset[int]:
        self._relearn_waits = False
        return active

    monkeypatch.setattr(Node, "_after_stall", keep)
    rules = {v.rule for seed in range(3) for v in run_scenario("stall", seed).violations}
    assert "exclusive" in rules


def test_known_bad_missing_injection_is_caught() -> None:
    """A driver that never writes InjectConnections claims buckets without their entries."""
    rules = {
        v.rule
        for seed in range(3)
        for v in run_scenario(
            "failover3", seed, options=SimOptions(drop_injections=True)
        ).violations
    }
    assert "injection" in rules


def test_cli_batch_prints_the_summary_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seeds", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "sim: seeds=3 violations=0"


def test_cli_lists_the_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in [*NAMED, "mixed"]:
        assert name in out
    assert set(SCENARIOS) >= set(NAMED)


def test_sixteen_nodes_settle_every_membership_change_within_a_few_heartbeats() -> None:
    """Crash, join, drain, undrain, leave and restart at N = 16: every change
    is measured (virtual time, deterministic) and none takes a repair round,
    a resync round or a join timeout (seconds) to settle."""
    result = run_scenario("membership16", 0)
    assert result.ok, result.describe_failure()
    settles = result.report.settle_times
    assert len(settles) >= 6  # boot, crash, join, drain, undrain, leave, restart
    assert max(settles) < 0.5  # detection (3 heartbeats) plus a claim/release round
    assert result.counters["workload_lost"] == 0


def test_a_sized_scenario_runs_at_any_cluster_size() -> None:
    result = run_scenario("mixed", 1, nodes=8)
    assert result.ok, result.describe_failure()
    assert "--nodes 8" in result.replay_command()
    assert result.report.assignment_checks >= 1
    with pytest.raises(ValueError, match="fixed size"):
        SCENARIOS["failover3"].with_nodes(8)
    with pytest.raises(ValueError, match="--nodes must be"):
        SCENARIOS["mixed"].with_nodes(2)


def test_cli_refuses_nodes_for_a_fixed_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--seeds", "1", "--scenario", "drain", "--nodes", "8"])
    assert "fixed size" in capsys.readouterr().err


def test_node_names_stay_distinct_beyond_26_nodes() -> None:
    names = {node_name(node_address(i)) for i in range(40)}
    assert len(names) == 40
    assert node_name(node_address(0)) == "A" and node_name(node_address(26)) == "N27"


def test_cli_replay_prints_a_trace(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seed", "0", "--scenario", "failover3", "--trace"]) == 0
    out = capsys.readouterr().out
    assert "crash B" in out
    assert "peer B down (timeout)" in out
    assert "inject" in out


# -- the checker and the models themselves ---------------------------------------------


def _conn(bucket: int) -> Connection:
    t = make_tuple("198.51.100.1", "203.0.113.1", 1000 + bucket, 80)
    return Connection(PROTO_TCP, t, t.inverse(), bucket=bucket)


def test_fifo_invariant_flags_a_gap_and_accepts_a_reset_stream() -> None:
    inv = Invariants(4)
    inv.delivered(1, 2, 10, 0.0)
    inv.delivered(1, 2, 11, 0.0)
    assert inv.ok
    inv.restart_stream(1, 2)
    inv.delivered(1, 2, 500, 0.0)  # a new stream may start anywhere
    assert inv.ok
    inv.delivered(1, 2, 0xFFFFFFFF, 0.0)
    assert [v.rule for v in inv.violations] == ["fifo"]
    inv2 = Invariants(4)
    inv2.delivered(1, 2, 0xFFFFFFFF, 0.0)
    inv2.delivered(1, 2, 0, 0.0)  # serial wrap is not a gap
    assert inv2.ok


def test_hole_invariant_tells_a_release_from_a_crash() -> None:
    inv = Invariants(2)
    inv.programmed(1, {0}, set(), 0.0)
    inv.programmed(2, {1}, set(), 0.0)
    assert inv.armed
    inv.node_gone(2, {1}, 1.0, graceful=False)  # crash: a gap, not a fault
    assert inv.ok
    inv.programmed(1, {1}, set(), 1.15)
    assert inv.report.failover_gaps == 1
    assert inv.report.max_gap == pytest.approx(0.15)
    inv.programmed(1, set(), {0}, 2.0)  # released with nobody else owning it
    assert [v.rule for v in inv.violations] == ["hole"]


def test_injection_and_assignment_and_cache_checks_bite() -> None:
    inv = Invariants(2)
    c = _conn(1)
    inv.check_injection(1, frozenset({1}), [c], frozenset({c.key}), {}, 0.0)
    inv.check_injection(1, frozenset({1}), [c], frozenset(), {}, 0.0)  # unknown: fine
    inv.check_injection(1, frozenset({1}), [c], frozenset({c.key}), {c.key: c}, 0.0)
    inv.check_assignment({1: frozenset({0, 1}), 2: frozenset({1})}, {0: 1, 1: 2}, 0.0)
    inv.check_assignment({1: frozenset({0}), 2: frozenset({1})}, {0: 1, 1: 2}, 0.0)
    inv.check_caches({(1, 2): {}}, {2: {c.key: c}}, 0.0)
    inv.check_caches({(1, 2): {c.key: c}}, {2: {c.key: c}}, 0.0)
    assert [v.rule for v in inv.violations] == ["injection", "assignment", "caches"]


def test_network_loss_partition_and_duplication() -> None:
    sched = Scheduler()
    got: list[tuple[int, int, bytes]] = []
    net = Network(sched, random.Random(1), lambda r, s, d: got.append((r, s, d)))
    for n in (1, 2, 3):
        net.attach(n)
    net.broadcast(1, b"x")
    sched.run_until(1.0)
    assert sorted(r for r, _, _ in got) == [2, 3]
    got.clear()
    net.partition([[1], [2, 3]])
    net.broadcast(1, b"y")
    net.broadcast(2, b"z")
    sched.run_until(2.0)
    assert got == [(3, 2, b"z")]
    got.clear()
    net.heal()
    net.set_default(LinkProfile(loss=1.0))
    net.broadcast(1, b"lost")
    sched.run_until(3.0)
    assert got == [] and net.stats.lost == 2
    net.set_default(LinkProfile(duplicate=1.0))
    net.broadcast(1, b"twice")
    sched.run_until(4.0)
    assert len(got) == 4
    got.clear()
    net.set_default(LinkProfile())
    net.broadcast(1, b"in flight")
    net.detach(2)  # crashed before the datagram arrived
    sched.run_until(5.0)
    assert [r for r, _, _ in got] == [3]


def test_demo_tells_a_passing_failover() -> None:
    from availability_manager.sim.demo import run_demo

    lines: list[str] = []
    result = run_demo(out=lines)
    text = "\n".join(lines)
    assert result["pass"] == 1, text
    assert result["before"] > 0 and result["lost"] == 0
    assert result["taken_over"] + result["closed"] == result["before"]
    assert "ms after the crash" in text
    assert text.splitlines()[-1].startswith("verdict: PASS")
