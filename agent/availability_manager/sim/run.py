"""Run one scenario with one seed and judge it.

Owns the shape of every run: the scenario's schedule, then the settle phase
(heal everything, wait a quiet period, check the assignment, freeze the
traffic, let the caches catch up, compare them with the kernel tables), and
the `RunResult` with the replay command of a failing seed.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

from .invariants import Report, Violation
from .runner import QUIET_PERIOD, Cluster, SimOptions
from .scenarios import SCENARIOS
from .workload import WorkloadProfile

SETTLE_MARGIN = 0.05  # after the quiet period, before the assignment check
CACHE_CATCH_UP = 0.25  # after freezing the traffic, before comparing caches


@dataclasses.dataclass
class RunResult:
    scenario: str
    seed: int
    violations: list[Violation]
    report: Report
    counters: dict[str, int]
    end_time: float
    nodes: int | None = None  # the --nodes of the run, if given

    @property
    def ok(self) -> bool:
        return not self.violations

    def replay_command(self) -> str:
        nodes = f" --nodes {self.nodes}" if self.nodes is not None else ""
        return (
            f"python -m availability_manager.sim --seed {self.seed} "
            f"--scenario {self.scenario}{nodes} --trace"
        )

    def describe_failure(self) -> str:
        lines = [f"VIOLATION seed={self.seed} scenario={self.scenario}"]
        lines += [f"  {v.describe()}" for v in self.violations]
        lines.append(f"  replay: {self.replay_command()}")
        return "\n".join(lines)


def run_scenario(
    name: str,
    seed: int,
    trace: Callable[[str], None] | None = None,
    options: SimOptions | None = None,
    nodes: int | None = None,
) -> RunResult:
    """One run; `nodes` resizes a sized scenario (Scenario.with_nodes)."""
    scenario = SCENARIOS[name]
    if nodes is not None:
        scenario = scenario.with_nodes(nodes)
    cluster = Cluster(seed, options, trace, WorkloadProfile(rate=scenario.rate))
    # The scenario draws from its own stream so the cluster's draws do not
    # depend on how many faults the schedule has.
    faults_end = scenario.build(cluster, random.Random(seed * 7919 + 17))
    cluster.run_until(faults_end)
    cluster.heal()
    cluster.log("sim", "settling: no faults from now on")
    check_at = cluster.last_disturbance + QUIET_PERIOD + SETTLE_MARGIN
    cluster.run_until(check_at)
    cluster.log("sim", "check: every bucket owned once, as aimed")
    cluster.check_assignment()
    cluster.workload.freeze()
    cluster.run_until(cluster.now + CACHE_CATCH_UP)
    cluster.log("sim", "check: every cache equals its peer's kernel table")
    cluster.check_caches()
    return RunResult(
        scenario=name,
        seed=seed,
        violations=list(cluster.violations()),
        report=cluster.invariants.report,
        counters=cluster.counters(),
        end_time=cluster.now,
        nodes=nodes,
    )
