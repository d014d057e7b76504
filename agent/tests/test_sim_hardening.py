"""Simulator scenarios of issue 18: recovery paths and hostile members, each
with the invariant that names what must hold (sim/invariants.py)."""

from __future__ import annotations

import pytest

from availability_manager.sim.run import run_scenario
from availability_manager.sim.scenarios import HEAL_LIMITS

pytestmark = pytest.mark.sim


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_long_sync_partition_heals_without_a_storm_and_the_caches_converge(seed: int) -> None:
    """Before: after the heal nothing answered the resync requests lost in
    the partition, so the caches stayed apart (18 of 20 seeds)."""
    result = run_scenario("long-sync-partition", seed)
    assert result.ok, result.describe_failure()
    assert result.report.cache_checks == 1
    assert result.report.load_checks >= 3 * 2 * len(HEAL_LIMITS)  # 3 s, at least 2 nodes
    assert result.counters["zone_network_delivered"] > 0
    # the partition really outran the repair buffer (streams were skipped),
    # and the skips were answered by rounds owed to the skipped senders
    assert result.counters["node_out_of_sync"] >= 2
    assert result.counters["node_resync_requests"] >= 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_member_claiming_every_bucket_stops_no_owner_forwarding(seed: int) -> None:
    """Before: every honest node stopped forwarding every bucket D claimed
    (forwarding: bucket 0 forwarded by nobody, all seeds)."""
    result = run_scenario("hostile-claims", seed)
    assert result.ok, result.describe_failure()
    assert result.report.assignment_checks >= 1
    assert result.counters["node_ranges_buckets_not_honoured"] > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_restarts_after_clock_steps_reuse_no_nonce_and_rejoin(seed: int) -> None:
    """With counters from the clock alone (before state_dir.py), B's restart
    after its clock stepped back fails the nonce rule, and the cluster does
    not settle (assignment, forwarding)."""
    result = run_scenario("clock-step", seed)
    assert result.ok, result.describe_failure()
    assert result.report.assignment_checks >= 1
    assert len(result.report.settle_times) >= 3  # both restarts settled


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_second_process_with_a_running_node_id_stays_silent(seed: int) -> None:
    """Without listen-before-talk the second process speaks at once (rule
    'duplicate', every seed), with a higher incarnation than B's."""
    result = run_scenario("duplicate-node-id", seed)
    assert result.ok, result.describe_failure()
    assert result.report.failover_gaps == 0  # B was never taken for gone
    assert result.report.assignment_checks >= 1
