"""`python -m availability_manager.sim`: run seed batches, replay one seed, list scenarios.

--seeds N [--jobs J]            seeds 0..N-1 of the mixed scenario; ends with
                                exactly "sim: seeds=<N> violations=<V>"
--seed S --scenario NAME [--trace]   one run, optionally traced step by step
--nodes N                       run a sized scenario (mixed, membershipN) at N nodes
--list                          the scenarios
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence
from functools import partial

from .run import RunResult, run_scenario
from .scenarios import SCENARIOS


def _batch(seeds: int, jobs: int, scenario: str, nodes: int | None) -> int:
    started = time.monotonic()
    violations = 0
    failed = 0
    results: list[RunResult] = []
    if jobs > 1:
        with multiprocessing.Pool(jobs) as pool:
            work = partial(_run_seed, scenario, nodes)
            for result in pool.imap(work, range(seeds), chunksize=8):
                results.append(result)
                if not result.ok:
                    print(result.describe_failure(), flush=True)
    else:
        for seed in range(seeds):
            result = _run_seed(scenario, nodes, seed)
            results.append(result)
            if not result.ok:
                print(result.describe_failure(), flush=True)
    for result in results:
        violations += len(result.violations)
        failed += not result.ok
    lost = sum(r.counters.get("workload_lost", 0) for r in results)
    unsynced = sum(r.report.unsynced_at_crash for r in results)
    gap = max((r.report.max_gap for r in results), default=0.0)
    settles = sorted(t for r in results for t in r.report.settle_times)
    elapsed = time.monotonic() - started
    print(
        f"sim: {scenario}: {failed} failing seeds; connections lost {lost}, "
        f"unsynced at crash {unsynced}, longest failover gap {gap * 1000:.0f} ms; "
        f"{_settle_summary(settles)}; {elapsed:.1f} s wall"
    )
    print(f"sim: seeds={seeds} violations={violations}")
    return 1 if violations else 0


def _run_seed(scenario: str, nodes: int | None, seed: int) -> RunResult:
    return run_scenario(scenario, seed, nodes=nodes)


def _settle_summary(settles: list[float]) -> str:
    """Membership changes until every live node was stable again (virtual time)."""
    if not settles:
        return "no settle measured"
    median = settles[len(settles) // 2]
    return (
        f"settles {len(settles)}: median {median * 1000:.0f} ms, "
        f"longest {settles[-1] * 1000:.0f} ms"
    )


def _replay(seed: int, scenario: str, trace: bool, nodes: int | None) -> int:
    result = run_scenario(scenario, seed, trace=print if trace else None, nodes=nodes)
    r = result.report
    c = result.counters
    print(
        f"seed {seed} scenario {scenario}: {'ok' if result.ok else 'VIOLATIONS'}; "
        f"virtual time {result.end_time:.2f} s"
    )
    print(
        f"  connections: created {c.get('workload_created', 0)}, closed "
        f"{c.get('workload_closed', 0)}, lost {c.get('workload_lost', 0)}, refused (no owner) "
        f"{c.get('workload_refused', 0)}; unsynced at crash {r.unsynced_at_crash}"
    )
    print(
        f"  failover gaps {r.failover_gaps} (longest {r.max_gap * 1000:.0f} ms); deliveries "
        f"{r.deliveries}; checks: injection {r.injection_checks}, assignment "
        f"{r.assignment_checks}, caches {r.cache_checks}; double forwarding "
        f"{r.double_forwarding}"
    )
    print(f"  {_settle_summary(sorted(r.settle_times))}")
    if not result.ok:
        print(result.describe_failure())
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m availability_manager.sim")
    parser.add_argument("--seeds", type=int, help="run seeds 0..N-1")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes for --seeds")
    parser.add_argument("--seed", type=int, help="replay this seed")
    parser.add_argument("--scenario", default="mixed", choices=sorted(SCENARIOS))
    parser.add_argument("--trace", action="store_true", help="print every step of a replay")
    parser.add_argument("--list", action="store_true", help="list the scenarios")
    parser.add_argument("--nodes", type=int, help="cluster size of a sized scenario")
    args = parser.parse_args(argv)
    if args.nodes is not None:
        try:
            SCENARIOS[args.scenario].with_nodes(args.nodes)
        except ValueError as exc:
            parser.error(str(exc))
    if args.list:
        for s in SCENARIOS.values():
            print(f"{s.name:<20} {s.description}")
        return 0
    if args.seed is not None:
        return _replay(args.seed, args.scenario, args.trace, args.nodes)
    if args.seeds is not None:
        if args.seeds < 0 or args.jobs < 1:
            parser.error("--seeds must be >= 0 and --jobs >= 1")
        return _batch(args.seeds, args.jobs, args.scenario, args.nodes)
    parser.error("give --seeds N, --seed S or --list")
    return 2


def _pin_hash_seed() -> None:
    """Replays must not depend on Python's per-process hash salt (set
    iteration order of bytes keys inside the layers): re-run ourselves with
    PYTHONHASHSEED=0 once, so a batch and a later replay see the same world."""
    if os.environ.get("PYTHONHASHSEED") != "0":
        env = dict(os.environ, PYTHONHASHSEED="0")
        os.execve(
            sys.executable, [sys.executable, "-m", "availability_manager.sim", *sys.argv[1:]], env
        )


if __name__ == "__main__":
    _pin_hash_seed()
    sys.exit(main())
