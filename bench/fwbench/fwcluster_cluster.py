"""fwcluster in the lab: the lab's own `up` with agents, `kill`, and
`clusterctl drain`; nothing here reimplements what the lab does.

Run under its own prefix and run directory, so an operator's lab (fwl-) or
the lab tests are never touched.
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any, ClassVar

from fwcluster_lab import agent, faults
from fwcluster_lab import cluster as lab_cluster
from fwcluster_lab.netns import ns_run

from .cluster import Cluster, ClusterError
from .env import COMPARE_RUN_ROOT as RUN_ROOT
from .measure import conntrack_count

# The agent logs "%(asctime)s ..." in local time: "2026-11-27 18:10:00,123".
LOG_TIME_FORMAT = "%Y-%m-%d %H:%M:%S,%f"


def agent_runnable() -> bool:
    return agent.agent_available()


class FwCluster(Cluster):
    kind = "fwcluster"
    # the lab's own agents; `start` checks them with its own error messages
    lab_options: ClassVar[dict[str, Any]] = {"agents": True, "settle_timeout": None}

    def __init__(
        self, nodes: int = 3, prefix: str = "fwm-", run_dir: Path | None = None
    ) -> None:
        from fwcluster_lab.state import LabState

        self.n = nodes
        self.prefix = prefix
        self.run_dir = run_dir or RUN_ROOT / prefix.rstrip("-")
        self.state = LabState(self.run_dir, prefix, nodes, 1, 1, True)
        self.drained: str | None = None

    def start(self) -> None:
        if not agent_runnable():
            raise ClusterError("the availability-manager agent is not installed")
        if not lab_cluster.living_nodes(self.state):
            raise ClusterError(
                f"every agent exited at start; see {self.run_dir}/*/agent.log"
            )
        try:
            lab_cluster.wait_settled(self.state, timeout=30.0)
        except TimeoutError as exc:
            raise ClusterError(f"fwcluster did not settle: {exc}") from exc

    def victim(self) -> str:
        """The living node with the most conntrack entries (the lab's demo rule)."""
        living = lab_cluster.living_nodes(self.state)
        if not living:
            raise ClusterError("no living node")
        return max(living, key=lambda n: conntrack_count(self.node(n).ns))

    def kill(self, node: str) -> float:
        t = time.time()
        faults.kill(self.state, node)
        return t

    def wait_taken_over(self, killed_at: float, timeout: float) -> float | None:
        """The survivors' cluster is settled again (every bucket owned)."""
        try:
            lab_cluster.wait_settled(self.state, timeout=timeout, poll=0.1)
        except TimeoutError:
            return None
        return time.time()

    def graceful(self, node: str) -> float:
        """`clusterctl drain` without waiting: the benchmark times the takeover."""
        t = time.time()
        self.drained = node
        argv = agent.clusterctl_argv(self.run_dir, node, "drain", "--no-wait")
        r = ns_run(self.node(node).ns, argv, check=False, timeout=10)
        if r.returncode != 0:
            raise ClusterError(f"clusterctl drain on {node} failed: {r.stderr.strip()}")
        return t

    def log_times(self, node: str, needle: str) -> list[float]:
        """Wall times of the agent log lines on `node` that contain `needle`."""
        try:
            text = agent.log_path(self.run_dir, node).read_text(errors="replace")
        except OSError:
            return []
        out = []
        for line in text.splitlines():
            if needle not in line:
                continue
            try:
                stamp = datetime.datetime.strptime(line[:23], LOG_TIME_FORMAT)
            except ValueError:
                continue
            out.append(stamp.timestamp())
        return out

    def detected_at(self, since: float) -> float | None:
        """First 'peer ... down' (kill) or ownership change (drain) on a survivor."""
        times = [
            t
            for n in self.nodes()
            if n not in self.state.dead_nodes and n != self.drained
            for needle in (" down (", "owns ")
            for t in self.log_times(n, needle)
            if t >= since
        ]
        return min(times) if times else None

    def flaps(self, since: float, until: float) -> int:
        return sum(
            1
            for n in self.nodes()
            for t in self.log_times(n, " down (")
            if since <= t < until
        )

    def sync_pids(self, node: str) -> list[int]:
        proc = self.state.procs.get(f"agent:{node}")
        return [proc.pid] if proc is not None and proc.alive() else []

    def status(self, node: str) -> dict[str, object]:
        st = lab_cluster.agent_status(self.state, node)
        return st or {}

    def known_connections(self, node: str) -> int:
        sync = self.status(node).get("sync")
        if isinstance(sync, dict):
            return int(sync.get("cache_entries", 0))
        return 0
