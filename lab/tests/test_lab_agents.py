"""The lab with real availability-manager agents (root): the cluster settles,
traffic through it is exact, and a node dying under traffic costs no stream.

Marked `lab_agent` as well as `lab`: it judges the agent as much as the lab,
so it is run on its own (`-m lab_agent`) while the agent is being written.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import test_cluster_behaviour

from fwcluster_lab import build, cluster, faults, traffic_control
from fwcluster_lab.netns import list_namespaces
from fwcluster_lab.state import LabState

pytestmark = test_cluster_behaviour.pytestmark  # root, nftables, the daemon

PREFIX = "fwa-"


@pytest.fixture(scope="module")
def lab(lab_run_dir: Callable[[str], Path]) -> Iterator[LabState]:
    # agent logs stay for the post-mortem
    with build.running(lab_run_dir(PREFIX), PREFIX, settle_timeout=30, keep_logs=True) as state:
        yield state
    assert not [ns for ns in list_namespaces() if ns.startswith(PREFIX)]


def assert_exact(s: dict[str, Any], streams: int) -> None:
    detail = {k: s[k] for k in ("tcp", "udp", "ping", "stall_histogram_ms")}
    assert (s["established"], s["lost"], s["duplicates"]) == (streams, 0, 0), detail
    assert s["tcp"]["bytes_sent"] == s["tcp"]["bytes_echoed"] == s["server"]["run"]["tcp_bytes_in"]


def test_traffic_through_the_cluster_is_exact(lab: LabState) -> None:
    opts = ["--tcp", "60", "--udp", "10", "--ping", "2", "--duration", "2", "--drain", "2"]
    s = traffic_control.run_foreground(lab, opts, None)
    assert_exact(s, 60)
    assert s["lost_packets"] == 0


def test_a_node_dying_under_traffic_costs_no_stream(lab: LabState) -> None:
    traffic_control.start(lab, ["--tcp", "60", "--udp", "10", "--drain", "3"])
    try:
        time.sleep(1.0)
        faults.kill(lab, "fw1")
        cluster.wait_settled(lab, timeout=10)
        time.sleep(2.0)
    finally:
        s = traffic_control.stop_background(lab)
        faults.revive(lab, "fw1")
    assert_exact(s, 60)
    # fw1's third of the streams waited for the takeover; none for longer than 5 s
    assert s["longest_stall_ms"] < 5000
    cluster.wait_settled(lab, timeout=30)
    assert_exact(traffic_control.run_foreground(lab, ["--tcp", "30", "--duration", "1"], None), 30)


def test_a_second_agent_with_the_same_state_dir_is_refused(lab: LabState) -> None:
    """Two agents as one node would claim the same buckets; the second must stop
    before it touches anything (it used to unlink the first one's control socket)."""
    from fwcluster_lab import agent
    from fwcluster_lab.netns import in_ns, run

    before = cluster.agent_status(lab, "fw2")
    assert before is not None
    second = run(
        in_ns(lab.topology().node("fw2").ns, agent.agent_argv(lab.run_dir, "fw2")),
        check=False,
        timeout=20,
    )
    assert second.returncode == 2, second.stdout + second.stderr
    assert "is in use by pid" in second.stderr and "one agent per state directory" in second.stderr
    after = cluster.agent_status(lab, "fw2")  # the first agent's socket is still there
    assert after is not None

    def own_incarnation(status: dict[str, Any]) -> int:
        return int(next(m["incarnation"] for m in status["members"] if m["self"]))

    assert own_incarnation(after) == own_incarnation(before)  # the same life answers
