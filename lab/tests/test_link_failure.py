"""A node loses one of its own links while it stays up, on real kernels.

One 3-node lab (prefix fwk-) serves the module; each case leaves every link
up and the cluster settled. Under traffic, one zone link of fw3 fails, at the
node (its interface set down) or at the switch (its bridge port set down, so
fw3's interface loses carrier): fw3 must give every bucket away, the other
two must take them with every connection (their kernels take fw3's entries),
and fw3 must take its share back once the link has been up for the
hold-down, never before. A link that flaps moves the buckets away once and
back once. Nothing lost, nothing delivered twice.

The agents run with a shorter hold-down than the default (`HOLD_DOWN_MS`,
applied by a configuration reload) so the cases take seconds.
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
from test_cluster_behaviour import TRAFFIC, assert_nothing_lost, ctl, kernel_injected, status

from fwcluster_lab import agent, build, cluster, traffic_control
from fwcluster_lab.link_faults import set_link
from fwcluster_lab.netns import list_namespaces
from fwcluster_lab.state import LabState

pytestmark = test_cluster_behaviour.pytestmark  # root, nftables, the daemon

PREFIX = "fwk-"
HOLD_DOWN_MS = 1000
HOLD_DOWN_MAX_MS = 4000


@pytest.fixture(scope="module")
def lab(lab_run_dir: Callable[[str], Path]) -> Iterator[LabState]:
    with build.running(lab_run_dir(PREFIX), PREFIX, keep_logs=True) as state:
        for node in NODES:
            path = agent.config_path(state.run_dir, node)
            data = yaml.safe_load(path.read_text())
            data["links"] = {"hold_down_ms": HOLD_DOWN_MS, "hold_down_max_ms": HOLD_DOWN_MAX_MS}
            path.write_text(yaml.safe_dump(data, sort_keys=False))
            reloads = status(state, node)["sync"].get("reloads", 0)
            os.kill(state.procs[f"agent:{node}"].pid, signal.SIGHUP)
            wait_for(lambda: status(state, node)["sync"].get("reloads", 0) > reloads)  # noqa: B023
        yield state
    assert not [ns for ns in list_namespaces() if ns.startswith(PREFIX)]


def fail_and_return(state: LabState, bridge: str, where: str) -> dict[str, Any]:
    """Under traffic: fw3's link on `bridge` down at `where`, wait until the
    others own everything, link up, wait until fw3 has its share again."""
    traffic_control.start(state, TRAFFIC)
    try:
        time.sleep(1.5)
        before = kernel_injected(state, SURVIVORS)
        its = fw3_connections(state)
        since = log_stamp()
        set_link(state, "fw3", bridge, False, where)
        # the owned list empties at the handoff's whole second (up to 1.1 s) and,
        # with the sync link down, after the peers' claims came over the zones
        gave_away_s = wait_for(lambda: fw3_stepped_back(state), timeout=10.0)
        seen = log_since(state, "fw3", "own status: links: interfaces down", since)
        faults = status(state, "fw3")["faults"]
        shown = ctl(state, "fw3", "status")
        after = kernel_injected(state, SURVIVORS)
        time.sleep(0.5)
        set_link(state, "fw3", bridge, True, where)
        returned_s = wait_for(lambda: fw3_back(state), timeout=10.0)
        time.sleep(1.0)
    finally:
        set_link(state, "fw3", bridge, True, where)
        s = traffic_control.stop_background(state)
    written = sum(after[n] - before[n] for n in SURVIVORS)
    print(
        f"{bridge} at the {where}: fw3 gave its buckets away {gave_away_s * 1000:.0f} ms "
        f"after the link went down (its agent logged it at {seen[0][11:23] if seen else '?'}, "
        f"the link went down at {since[11:23]}); it had {its} connections, the others' "
        f"kernels took {written}; it owned its share again {returned_s * 1000:.0f} ms after "
        "the link came back"
    )
    return {
        "summary": s,
        "faults": faults,
        "shown": shown,
        "connections": its,
        "written": written,
        "returned_s": returned_s,
    }


@pytest.mark.parametrize("where", ["node", "switch"])
@pytest.mark.parametrize("bridge", ["outside", "inside"])
def test_zone_link_down_moves_buckets_off_and_back(lab: LabState, bridge: str, where: str) -> None:
    check_moved_off_and_back(lab, fail_and_return(lab, bridge, where))


def test_sync_link_down_moves_buckets_off_and_back(lab: LabState) -> None:
    """The node's sync link is one of its own links too: it steps back, and
    its peers learn so from its zone heartbeats (no sync heartbeat arrives)."""
    check_moved_off_and_back(lab, fail_and_return(lab, "sync", "switch"))


def check_moved_off_and_back(lab: LabState, r: dict[str, Any]) -> None:
    assert_nothing_lost(r["summary"], packets_lost_per_flow=15)
    assert "interfaces down" in r["faults"].get("links", ""), r["faults"]
    assert "fault     links: interfaces down: " in r["shown"], r["shown"]
    # the others' kernels took every connection fw3 had
    assert r["connections"] > 0
    assert r["written"] >= r["connections"]
    # not back before the hold-down was over
    assert r["returned_s"] >= HOLD_DOWN_MS / 1000.0
    cluster.wait_settled(lab, timeout=30)


def log_since(state: LabState, node: str, needle: str, since: str) -> list[str]:
    """The agent's log lines containing `needle`, from the line stamped `since` on."""
    lines = agent.log_path(state.run_dir, node).read_text().splitlines()
    return [line for line in lines if line[:23] >= since and needle in line]


def log_stamp() -> str:
    """Now, as the agent stamps its log lines (local time, milliseconds)."""
    t = time.time()
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f",{int(t % 1 * 1000):03d}"


def test_flapping_link_moves_buckets_away_once_and_back_once(lab: LabState) -> None:
    flaps = 4
    traffic_control.start(lab, TRAFFIC)
    try:
        time.sleep(1.5)
        since = log_stamp()
        for flap in range(flaps):  # down 0.2 s, up 0.3 s: quicker than any hold-down
            set_link(lab, "fw3", "inside", False, "switch")
            if flap == 0:
                # The peers take its buckets at the next whole second (a
                # handover's switch instant): up to a second after the fault.
                wait_for(lambda: not owned(lab)["fw3"], timeout=2.0)
            else:
                time.sleep(0.2)
            set_link(lab, "fw3", "inside", True, "switch")
            last_up = time.monotonic()
            time.sleep(0.3)
            assert not owned(lab)["fw3"], "fw3 took buckets back while its link flapped"
        held = status(lab, "fw3")["faults"].get("links", "")
        wait_for(lambda: fw3_back(lab), timeout=HOLD_DOWN_MAX_MS / 1000 + 5)
        returned_s = time.monotonic() - last_up
        time.sleep(1.0)
    finally:
        set_link(lab, "fw3", "inside", True, "switch")
        s = traffic_control.stop_background(lab)
    assert_nothing_lost(s, packets_lost_per_flow=15)
    # each flap doubled the hold-down, up to the maximum
    assert f"held down after coming back: in0 for {HOLD_DOWN_MAX_MS / 1000:g} s" in held, held
    assert returned_s >= HOLD_DOWN_MAX_MS / 1000
    # the peers saw fw3 go once and come back once
    for node in SURVIVORS:
        assert len(log_since(lab, node, " down (links-down)", since)) == 1
        assert len(log_since(lab, node, "peer 198.51.100.13 up (", since)) == 1
    assert len(log_since(lab, "fw3", "own status up: every watcher content", since)) == 1
    cluster.wait_settled(lab, timeout=30)
