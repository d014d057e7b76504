"""How long a membership change takes to settle, by cluster size, in the simulator.

The simulator's `membershipN` scenario (N nodes; a crash, a join, a drain and
undrain, a leave and a restart, each on a settled cluster, with connections
flowing) records for every change the virtual time until every live node is
stable with exactly the aimed buckets programmed (sim/run.py, Report.settle_times).
Virtual time: no CPU contention, 50 ms heartbeats, 3 misses, the simulator's
network latency. What it shows is the protocol's own number of rounds; the
lab figure (bench/lab_scale.py) adds the machine.

    .venv/bin/python bench/settle_sim.py               # N = 5, 8, 16, 32
    .venv/bin/python bench/settle_sim.py --quick       # N = 5, 8; 2 seeds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "agent"))

from availability_manager.sim.run import run_scenario


def measure(nodes: int, seeds: int) -> dict[str, float]:
    settles: list[float] = []
    violations = 0
    started = time.process_time()
    for seed in range(seeds):
        result = run_scenario("membership16", seed, nodes=nodes)
        violations += len(result.violations)
        settles.extend(result.report.settle_times)
    settles.sort()
    return {
        "nodes": nodes,
        "seeds": seeds,
        "changes": len(settles),
        "median_ms": settles[len(settles) // 2] * 1000,
        "p90_ms": settles[int(len(settles) * 0.9)] * 1000,
        "max_ms": settles[-1] * 1000,
        "violations": violations,
        "cpu_s_per_seed": (time.process_time() - started) / seeds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 5, 8 with 2 seeds")
    parser.add_argument(
        "--nodes", type=int, nargs="*", help="cluster sizes (default 5 8 16 32)"
    )
    parser.add_argument("--seeds", type=int, default=10, help="seeds per size")
    args = parser.parse_args()
    sizes = args.nodes or ([5, 8] if args.quick else [5, 8, 16, 32])
    seeds = 2 if args.quick else args.seeds
    if any(not 5 <= n <= 64 for n in sizes) or seeds < 1:
        parser.error("--nodes must be 5..64 and --seeds at least 1")
    print(
        "| N | seeds | changes | median | 90th percentile | longest | violations | CPU-s/seed |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    failed = 0
    for n in sizes:
        r = measure(n, seeds)
        failed += int(r["violations"])
        print(
            f"| {n} | {seeds} | {r['changes']:.0f} | {r['median_ms']:.0f} ms "
            f"| {r['p90_ms']:.0f} ms | {r['max_ms']:.0f} ms | {r['violations']:.0f} "
            f"| {r['cpu_s_per_seed']:.1f} |",
            flush=True,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
