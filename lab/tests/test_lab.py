"""The lab in real network namespaces (root): lifecycle, exact traffic through
fw1, and faults that the counters and the kernel state must show.

These tests use their own prefixes (fwt-, fwu-, fwc-) and run directories, so
they never touch a lab someone started with `bin/lab up` (prefix fwl-).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fwcluster_lab import build, faults, traffic_control
from fwcluster_lab.netns import (
    in_ns,
    link_state,
    list_namespaces,
    namespace_pids,
    nft_json,
    process_start_time,
)
from fwcluster_lab.state import LabState

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nft") is None,
        reason="needs root, iproute2 and nftables",
    ),
]

PREFIX = "fwt-"


def ours(prefix: str) -> set[str]:
    return {ns for ns in list_namespaces() if ns.startswith(prefix)}


@pytest.fixture(scope="module")
def lab(lab_run_dir: Callable[[str], Path]) -> Iterator[LabState]:
    with build.running(lab_run_dir(PREFIX), PREFIX, agents=False) as state:
        yield state
    assert ours(PREFIX) == set()


def traffic(state: LabState, *opts: str) -> dict[str, Any]:
    return traffic_control.run_foreground(state, ["--drain", "2", *opts], None)


def assert_exact(s: dict[str, Any], streams: int) -> None:
    """Nothing lost, nothing duplicated, every byte echoed and seen by the server."""
    detail = {k: s[k] for k in ("tcp", "udp", "ping", "client")}
    assert (s["connections"], s["established"], s["lost"]) == (streams, streams, 0), detail
    assert s["duplicates"] == 0 and s["lost_packets"] == 0
    run = s["server"]["run"]
    assert s["tcp"]["bytes_sent"] == s["tcp"]["bytes_echoed"] == run["tcp_bytes_in"] > 0
    assert s["udp"]["sent"] == s["udp"]["replied"] == run["udp_unique_requests"]


def test_traffic_through_fw1_is_exact(lab: LabState) -> None:
    s = traffic(lab, "--tcp", "50", "--udp", "10", "--ping", "2", "--duration", "2")
    assert_exact(s, 50)
    # Rates and stalls depend on how busy the machine is; counts must not.
    assert s["udp"]["sent"] >= 10 * 20
    assert s["ping"]["sent"] == s["ping"]["replied"] >= 2 * 20
    assert sum(s["stall_histogram_ms"].values()) == 50


def test_a_thousand_streams_and_a_hundred_udp_flows_are_exact(lab: LabState) -> None:
    # The size the failover tests use; 100 ms keeps it within this machine's CPU.
    s = traffic(lab, "--tcp", "1000", "--udp", "100", "--duration", "2", "--interval-ms", "100")
    assert_exact(s, 1000)
    assert s["server"]["run"]["tcp_connections"] == 1000
    assert s["tcp"]["records_sent"] >= 1000 * 10  # at least half the schedule


def test_fw1_dying_under_traffic_loses_every_stream(lab: LabState) -> None:
    traffic_control.start(lab, ["--tcp", "30", "--udp", "5", "--ping", "1",
                                "--stream-timeout", "1.0", "--drain", "1"])  # fmt: skip
    try:
        time.sleep(0.5)
        faults.kill(lab, "fw1")
        time.sleep(2.0)
    finally:
        s = traffic_control.stop_background(lab)
        faults.revive(lab, "fw1")
    assert s["established"] == 30
    assert s["lost"] == 30
    assert s["tcp"]["broken"] == {"timeout": 30}
    assert s["tcp"]["records_echoed"] < s["tcp"]["records_sent"]
    assert s["udp"]["lost"] > 0 and s["ping"]["lost"] > 0
    assert s["longest_stall_ms"] >= 1000
    assert s["stalled_share"] == 1.0


def test_short_outage_is_a_stall_not_a_loss(lab: LabState) -> None:
    traffic_control.start(lab, ["--tcp", "30", "--udp", "5", "--drain", "5"])
    try:
        time.sleep(0.5)
        faults.kill(lab, "fw1")
        time.sleep(0.5)
        faults.revive(lab, "fw1")
        time.sleep(2.0)
    finally:
        s = traffic_control.stop_background(lab)
    assert s["established"] == 30 and s["lost"] == 0  # TCP retransmitted through the outage
    assert s["tcp"]["bytes_sent"] == s["tcp"]["bytes_echoed"]
    assert s["longest_stall_ms"] >= 500
    assert s["stalled_share"] == 1.0
    assert s["stall_histogram_ms"]["0-50"] == 0
    assert s["udp"]["lost"] > 0  # datagrams sent into the outage are gone for good


def test_two_forwarding_nodes_show_as_duplicates(lab: LabState) -> None:
    faults.revive(lab, "fw2")  # without an agent fw2 forwards everything too
    try:
        s = traffic(lab, "--tcp", "5", "--udp", "5", "--ping", "1", "--duration", "1")
    finally:
        faults.kill(lab, "fw2")
    udp = s["udp"]
    assert udp["server_duplicate_requests"] >= 0.9 * udp["sent"] > 0
    assert udp["duplicates"] > 0 and s["ping"]["duplicates"] > 0
    assert s["duplicates"] >= udp["server_duplicate_requests"] + udp["duplicates"]
    assert_exact(traffic(lab, "--tcp", "5", "--udp", "5", "--duration", "0.5"), 5)


def test_zone_partition_cuts_fw1_off_without_touching_its_links(lab: LabState) -> None:
    faults.partition(lab, "zone", ["fw1"])
    try:
        rules = json.dumps(nft_json(lab.topology().switch_ns, "table", "bridge", faults.TABLE))
        assert '"fw1-out"' in rules and '"client-out"' in rules
        assert link_state("fwt-fw1", "out0")["operstate"] == "UP"
        s = traffic(lab, "--tcp", "5", "--udp", "2", "--duration", "0.5",
                    "--connect-timeout", "1", "--drain", "0.5")  # fmt: skip
        assert s["established"] == 0 and s["lost"] == 5
        assert s["udp"]["replied"] == 0
    finally:
        faults.heal(lab)
    rules = json.dumps(nft_json(lab.topology().switch_ns, "table", "bridge", faults.TABLE))
    assert "fw1-out" not in rules
    assert_exact(traffic(lab, "--tcp", "5", "--udp", "2", "--duration", "0.5"), 5)


RECEIVER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 9999)); s.settimeout(0.5)
print("ready", flush=True)
n, deadline = 0, time.monotonic() + 20
while time.monotonic() < deadline:
    try:
        s.recv(64); n += 1
    except socket.timeout:
        if n or time.monotonic() > deadline - 17: break
print(n, flush=True)
"""
SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[2])):
    s.sendto(b"x", (sys.argv[1], 9999)); time.sleep(0.001)
"""


def sync_delivery(state: LabState, count: int) -> int:
    """Datagrams from fw1 to fw2 over the sync bridge that arrive."""
    dst = str(state.topology().node("fw2").link("sync").address.ip)
    rx = subprocess.Popen(
        in_ns("fwt-fw2", [sys.executable, "-c", RECEIVER, dst]), stdout=subprocess.PIPE, text=True
    )
    try:
        assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
        subprocess.run(in_ns("fwt-fw1", [sys.executable, "-c", SENDER, dst, str(count)]),
                       check=True, timeout=30)  # fmt: skip
        out, _ = rx.communicate(timeout=30)
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait()
    return int(out.strip())


def test_sync_partition_and_loss_act_on_the_sync_bridge(lab: LabState) -> None:
    faults.revive(lab, "fw2")
    try:
        assert sync_delivery(lab, 100) == 100
        faults.partition(lab, "sync", ["fw1"])
        assert sync_delivery(lab, 100) == 0
        faults.heal(lab)
        faults.loss(lab, "sync", 50)
        rules = json.dumps(nft_json(lab.topology().switch_ns, "table", "bridge", faults.TABLE))
        assert '"mod": 100' in rules and '"right": 50' in rules
        got = sync_delivery(lab, 400)
        assert 120 <= got <= 280, got  # 50% of 400, more than 8 standard deviations wide
        faults.loss(lab, "sync", 0)
        assert "numgen" not in json.dumps(
            nft_json(lab.topology().switch_ns, "table", "bridge", faults.TABLE)
        )
        assert sync_delivery(lab, 100) == 100
    finally:
        faults.heal(lab)
        faults.loss(lab, "sync", 0)
        faults.kill(lab, "fw2")


def test_kill_sets_links_down_and_revive_up(lab: LabState) -> None:
    faults.kill(lab, "fw3")  # already down in --no-agent mode: idempotent
    assert all(link_state("fwt-fw3", i)["operstate"] == "DOWN" for i in ("out0", "in0", "sync0"))
    faults.revive(lab, "fw3")
    try:
        assert "fw3" not in lab.dead_nodes
        assert "UP" in link_state("fwt-fw3", "sync0")["flags"]
    finally:
        faults.kill(lab, "fw3")
    assert "fw3" in lab.dead_nodes


def test_up_then_down_leaves_nothing_behind(lab_run_dir: Callable[[str], Path]) -> None:
    prefix = "fwu-"
    run_dir = lab_run_dir(prefix)
    build.down(run_dir, prefix)
    before = set(list_namespaces())
    state = build.up(run_dir, prefix, nodes=2, agents=False)
    made = ours(prefix)
    assert made == {"fwu-sw", "fwu-fw1", "fwu-fw2", "fwu-client", "fwu-server"}
    pids = [p.pid for p in state.procs.values()] + [
        pid for ns in made for pid in namespace_pids(ns)
    ]
    assert pids, "the traffic server should be running"
    build.down(run_dir, prefix)
    assert set(list_namespaces()) == before
    assert all(process_start_time(pid) is None for pid in pids)
    assert not run_dir.exists()


def test_down_after_a_lab_crash_still_cleans_up(lab_run_dir: Callable[[str], Path]) -> None:
    prefix = "fwc-"
    run_dir = lab_run_dir(prefix)
    build.down(run_dir, prefix)
    state = build.up(run_dir, prefix, nodes=2, agents=False)
    traffic_control.start(state, ["--tcp", "5"])
    # Something the crashed lab had started but not yet recorded.
    stray = subprocess.Popen(in_ns("fwc-fw1", ["sleep", "300"]), start_new_session=True)
    # The crash: the lab's own processes die, its state file is lost, namespaces stay.
    for proc in state.procs.values():
        os.kill(proc.pid, signal.SIGKILL)
    (run_dir / "state.json").unlink()
    assert ours(prefix)
    removed = build.down(run_dir, prefix)
    stray.wait(timeout=5)
    assert ours(prefix) == set()
    assert any("sleep" in r or str(stray.pid) in r for r in removed)
    assert build.down(run_dir, prefix) == []  # idempotent
