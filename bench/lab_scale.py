"""A lab of N real agents on this machine: idle CPU per agent, and how long
each membership change takes to settle (up, kill, revive, drain, undrain).

Run under the lab lock (it builds namespaces with fixed names):

    flock /work/lab.lock .venv/bin/python bench/lab_scale.py            # N = 3, 8, 16
    flock /work/lab.lock .venv/bin/python bench/lab_scale.py --quick    # N = 3, short
    flock /work/lab.lock .venv/bin/python bench/lab_scale.py --nodes 16 --out x.md

Per N: `lab up --nodes N` (one client, one server, no traffic), wait until
settled; the agents' CPU (utime + stime from /proc/<pid>/stat) over
`--idle-seconds`; then kill fw2, revive it, drain fw3, undrain it, each timed
until `lab wait` would say settled (every living agent stable, sees exactly
the living nodes, all buckets owned), polled every 50 ms over the control
sockets (the figures include up to one poll round: 16 status requests). The
lab (prefix fwz-) is taken down at the end, also on failure.

The agents run at normal priority unless --realtime: 16 SCHED_RR agents on
2 cores wait for each other's 100 ms round-robin slices whenever a few are
busy at once, which a cluster of machines never sees (docs/lab.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "lab"), str(ROOT / "agent")]

from availability_manager.cli.clusterctl import request
from fwbench import agent_settings
from fwbench.measure import process_wakeups
from fwcluster_lab import agent, build, cluster, faults
from fwcluster_lab.state import LabState

# Our own prefix and run directory: never the operator's lab (fwl-), the
# tests' labs or the other benchmarks' (fwr-, fwk-, fwm-).
PREFIX = "fwz-"
RUN_DIR = Path("/run/fwcluster-lab-scale")
SETTLE_TIMEOUT = 120.0
POLL = 0.05


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def agent_pids(state: LabState) -> dict[str, int]:
    return {
        name[6:]: p.pid
        for name, p in state.procs.items()
        if name.startswith("agent:") and p.alive()
    }


def wakeups(pid: int) -> int:
    """Times the agent went to sleep and was woken: an idle agent's CPU is
    mostly the price of each wakeup, and how many there are depends on how
    the agents' heartbeats happen to be phased, which differs from one lab
    to the next."""
    woken = process_wakeups(pid)
    if woken is None:
        raise RuntimeError(f"no context switch count for {pid}")
    return woken


def idle_cpu(state: LabState, seconds: float) -> tuple[float, float, float]:
    """Mean and largest share of a core per agent over `seconds`, and the
    mean wakeups per second per agent."""
    pids = agent_pids(state)
    before = {n: (cpu_seconds(p), wakeups(p)) for n, p in pids.items()}
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    shares = [(cpu_seconds(p) - before[n][0]) / elapsed for n, p in pids.items()]
    woken = [(wakeups(p) - before[n][1]) / elapsed for n, p in pids.items()]
    return sum(shares) / len(shares), max(shares), sum(woken) / len(woken)


def settle(state: LabState) -> float:
    """Seconds until settled, from now (the change was just made)."""
    started = time.monotonic()
    reloaded = LabState.load(state.run_dir) or state
    cluster.wait_settled(reloaded, timeout=SETTLE_TIMEOUT, poll=POLL)
    return time.monotonic() - started


def control(state: LabState, node: str, command: str) -> Any:
    return request(agent.control_socket(state.run_dir, node), command, timeout=5.0)


def measure(
    nodes: int, idle_seconds: float, idle_only: bool = False
) -> dict[str, float]:
    run_dir, prefix = RUN_DIR, PREFIX
    build.down(run_dir, prefix)  # a leftover of an earlier, crashed run
    out: dict[str, float] = {"nodes": nodes}
    try:
        started = time.monotonic()
        state = build.up(run_dir, prefix, nodes, 1, 1, True)
        out["up_build_s"] = time.monotonic() - started
        out["up_settle_s"] = settle(state)
        time.sleep(1.0)
        out["idle_mean"], out["idle_max"], out["wakeups"] = idle_cpu(
            state, idle_seconds
        )
        out["load1"] = float(Path("/proc/loadavg").read_text().split()[0])
        if idle_only:
            return out
        faults.kill(state, "fw2")
        out["kill_s"] = settle(state)
        faults.revive(state, "fw2")
        out["revive_s"] = settle(state)
        control(state, "fw3", "drain")
        out["drain_s"] = settle(state)
        control(state, "fw3", "join")
        out["undrain_s"] = settle(state)
    finally:
        build.down(run_dir, prefix)
    return out


def table(rows: list[dict[str, float]]) -> list[str]:
    lines = [
        "| N | idle CPU per agent, mean (max) | wakeups /s | CPU per wakeup | load1 "
        + "| settle after up (build) | kill | revive | drain | undrain |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def settled(r: dict[str, float], key: str) -> str:
        return f"{r[key]:.2f} s" if key in r else "-"

    for r in rows:
        per_wakeup_us = r["idle_mean"] / r["wakeups"] * 1e6 if r["wakeups"] else 0.0
        lines.append(
            f"| {r['nodes']:.0f} | {r['idle_mean'] * 100:.1f} % ({r['idle_max'] * 100:.1f} %) "
            f"| {r['wakeups']:.0f} | {per_wakeup_us:.0f} us "
            f"| {r['load1']:.1f} | {r['up_settle_s']:.2f} s ({r['up_build_s']:.0f} s) | "
            + " | ".join(
                settled(r, k) for k in ("kill_s", "revive_s", "drain_s", "undrain_s")
            )
            + " |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 3, 2 s idle, no file")
    parser.add_argument(
        "--nodes", type=int, nargs="*", help="lab sizes (default 3 8 16)"
    )
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument(
        "--idle-only", action="store_true", help="idle CPU only: no kill, revive, drain"
    )
    parser.add_argument("--out", help="append the markdown table here")
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="the agents under SCHED_RR as deployed (default: normal priority, "
        "as if each node had its own CPU; docs/lab.md)",
    )
    agent_settings.add_options(parser)
    args = parser.parse_args()
    heartbeat = agent_settings.apply(args)
    if not args.realtime:
        os.environ["FWLAB_REALTIME"] = "0"  # read when the lab writes the configs
    sizes = args.nodes or ([3] if args.quick else [3, 8, 16])
    if any(not 3 <= n <= 32 for n in sizes):
        parser.error("--nodes must be 3..32 (kill fw2 and drain fw3 leave a cluster)")
    if not 0 < args.idle_seconds <= 60:
        parser.error("--idle-seconds must be 0..60")
    if os.geteuid() != 0:
        print("lab_scale: needs root (network namespaces): skipped")
        return 0
    idle = 2.0 if args.quick else args.idle_seconds
    rows = []
    for n in sizes:
        rows.append(measure(n, idle, args.idle_only))
        print("\n".join(table(rows[-1:])), flush=True)
    policy = "SCHED_RR" if args.realtime else "normal priority (SCHED_OTHER)"
    lines = [
        f"Agents: {agent_settings.describe(heartbeat)}, {policy}.",
        "",
        *table(rows),
    ]
    print("\n".join(lines))
    if args.out and not args.quick:
        with open(args.out, "a") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
