"""Asking the lab's agents how the cluster is doing, and waiting until it has
settled (`lab wait`): what a test does after `up`, `kill` or `revive` before
it starts or judges traffic.

Settled means: every living node's agent answers, is stable, sees
exactly the living nodes as members, and together they own every bucket.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from . import agent
from .state import LabState


def agent_status(state: LabState, node: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """The agent's `status` answer over its control socket, None if it does not answer."""
    try:
        from availability_manager.cli.clusterctl import Refused, Unreachable, request
    except ImportError:
        return None
    try:
        answer = request(agent.control_socket(state.run_dir, node), "status", timeout=timeout)
    except (Unreachable, Refused):
        return None
    return answer if isinstance(answer, dict) else None


def living_nodes(state: LabState) -> list[str]:
    return [
        n.name
        for n in state.topology().nodes
        if n.name not in state.dead_nodes
        and (p := state.procs.get(f"agent:{n.name}")) is not None
        and p.alive()
    ]


def settled(statuses: Mapping[str, dict[str, Any] | None], sync_ids: Mapping[str, str]) -> str:
    """'' when the cluster of these nodes has settled, else the first reason it has not."""
    if not statuses:
        return "no living agents"
    want = {sync_ids[n] for n in statuses}
    owned: set[int] = set()
    buckets = 0
    for node, st in sorted(statuses.items()):
        if st is None:
            return f"{node}: agent does not answer"
        # `stable` (the agreed configuration is in force) is what matters for traffic;
        # `ready` (first stable configuration reached) is implied by it.
        if not st.get("stable"):
            return f"{node}: not stable yet"
        members = {m.get("node") for m in st.get("members", [])}
        if members != want:
            return f"{node}: sees members {sorted(map(str, members))}, want {sorted(want)}"
        owned.update(int(b) for b in st.get("owned", []))
        buckets = int(st.get("buckets", 0))
    if buckets and len(owned) != buckets:
        return f"only {len(owned)} of {buckets} buckets owned"
    return ""


def wait_settled(state: LabState, timeout: float = 30.0, poll: float = 0.2) -> dict[str, Any]:
    """Poll until settled; returns the statuses. Raises TimeoutError with the last reason."""
    topo = state.topology()
    sync_ids = {n.name: str(n.link("sync").address.ip) for n in topo.nodes}
    deadline = time.monotonic() + timeout
    reason = "not polled"
    while time.monotonic() < deadline:
        statuses = {n: agent_status(state, n) for n in living_nodes(state)}
        reason = settled(statuses, sync_ids)
        if not reason:
            return statuses
        time.sleep(poll)
    exited = [
        f"{name} ({_last_log_line(state, name[6:])})"
        for name, proc in sorted(state.procs.items())
        if name.startswith("agent:") and not proc.alive()
    ]
    if exited:
        reason += "; exited: " + ", ".join(exited)
    raise TimeoutError(f"cluster not settled after {timeout}s: {reason}")


def _last_log_line(state: LabState, node: str) -> str:
    try:
        lines = agent.log_path(state.run_dir, node).read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    return lines[-1].strip() if lines else "empty log"
