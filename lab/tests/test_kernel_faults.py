"""A node whose kernel refuses the agent's work, and a node whose ruleset is
flushed, on real kernels with the real agent, under traffic (issue 14).

One 3-node lab (prefix fwk-) for the module; each test leaves the cluster as
it found it. The faults:
  * Debian's `systemctl restart nftables` (flush ruleset, then an accepting
    `inet filter` table) on one node: the agent restores its tables within a
    second and nothing is lost.
  * The agent's table taken by another program (an nft table with `flags
    owner`, held by an `nft -i` process): the kernel itself refuses every
    transaction of the agent (EPERM); the node steps back, the others take its
    buckets, and it returns once the table is free again.
  * Conntrack injections refused (the test-only wrapper of
    daemon/fault_injection.py, switched by a flag file: nf_conntrack_max, the
    kernel's own reason to refuse, is global to the machine): a node that
    cannot take over a dead node's connections steps back and the third node
    takes them all.
Every test ends with 0 connections lost and 0 duplicates.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cluster_behaviour import assert_nothing_lost, status

from fwcluster_lab import agent, build, cluster, faults, traffic_control
from fwcluster_lab.netns import in_ns, list_namespaces, ns_run
from fwcluster_lab.state import LabState

pytestmark = [
    pytest.mark.lab,
    pytest.mark.lab_agent,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("nft") is None or not agent.agent_available(),
        reason="needs root, nftables and the availability-manager daemon",
    ),
]

PREFIX = "fwk-"
NODES = ("fw1", "fw2", "fw3")
TRAFFIC = ["--tcp", "60", "--udp", "10", "--ping", "2", "--interval-ms", "20", "--drain", "3"]
FAULTS_ENV = "FWCLUSTER_FAULTS_DIR"  # daemon/fault_injection.py
# What Debian's /etc/nftables.conf does on `systemctl restart nftables`.
DEBIAN_NFTABLES_CONF = """flush ruleset
table inet filter {
  chain input { type filter hook input priority filter; }
  chain forward { type filter hook forward priority filter; }
  chain output { type filter hook output priority filter; }
}
"""


@pytest.fixture(scope="module")
def lab(lab_run_dir: Callable[[str], Path]) -> Iterator[LabState]:
    run_dir = lab_run_dir(PREFIX)
    faults_dir = run_dir.with_name(run_dir.name + "-faults")
    faults_dir.mkdir(parents=True, exist_ok=True)
    os.environ[FAULTS_ENV] = str(faults_dir)  # the agents inherit it
    try:
        with build.running(run_dir, PREFIX, keep_logs=True) as state:
            yield state
    finally:
        del os.environ[FAULTS_ENV]
        shutil.rmtree(faults_dir, ignore_errors=True)
    assert not [ns for ns in list_namespaces() if ns.startswith(PREFIX)]


def report(what: str, s: dict[str, Any]) -> None:
    """The traffic figures of a fault, for docs/failures.md (pytest -s)."""
    print(
        f"{what}: longest TCP stall {s['longest_stall_ms']} ms, stalled share "
        f"{s['stalled_share']}, lost {s['lost']}, duplicates {s['duplicates']}, "
        f"UDP+ping packets lost {s['lost_packets']}"
    )


def owned_by(state: LabState, *nodes: str) -> int:
    """How many buckets these nodes own between them."""
    return len(set().union(*(set(status(state, n)["owned"]) for n in nodes)))


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> float:
    """Seconds until check() holds; fails the test after timeout."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.01)
    return time.monotonic() - start


def table_complete(state: LabState, node: str) -> bool:
    """The agent's inet table is back with its prerouting chain."""
    out = ns_run(state.topology().node(node).ns, ["nft", "list", "chain", "inet", "fwcluster",
                                                  "prerouting"], check=False)  # fmt: skip
    return out.returncode == 0


def test_restarting_nftables_with_debians_config_is_undone_within_a_second(
    lab: LabState,
) -> None:
    before = status(lab, "fw2")["sync"].get("ruleset_restores", 0)
    owned = status(lab, "fw2")["owned"]
    traffic_control.start(lab, TRAFFIC)
    try:
        time.sleep(1.5)
        ns_run(lab.topology().node("fw2").ns, ["nft", "-f", "-"], stdin=DEBIAN_NFTABLES_CONF)
        took = wait_for("fw2's table restored", lambda: table_complete(lab, "fw2"), 5.0)
        time.sleep(1.5)
    finally:
        s = traffic_control.stop_background(lab)
    print(f"fw2's table back {took * 1000:.0f} ms after the flush (polled every 10 ms)")
    report("Debian's nftables.conf loaded on fw2", s)
    assert took < 1.0
    after = status(lab, "fw2")
    assert after["sync"]["ruleset_restores"] == before + 1
    assert after["owned"] == owned and after["faults"] == {}
    assert "data plane restored" in agent.log_path(lab.run_dir, "fw2").read_text()
    assert_nothing_lost(s, packets_lost_per_flow=15)


def test_a_kernel_refusing_every_nft_transaction_steps_the_node_back(lab: LabState) -> None:
    ns = lab.topology().node("fw2").ns
    traffic_control.start(lab, TRAFFIC)
    squatter = None
    try:
        time.sleep(1.5)
        # The agent's table replaced by one only this process may change: the
        # kernel refuses every transaction of the agent (EPERM) until it exits.
        squatter = subprocess.Popen(in_ns(ns, ["nft", "-i"]), stdin=subprocess.PIPE, text=True)
        assert squatter.stdin is not None
        squatter.stdin.write(
            "delete table inet fwcluster; add table inet fwcluster { flags owner; }\n"
        )
        squatter.stdin.flush()
        stepped = wait_for(
            "fw2 stepped back",
            lambda: "kernel" in status(lab, "fw2")["faults"] and not status(lab, "fw2")["owned"],
            5.0,
        )
        print(f"fw2 owned nothing {stepped * 1000:.0f} ms after its table was taken")
        # a stepped-back node is no member for the others (as with a link down)
        wait_for("fw1 and fw3 own every bucket", lambda: owned_by(lab, "fw1", "fw3") == 256, 10.0)
        time.sleep(1.0)
        squatter.stdin.close()  # its table goes with it
        squatter.wait(timeout=10)
        squatter = None
        back = wait_for("fw2 back", lambda: len(status(lab, "fw2")["owned"]) > 0, 10.0)
        print(f"fw2 owned buckets again {back * 1000:.0f} ms after the table was free")
        time.sleep(1.0)
    finally:
        if squatter is not None:
            squatter.kill()
            squatter.wait()
        s = traffic_control.stop_background(lab)
    report("every nft transaction of fw2 refused", s)
    st = status(lab, "fw2")
    assert st["faults"] == {} and st["sync"]["kernel_step_backs"] >= 1
    log = agent.log_path(lab.run_dir, "fw2").read_text()
    assert "Operation not permitted" in log and "the kernel takes the agent's work again" in log
    assert_nothing_lost(s, packets_lost_per_flow=15)
    cluster.wait_settled(lab, timeout=30)


def test_refused_injections_step_the_node_back_and_the_third_takes_over(
    lab: LabState,
) -> None:
    from availability_manager.daemon.fault_injection import flag_path

    fw2_id = status(lab, "fw2")["node_id"]
    flag = flag_path(Path(os.environ[FAULTS_ENV]), fw2_id)
    traffic_control.start(lab, TRAFFIC)
    try:
        time.sleep(1.5)
        flag.touch()
        faults.kill(lab, "fw3")
        wait_for("fw2 stepped back", lambda: "kernel" in status(lab, "fw2")["faults"], 5.0)
        wait_for("fw1 owns every bucket", lambda: owned_by(lab, "fw1") == 256, 15.0)
        # fw2 hands its claims over at the next whole second (a timed
        # handoff), so for up to a second both count them as theirs
        wait_for("fw2 owns nothing", lambda: status(lab, "fw2")["owned"] == [], 3.0)
        time.sleep(1.0)
        flag.unlink()
        wait_for("fw2 back", lambda: len(status(lab, "fw2")["owned"]) > 0, 10.0)
        time.sleep(1.0)
    finally:
        flag.unlink(missing_ok=True)
        s = traffic_control.stop_background(lab)
        faults.revive(lab, "fw3")
    report("fw2's injections refused, fw3 killed", s)
    st = status(lab, "fw2")
    assert st["faults"] == {} and st["sync"]["kernel_step_backs"] >= 1
    assert "conntrack refuses a probe entry" in agent.log_path(lab.run_dir, "fw2").read_text()
    assert_nothing_lost(s, packets_lost_per_flow=15)
    cluster.wait_settled(lab, timeout=60)
