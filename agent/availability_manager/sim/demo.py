"""`python -m availability_manager.sim.demo`: a failover told as a story.

A simulated 3-node cluster (A, B, C) on the virtual clock: the nodes start and
agree on the buckets, connections flow, B crashes, A and C notice the missing
heartbeats, inject B's connections and claim its buckets. Every line is
printed from what the Nodes and the simulated kernels actually did; the
ownership bar (one character per bucket, like the seed's visual tester) is
read from the kernels' programmed bucket sets.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from functools import partial

from .names import node_address
from .runner import Cluster
from .workload import WorkloadProfile

CRASH_AT = 2.0
VICTIM = 1  # B


def ownership_bar(cluster: Cluster) -> str:
    """One character per bucket: the owner's letter, '*' if several, '.' if none."""
    owners: list[list[str]] = [[] for _ in range(cluster.options.buckets)]
    for sim in cluster.nodes.values():
        if sim.alive and not sim.isolated:
            for bucket in sim.kernel.owned:
                owners[bucket].append(sim.name)
    return "".join(o[0] if len(o) == 1 else ("*" if o else ".") for o in owners)


def _share(cluster: Cluster) -> str:
    parts = []
    for sim in sorted(cluster.nodes.values(), key=lambda s: s.node_id):
        if sim.alive:
            parts.append(f"{sim.name} {len(sim.kernel.owned)}")
    return ", ".join(parts)


class Story:
    def __init__(self, out: list[str] | None = None) -> None:
        self.out = out
        self.crashed_at: float | None = None

    def say(self, text: str) -> None:
        if self.out is not None:
            self.out.append(text)
        else:
            print(text)

    def trace(self, line: str) -> None:
        """The simulator's trace, filtered to the lines that tell the story."""
        interesting = ("ready", "down", "inject", "claimed", "released", "crash", "start")
        if any(word in line for word in interesting):
            note = ""
            if self.crashed_at is not None and " down " in line:
                when = float(line.split("ms")[0]) / 1000
                note = f"   <- {1000 * (when - self.crashed_at):.0f} ms after the crash"
            self.say(f"  {line.strip()}{note}")


def run_demo(seed: int = 2026, out: list[str] | None = None) -> dict[str, int]:
    story = Story(out)
    say = story.say
    cluster = Cluster(seed, trace=story.trace, workload=WorkloadProfile(rate=60.0, mean_lifetime=8))
    say("fwcluster demo: a simulated 3-node cluster on a virtual clock (times in ms)")
    say(f"  {cluster.options.buckets} buckets, heartbeats every 50 ms, dead after 3 missed")
    say("")
    say("1. The nodes start and agree on who owns which bucket")
    for index, at in enumerate((0.0, 0.012, 0.025)):
        cluster.scheduler.at(at, partial(cluster.start_node, index))
    cluster.run_until(0.5)
    say(f"  ownership  [{ownership_bar(cluster)}]  ({_share(cluster)})")
    say("")
    say("2. Connections flow; each node announces its own to the others")
    cluster.workload.start()
    cluster.run_until(CRASH_AT)
    victim = cluster.nodes[node_address(VICTIM)]
    for sim in sorted(cluster.nodes.values(), key=lambda s: s.node_id):
        assert sim.node is not None
        peers = ", ".join(
            f"{other.name}'s {len(sim.node.peer_cache(other.node_id))}"
            for other in cluster.nodes.values()
            if other is not sim
        )
        say(f"  {sim.name}: {len(sim.kernel.table):3d} connections in its table; caches {peers}")
    victims_conns = set(victim.kernel.table)
    say("")
    say(f"3. {victim.name} crashes with {len(victims_conns)} connections; its heartbeats stop")
    story.crashed_at = cluster.now
    cluster.crash(VICTIM)
    say(f"  ownership  [{ownership_bar(cluster)}]  ('.' = nobody accepts new connections)")
    cluster.run_until(CRASH_AT + 1.0)
    say(f"  ownership  [{ownership_bar(cluster)}]  ({_share(cluster)})")
    say("")
    say("4. Verdict")
    survivors = [s for s in cluster.nodes.values() if s.alive]
    held = set().union(*(s.kernel.table.keys() for s in survivors))
    taken_over = sum(1 for k in victims_conns if k in held)
    closed = sum(1 for k in victims_conns if k not in held and k not in cluster.workload.live)
    lost_keys = set(cluster.workload.stats.lost_keys)
    lost = sum(1 for k in victims_conns if k in lost_keys)
    orphaned = len(victims_conns) - taken_over - closed - lost
    complete = all(c != "." for c in ownership_bar(cluster))
    gap = cluster.invariants.report.max_gap
    violations = len(cluster.violations())
    say(
        f"  {victim.name} had {len(victims_conns)} connections: {taken_over} now held by "
        f"{' and '.join(s.name for s in survivors)}, {closed} closed normally, {lost} lost"
        + (f", {orphaned} unaccounted" if orphaned else "")
    )
    say(
        f"  buckets complete again: {'yes' if complete else 'NO'} after {gap * 1000:.0f} ms; "
        f"invariant violations: {violations}"
    )
    verdict = "PASS" if lost == 0 and orphaned == 0 and complete and violations == 0 else "FAIL"
    say(
        f"verdict: {verdict}: connections before {len(victims_conns)}, "
        f"after {taken_over + closed}, lost {lost + orphaned}"
    )
    return {
        "before": len(victims_conns),
        "taken_over": taken_over,
        "closed": closed,
        "lost": lost + orphaned,
        "violations": violations,
        "pass": int(verdict == "PASS"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m availability_manager.sim.demo")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args(argv)
    result = run_demo(args.seed)
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
