"""What every compared cluster offers the benchmarks, whatever runs on its nodes.

Both kinds are a lab (lab/fwcluster_lab) of the same topology with a
`LabState`, so the lab's traffic generator and fault injection work on
either; they differ in what runs on the firewall nodes and in how a node
is killed, drained, and asked what it knows.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from fwcluster_lab import build
from fwcluster_lab.state import LabState
from fwcluster_lab.topology import Host


class ClusterError(Exception):
    """The cluster under test did not come up or did not do what was asked."""


class Cluster(abc.ABC):
    kind: str  # label in tables: "keepalived default", "fwcluster", ...
    state: LabState
    n: int  # firewall nodes
    prefix: str  # of the lab's namespaces, ours alone
    run_dir: Path
    # build.up's options for this kind: what runs on the nodes
    lab_options: ClassVar[dict[str, Any]]

    @abc.abstractmethod
    def start(self) -> None:
        """In the lab just built: start the daemons, return once the cluster is stable."""

    @abc.abstractmethod
    def victim(self) -> str:
        """The node whose death hurts most: the master, or the busiest owner."""

    @abc.abstractmethod
    def kill(self, node: str) -> float:
        """The node dies (daemons SIGKILLed, links down); returns the wall time of it."""

    @abc.abstractmethod
    def graceful(self, node: str) -> float:
        """Move the node's traffic away the supported way; returns when it started."""

    @abc.abstractmethod
    def detected_at(self, since: float) -> float | None:
        """Wall time a surviving node first reacted to the failure, None if never."""

    @abc.abstractmethod
    def flaps(self, since: float, until: float) -> int:
        """Failure detections between two wall times when no node failed: a
        keepalived backup entering primary, an agent declaring a peer down."""

    @abc.abstractmethod
    def wait_taken_over(self, killed_at: float, timeout: float) -> float | None:
        """After a kill (wall time killed_at): wait until the survivors have taken
        over the dead node's connections; the wall time they had, None if not
        within timeout."""

    @abc.abstractmethod
    def sync_pids(self, node: str) -> list[int]:
        """Processes doing the state sync on a node (for CPU and memory)."""

    @abc.abstractmethod
    def known_connections(self, node: str) -> int:
        """Connections of *other* nodes this node holds, ready for a takeover."""

    def node(self, name: str) -> Host:
        return self.state.topology().node(name)

    def nodes(self) -> list[str]:
        return [h.name for h in self.state.topology().nodes]


@contextlib.contextmanager
def running(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster's lab (build.running: down whatever happens, the daemons'
    logs kept in its run directory), started, for the length of the block."""
    options = {"nodes": cluster.n, "keep_logs": True, **cluster.lab_options}
    with build.running(cluster.run_dir, cluster.prefix, **options) as cluster.state:
        cluster.start()
        yield cluster
