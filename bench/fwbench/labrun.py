"""A private lab for one measurement: up under our own prefix and run
directory, and always down again (also on errors, Ctrl-C and SIGTERM).

Also the small questions the benchmarks ask a running lab: which node
carries most connections, the agents' pids, whether every node has heard
of every connection yet.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from fwcluster_lab import agent, build, cluster
from fwcluster_lab.netns import ns_run
from fwcluster_lab.state import LabState

from . import env


def _sigterm(_signo: int, _frame: FrameType | None) -> None:
    # SystemExit unwinds through the `finally` below: the lab comes down.
    raise SystemExit(143)


@contextlib.contextmanager
def lab(
    name: str,
    nodes: int = 3,
    agents: bool = True,
    settle_timeout: float = 60.0,
    prefix: str = env.PREFIX,
) -> Iterator[LabState]:
    """A lab `<RUN_ROOT>/<name>` with prefix fwr- (or another of ours, for a
    second lab at the same time); agent logs are kept in `<RUN_ROOT>/<name>-logs`
    after it comes down (for the report and for looking back), the rest is removed."""
    signal.signal(signal.SIGTERM, _sigterm)
    run_dir = env.RUN_ROOT / name
    lab = build.running(
        run_dir, prefix, settle_timeout=settle_timeout, nodes=nodes, agents=agents
    )
    with lab as state:
        try:
            yield state
        finally:
            keep_logs(state, env.RUN_ROOT / f"{name}-logs")


def keep_logs(state: LabState, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for node in state.topology().nodes:
        src = agent.log_path(state.run_dir, node.name)
        if src.exists():
            (dest / f"{node.name}.log").write_bytes(src.read_bytes())


def status(state: LabState, node: str) -> dict[str, Any]:
    return cluster.agent_status(state, node) or {}


def sync_counters(state: LabState, node: str) -> dict[str, Any]:
    sync = status(state, node).get("sync")
    return sync if isinstance(sync, dict) else {}


def agent_pid(state: LabState, node: str) -> int | None:
    proc = state.procs.get(f"agent:{node}")
    return proc.pid if proc is not None and proc.alive() else None


def busiest(state: LabState) -> tuple[str, dict[str, int]]:
    """The living node with the most local conntrack entries (the demo's rule)."""
    counts = {
        n: int(sync_counters(state, n).get("local_entries", 0))
        for n in cluster.living_nodes(state)
    }
    return max(counts, key=lambda n: counts[n]), counts


def wait_replicated(state: LabState, timeout: float = 15.0) -> bool:
    """True once every living node knows every connection (its own local entries
    plus its peer cache hold as many as all nodes' local entries together)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counters = {n: sync_counters(state, n) for n in cluster.living_nodes(state)}
        total = sum(int(c.get("local_entries", 0)) for c in counters.values())
        if total and all(
            int(c.get("local_entries", 0)) + int(c.get("cache_entries", 0)) >= total
            for c in counters.values()
        ):
            return True
        time.sleep(0.2)
    return False


def clusterctl(state: LabState, node: str, *args: str, timeout: float = 60.0) -> str:
    """Run clusterctl against a node's agent; raises on a non-zero exit."""
    out = subprocess.run(
        agent.clusterctl_argv(state.run_dir, node, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(
            f"clusterctl {' '.join(args)} on {node}: {out.stderr.strip()}"
        )
    return out.stdout


def log_lines(state: LabState, node: str, needle: str) -> list[str]:
    try:
        text = agent.log_path(state.run_dir, node).read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if needle in line]


def carried_ports(state: LabState, node: str, dport: int) -> dict[str, set[int]]:
    """Client source ports of the TCP and UDP connections to `dport` in the
    node's kernel conntrack table: the flows this node carries (non-owners
    hold no entry: they drop a connection's packets before it is confirmed)."""
    out = ns_run(
        state.topology().node(node).ns, ["conntrack", "-L"], check=False
    ).stdout
    ports: dict[str, set[int]] = {"tcp": set(), "udp": set()}
    for line in out.splitlines():
        fields = line.split()
        if not fields or fields[0] not in ports:
            continue
        kv = [f.split("=", 1) for f in fields if "=" in f]
        sport = next((v for k, v in kv if k == "sport"), None)
        dst_port = next((v for k, v in kv if k == "dport"), None)
        if sport and dst_port == str(dport):
            ports[fields[0]].add(int(sport))
    return ports
