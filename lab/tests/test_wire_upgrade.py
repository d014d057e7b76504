"""A rolling upgrade from wire version 1 to 2 under traffic, on real kernels.

The version-1 nodes run the real previous release: the agent package of the
last commit that spoke only version 1 (V1_COMMIT), taken from the
repository's history with `git archive` and put first on the agents'
PYTHONPATH (the test skips when the history is not there, e.g. in a
shallow clone). A 3-node lab (prefix fwu-) starts with three such agents;
then, under traffic, each node in turn is drained, stopped, restarted with
this tree's agent (version 2) and left to join. While a v1 node is alive the
upgraded ones speak version 1; when the last one is gone they speak 2. The
traffic must lose no connection and see no duplicate.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import test_cluster_behaviour
from test_cluster_behaviour import TRAFFIC, assert_nothing_lost, ctl, status

from fwcluster_lab import agent, build, cluster, traffic_control
from fwcluster_lab.netns import list_namespaces, stop
from fwcluster_lab.state import LabState

pytestmark = test_cluster_behaviour.pytestmark  # root, nftables, the daemon

PREFIX = "fwu-"
V1_COMMIT = "425ed33"  # the last commit whose agent spoke only wire version 1
NODES = ("fw1", "fw2", "fw3")


@pytest.fixture(scope="module")
def v1_agent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The v1 release's agent package directory (holding availability_manager/)."""
    root = tmp_path_factory.mktemp("wire-v1")
    try:
        archive = subprocess.run(
            ["git", "-C", str(agent.REPO), "archive", V1_COMMIT, "agent/availability_manager"],
            check=True,
            capture_output=True,
            timeout=60,
        ).stdout
    except (subprocess.CalledProcessError, FileNotFoundError, subprocess.TimeoutExpired):
        pytest.skip(f"repository history without {V1_COMMIT}")
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True, timeout=60)
    return root / "agent"


@pytest.fixture(scope="module")
def lab(lab_run_dir: Callable[[str], Path], v1_agent: Path) -> Iterator[LabState]:
    patch = pytest.MonkeyPatch()
    # the agents `up` starts inherit this: the old release comes before the venv's
    patch.setenv("PYTHONPATH", str(v1_agent), prepend=":")
    with contextlib.ExitStack() as stack:
        try:
            lab = build.running(lab_run_dir(PREFIX), PREFIX, settle_timeout=None, keep_logs=True)
            state = stack.enter_context(lab)
        finally:
            patch.undo()  # this tree's clusterctl from here on
        cluster.wait_settled(state, timeout=60)
        yield state
    assert not [ns for ns in list_namespaces() if ns.startswith(PREFIX)]


def wire_version(state: LabState, node: str) -> int | None:
    """The version the node speaks; None from a v1 agent (it has no such counter)."""
    version = status(state, node)["sync"].get("wire_version")
    return int(version) if version is not None else None


def upgrade(state: LabState, node: str) -> None:
    """Drain, stop the old agent, start this tree's, let it join."""
    assert "drain: confirmed" in ctl(state, node, "drain", "--timeout", "30")
    proc = state.procs.pop(f"agent:{node}")
    state.save()
    assert stop(proc, timeout=10.0)
    build.start_agent(state, node)
    cluster.wait_settled(state, timeout=60)


def test_rolling_upgrade_from_v1_under_traffic_loses_nothing(lab: LabState) -> None:
    assert [wire_version(lab, n) for n in NODES] == [None, None, None]  # all v1
    seen: list[dict[str, int | None]] = []
    traffic_control.start(lab, TRAFFIC)
    try:
        time.sleep(1.5)
        for node in NODES:
            upgrade(lab, node)
            time.sleep(1.0)
            seen.append({n: wire_version(lab, n) for n in NODES})
    finally:
        s = traffic_control.stop_background(lab)
    print(f"wire versions after each upgrade: {seen}")
    print(
        f"traffic: {s['connections']} connections, lost {s['lost']}, "
        f"duplicates {s['duplicates']}, udp lost {s['udp']['lost']}, ping lost {s['ping']['lost']}"
    )
    # upgraded nodes speak v1 while a v1 node lives, v2 once none does
    assert seen[0] == {"fw1": 1, "fw2": None, "fw3": None}
    assert seen[1] == {"fw1": 1, "fw2": 1, "fw3": None}
    assert seen[2] == {"fw1": 2, "fw2": 2, "fw3": 2}
    assert_nothing_lost(s, packets_lost_per_flow=15)
    for n in NODES:
        assert status(lab, n)["sync"].get("digest_mismatches", 0) == 0
