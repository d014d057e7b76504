"""Which of the compared clusters a run can build here: the systems asked for
(`--systems`), less those whose software is missing, said in the log."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from . import report
from .baseline_cluster import BaselineCluster, installed
from .cluster import Cluster
from .fwcluster_cluster import FwCluster, agent_runnable


def available_clusters(
    systems: Sequence[str],
    baselines: Callable[[], list[BaselineCluster]],
    fwcluster_nodes: int,
) -> list[Cluster]:
    out: list[Cluster] = []
    if "baseline" in systems:
        if installed():
            out.extend(baselines())
        else:
            report.log("keepalived/conntrackd not installed: baseline skipped")
    if "fwcluster" in systems:
        if agent_runnable():
            out.append(FwCluster(fwcluster_nodes))
        else:
            report.log("availability-manager not installed: fwcluster side skipped")
    return out
