"""Health tracking on real kernels with the real agent, under traffic.

One 3-node lab (prefix fwh-) serves the module. The server namespace plays
the inside zone's next hop: it carries two extra addresses, 203.0.113.254
(the next hop fw1 and fw2 watch) and 203.0.113.253 (the one fw3 watches), so
one node can lose its next hop while the others keep theirs. fw3 also runs an
operator check that fails while a flag file exists. Each case leaves the
cluster settled with every address back.

- fw3's next hop vanishes (its address dropped): fw3 gives every bucket away,
  the others take them with every connection; back when the address returns.
- every node's next hop vanishes: nobody steps back (a cluster that gave every
  bucket away would forward nothing at all); every bucket stays where it was,
  and stays there when the next hop comes back to each node a round apart.
- fw3's check fails: the same as the first case, through the check.
Nothing lost, nothing delivered twice.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import test_cluster_behaviour
import yaml
from fw3_steps_back import (
    NODES,
    SURVIVORS,
    fw3_back,
    fw3_connections,
    fw3_stepped_back,
    owned,
    wait_for,
)
from test_cluster_behaviour import TRAFFIC, assert_nothing_lost, kernel_injected, status

from fwcluster_lab import agent, build, cluster, traffic_control
from fwcluster_lab.netns import ip, list_namespaces
from fwcluster_lab.state import LabState

pytestmark = test_cluster_behaviour.pytestmark  # root, nftables, the daemon

PREFIX = "fwh-"
SHARED_HOP = "203.0.113.254"  # fw1's and fw2's next hop
FW3_HOP = "203.0.113.253"
CHECK = "upstream"


def flag_file(state: LabState) -> Path:
    return state.run_dir / "fw3-check-fails"


def health(state: LabState, node: str) -> dict[str, Any]:
    section: dict[str, Any] = {
        "nexthops": {
            "interval_ms": 100,
            "fall": 3,
            "rise": 5,
            "targets": {"inside": [FW3_HOP if node == "fw3" else SHARED_HOP]},
        }
    }
    if node == "fw3":
        section["checks"] = [
            {
                "name": CHECK,
                "command": [
                    "/bin/sh",
                    "-c",
                    f'if [ -e {flag_file(state)} ]; then echo "flag set"; exit 1; fi',
                ],
                "interval_ms": 200,
                "rise": 2,
                "fall": 2,
                "action": "drain",
            }
        ]
    return section


def hop(state: LabState, address: str, present: bool) -> None:
    """The next hop's address on the server namespace: there or gone."""
    server = state.topology().servers[0]
    op = "replace" if present else "del"
    ip(server.ns, "addr", op, f"{address}/24", "dev", server.links[0].ifname, check=present)


@pytest.fixture(scope="module")
def lab(lab_run_dir: Callable[[str], Path]) -> Iterator[LabState]:
    with build.running(lab_run_dir(PREFIX), PREFIX, keep_logs=True) as state:
        hop(state, SHARED_HOP, True)
        hop(state, FW3_HOP, True)
        for node in NODES:
            path = agent.config_path(state.run_dir, node)
            data = yaml.safe_load(path.read_text())
            data["health"] = health(state, node)
            path.write_text(yaml.safe_dump(data, sort_keys=False))
            reload(state, node)
        wait_for(lambda: all_passing(state))
        cluster.wait_settled(state, timeout=30)
        yield state
    assert not [ns for ns in list_namespaces() if ns.startswith(PREFIX)]


def reload(state: LabState, node: str) -> None:
    """SIGHUP to the node's agent, and wait until it has read the file."""
    before = status(state, node)["sync"].get("reloads", 0)
    os.kill(state.procs[f"agent:{node}"].pid, signal.SIGHUP)
    wait_for(lambda: status(state, node)["sync"].get("reloads", 0) > before)


def all_passing(state: LabState) -> bool:
    checks = [c for n in NODES for c in status(state, n)["health"].values()]
    return bool(checks) and all(c["health"] == "healthy" for c in checks)


def fail_and_recover(state: LabState, fail: Callable[[], None], recover: Callable[[], None]) -> Any:
    """Under traffic: fail, wait until the others own everything, recover,
    wait until fw3 has its share again. Returns what the test asserts on."""
    traffic_control.start(state, TRAFFIC)
    try:
        time.sleep(1.5)
        before = kernel_injected(state, SURVIVORS)
        its = fw3_connections(state)
        fail()
        gave_away_s = wait_for(lambda: fw3_stepped_back(state), timeout=5.0)
        faults = status(state, "fw3")["faults"]
        after = kernel_injected(state, SURVIVORS)
        time.sleep(0.5)
        recover()
        returned_s = wait_for(lambda: fw3_back(state), timeout=10.0)
        time.sleep(1.0)
    finally:
        recover()
        s = traffic_control.stop_background(state)
    written = sum(after[n] - before[n] for n in SURVIVORS)
    print(
        f"fw3 gave its buckets away {gave_away_s * 1000:.0f} ms after the failure; it had "
        f"{its} connections, the others' kernels took {written}; it owned its share again "
        f"{returned_s * 1000:.0f} ms after the recovery"
    )
    assert_nothing_lost(s, packets_lost_per_flow=15)
    assert its > 0 and written >= its  # the others' kernels took every connection fw3 had
    cluster.wait_settled(state, timeout=30)
    return faults


def test_a_vanished_next_hop_moves_the_buckets_off_and_back(lab: LabState) -> None:
    faults = fail_and_recover(
        lab, lambda: hop(lab, FW3_HOP, False), lambda: hop(lab, FW3_HOP, True)
    )
    assert "zone inside" in faults.get("nexthop", ""), faults


def moves(lab: LabState, before: dict[str, set[int]], seconds: float) -> list[dict[str, set[int]]]:
    """Every ownership other than `before` seen in `seconds` of polling."""
    seen: list[dict[str, set[int]]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        now = owned(lab)
        if now != before:
            seen.append(now)
        time.sleep(0.05)
    return seen


def test_a_next_hop_every_node_loses_moves_no_bucket(lab: LabState) -> None:
    before = owned(lab)
    traffic_control.start(lab, TRAFFIC)
    moved: list[dict[str, set[int]]] = []
    try:
        time.sleep(1.0)
        hop(lab, SHARED_HOP, False)
        hop(lab, FW3_HOP, False)
        # detection (3 rounds) and confirmation (2 more) take 0.5 s: watch 2 s
        moved += moves(lab, before, 2.0)
        statuses = {n: status(lab, n) for n in NODES}
        # The hop comes back to each node a round apart: the first to pass
        # again must not make the others step back for a moment (health.py,
        # NEXTHOP_CONFIRM_INTERVALS): no bucket moves on the recovery either.
        hop(lab, SHARED_HOP, True)
        hop(lab, FW3_HOP, True)
        moved += moves(lab, before, 1.5)
    finally:
        hop(lab, SHARED_HOP, True)
        hop(lab, FW3_HOP, True)
        s = traffic_control.stop_background(lab)
    assert not moved, f"buckets moved: {moved[:1]}"
    for node, st in statuses.items():
        inside = st["health"]["nexthop:inside"]
        assert inside["health"] == "failing" and inside["kept_buckets"], (node, inside)
        assert "nexthop" not in st["faults"], (node, st["faults"])
    assert_nothing_lost(s)
    wait_for(lambda: all_passing(lab))


def test_a_failing_check_moves_the_buckets_off_and_back(lab: LabState) -> None:
    flag = flag_file(lab)
    faults = fail_and_recover(lab, flag.touch, lambda: flag.unlink(missing_ok=True))
    assert faults.get(f"check:{CHECK}") == "failing: exit status 1: flag set", faults
