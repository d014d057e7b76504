"""What a firewall cluster promises, shown on real kernels with the real agent.

One 3-node lab (prefix fwb-) serves the whole module; each test leaves the
cluster as it found it (all three nodes active and stable). The promises, in
the order of the daemon issue: each connection handled by exactly one node,
a killed node costs no connection, a drain moves every connection off a node
and the node then carries no traffic, a join rebalances with nothing lost, a
partition of the sync network alone causes no takeover, a bad configuration
is refused by name and a bad reload keeps the running one, and forged or
replayed datagrams change nothing and are counted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fwcluster_lab import agent, build, cluster, faults, traffic_control
from fwcluster_lab.netns import list_namespaces, ns_run
from fwcluster_lab.state import LabState

pytestmark = [
    pytest.mark.lab,
    pytest.mark.lab_agent,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("nft") is None or not agent.agent_available(),
        reason="needs root, nftables and the availability-manager daemon",
    ),
]

PREFIX = "fwb-"
TRAFFIC = ["--tcp", "60", "--udp", "10", "--ping", "2", "--interval-ms", "20", "--drain", "3"]


@pytest.fixture(scope="module")
def lab(lab_run_dir: Callable[[str], Path]) -> Iterator[LabState]:
    with build.running(lab_run_dir(PREFIX), PREFIX, keep_logs=True) as state:
        yield state
    assert not [ns for ns in list_namespaces() if ns.startswith(PREFIX)]


def ctl(state: LabState, node: str, *args: str, check: bool = True) -> str:
    out = subprocess.run(
        agent.clusterctl_argv(state.run_dir, node, *args),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def status(state: LabState, node: str) -> dict[str, Any]:
    st = cluster.agent_status(state, node)
    assert st is not None, f"{node}'s agent does not answer"
    return st


def assert_nothing_lost(s: dict[str, Any], packets_lost_per_flow: int = 0) -> None:
    """No TCP stream broken, nothing delivered twice anywhere, and UDP flows and
    pings lost at most `packets_lost_per_flow` packets each (a failover window)."""
    detail = {k: s[k] for k in ("tcp", "udp", "ping")}
    assert s["established"] == s["connections"] == 60, detail
    assert s["lost"] == 0, detail
    assert s["duplicates"] == 0, detail
    assert s["tcp"]["bytes_sent"] == s["tcp"]["bytes_echoed"], detail
    assert s["udp"]["server_duplicate_requests"] == 0, detail
    assert s["udp"]["flows"] == 10 and s["ping"]["flows"] == 2, detail
    assert s["udp"]["lost"] <= 10 * packets_lost_per_flow, detail
    assert s["ping"]["lost"] <= 2 * packets_lost_per_flow, detail


def ns_exec(state: LabState, node: str, argv: list[str]) -> str:
    out = ns_run(state.topology().node(node).ns, argv, check=False)
    return out.stdout + out.stderr


def accepted_new(state: LabState, node: str) -> int:
    """The node's data-plane counter of NEW connections it accepted."""
    text = ns_exec(state, node, ["nft", "list", "counter", "inet", "fwcluster", "accepted_new"])
    for word, value in zip(text.split(), text.split()[1:], strict=False):
        if word == "packets":
            return int(value)
    raise AssertionError(f"no accepted_new counter on {node}: {text}")


def test_each_connection_is_handled_by_exactly_one_node(lab: LabState) -> None:
    s = traffic_control.run_foreground(lab, [*TRAFFIC, "--duration", "2"], None)
    assert_nothing_lost(s)
    owned = [set(status(lab, n)["owned"]) for n in ("fw1", "fw2", "fw3")]
    assert sum(len(o) for o in owned) == 256 and set().union(*owned) == set(range(256))


def kernel_injected(state: LabState, nodes: tuple[str, ...]) -> dict[str, int]:
    """Entries the nodes' kernels took from injections, once every one the
    Node asked for is carried out (the runtime writes them in a worker)."""
    deadline = time.monotonic() + 10
    while True:
        sync = {n: status(state, n)["sync"] for n in nodes}
        # absent until the first injection
        written = {n: st.get("kernel_injected", 0) for n, st in sync.items()}
        carried_out = all(written[n] == st.get("injected_requested", 0) for n, st in sync.items())
        if carried_out or time.monotonic() > deadline:
            return written
        time.sleep(0.2)


def test_killed_node_costs_no_connection(lab: LabState) -> None:
    survivors = ("fw1", "fw2")
    traffic_control.start(lab, TRAFFIC)
    try:
        time.sleep(1.5)
        before = kernel_injected(lab, survivors)
        victim = status(lab, "fw3")["node_id"]
        # fw3's connections as the survivors hold them, just before it dies
        cached = [json.loads(ctl(lab, n, "connections", "--json"))["peers"] for n in survivors]
        victims_connections = min(peers[victim]["entries"] for peers in cached)
        faults.kill(lab, "fw3")
        cluster.wait_settled(lab, timeout=15)
        after = kernel_injected(lab, survivors)
        time.sleep(2.0)
    finally:
        s = traffic_control.stop_background(lab)
        faults.revive(lab, "fw3")
    assert_nothing_lost(s, packets_lost_per_flow=15)
    cluster.wait_settled(lab, timeout=60)
    # the survivors' kernels took every connection of fw3 between them
    written = sum(after[n] - before[n] for n in survivors)
    print(f"fw3 had {victims_connections} connections; the survivors' kernels took {written}")
    assert victims_connections > 0
    assert written >= victims_connections


def test_drain_moves_every_connection_off_and_join_brings_it_back(lab: LabState) -> None:
    traffic_control.start(lab, TRAFFIC)
    try:
        time.sleep(1.5)
        out = ctl(lab, "fw2", "drain", "--timeout", "30")
        assert "drain: confirmed" in out
        drained = status(lab, "fw2")
        assert drained["state"] == "draining" and drained["owned"] == []
        time.sleep(1.0)
        counted = accepted_new(lab, "fw2")
        time.sleep(2.0)
        # new connections keep coming (UDP flows re-open none, pings none; the
        # streams are long-lived): the drained node accepts no NEW one
        assert accepted_new(lab, "fw2") == counted
        assert status(lab, "fw2")["sync"]["local_entries"] == 0
        out = ctl(lab, "fw2", "join", "--timeout", "30")
        assert "join: confirmed" in out
        time.sleep(1.5)
    finally:
        s = traffic_control.stop_background(lab)
    assert_nothing_lost(s, packets_lost_per_flow=15)
    assert len(status(lab, "fw2")["owned"]) in (85, 86)


def test_drain_and_join_are_hitless(lab: LabState) -> None:
    """Make-before-break (heartbeat.handover_delay_ms, ranges.py): the giver
    forwards until the switch instant and the taker from it, so a drain and
    a join lose no datagram and deliver none twice (the drain test above
    allows a failover window's loss; this one allows none)."""
    traffic_control.start(lab, TRAFFIC)
    try:
        time.sleep(1.5)
        assert "drain: confirmed" in ctl(lab, "fw3", "drain", "--timeout", "30")
        time.sleep(1.0)
        assert "join: confirmed" in ctl(lab, "fw3", "join", "--timeout", "30")
        time.sleep(1.5)
    finally:
        s = traffic_control.stop_background(lab)
    assert_nothing_lost(s, packets_lost_per_flow=0)
    assert s["lost_packets"] == 0, s["stall_histogram_ms"]
    handoffs = [
        line
        for node in ("fw1", "fw2", "fw3")
        for line in agent.log_path(lab.run_dir, node).read_text().splitlines()
        if "; stops " in line or "; starts " in line
    ]
    assert handoffs, "no timed switch was programmed"


def test_sync_partition_alone_causes_no_takeover(lab: LabState) -> None:
    before = {n: status(lab, n)["owned"] for n in ("fw1", "fw2", "fw3")}
    traffic_control.start(lab, TRAFFIC)
    try:
        time.sleep(1.0)
        faults.partition(lab, "sync", ["fw1"])
        time.sleep(3.0)
        during = {n: status(lab, n)["owned"] for n in ("fw1", "fw2", "fw3")}
        members = {n: len(status(lab, n)["members"]) for n in ("fw1", "fw2", "fw3")}
    finally:
        faults.heal(lab)
        time.sleep(1.0)
        s = traffic_control.stop_background(lab)
    assert during == before, "buckets moved although every node was alive on its zones"
    assert members == {"fw1": 3, "fw2": 3, "fw3": 3}
    assert_nothing_lost(s, packets_lost_per_flow=15)
    cluster.wait_settled(lab, timeout=30)


def test_a_stalled_agent_does_not_judge_its_peers_by_its_own_stall(lab: LabState) -> None:
    """fw1's agent stops for 1 s (SIGSTOP: what CPU starvation does to it).
    Its peers take its buckets (it fell silent), but fw1, reading their queued
    heartbeats afterwards, declares none of them dead (it would otherwise claim
    every bucket: the 16-node lab's churn); it joins again, nothing is lost."""
    proc = lab.procs["agent:fw1"]
    log = agent.log_path(lab.run_dir, "fw1")
    seen = log.stat().st_size
    traffic_control.start(lab, TRAFFIC)
    try:
        time.sleep(1.0)
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            time.sleep(1.0)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        cluster.wait_settled(lab, timeout=30)
        time.sleep(1.0)
    finally:
        s = traffic_control.stop_background(lab)
    with log.open("rb") as f:
        f.seek(seen)
        text = f.read().decode(errors="replace")
    assert "event loop stalled" in text
    assert [line for line in text.splitlines() if " down (" in line] == []
    assert status(lab, "fw1")["sync"]["host_stalls"] >= 1
    assert_nothing_lost(s, packets_lost_per_flow=15)
    assert all(len(status(lab, n)["owned"]) in (85, 86) for n in ("fw1", "fw2", "fw3"))


def test_bad_config_is_named_and_bad_reload_keeps_running(lab: LabState) -> None:
    path = agent.config_path(lab.run_dir, "fw1")
    good = path.read_text()
    data = yaml.safe_load(good)
    data["heartbeat"]["interval_ms"] = "fast"
    bad = path.with_name("bad.yml")
    bad.write_text(yaml.safe_dump(data))
    check = subprocess.run(
        [str(agent.REPO / ".venv/bin/availability-manager"), "--check", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 2
    assert "heartbeat.interval_ms: expected an integer" in check.stderr
    assert "Traceback" not in check.stderr
    # the running agent gets the bad file on SIGHUP: it refuses and keeps going
    proc = lab.procs["agent:fw1"]
    try:
        path.write_text(yaml.safe_dump(data))
        os.kill(proc.pid, signal.SIGHUP)
        time.sleep(1.0)
        st = status(lab, "fw1")
        assert st["stable"] and st["sync"]["reload_failed"] >= 1
        log = agent.log_path(lab.run_dir, "fw1").read_text()
        assert "reload refused, keeping the running configuration" in log
        assert "heartbeat.interval_ms" in log
    finally:
        path.write_text(good)
    os.kill(proc.pid, signal.SIGHUP)
    time.sleep(0.5)
    assert status(lab, "fw1")["sync"]["reloads"] >= 1


FORGER = r"""
import os, socket, struct, sys, time
group, port = "239.255.77.1", 7788
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
rx.setsockopt(socket.SOL_SOCKET, 25, b"sync0")
rx.bind(("", port))
rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
              struct.pack("=4s4si", socket.inet_aton(group), bytes(4),
                          socket.if_nametoindex("sync0")))
rx.settimeout(5)
captured = rx.recv(2000)          # a genuine datagram of some node
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
tx.setsockopt(socket.SOL_SOCKET, 25, b"sync0")
tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
              struct.pack("=4s4si", bytes(4), bytes(4), socket.if_nametoindex("sync0")))
counter = struct.unpack_from("!Q", captured, 8)[0]
for i in range(20):
    tx.sendto(captured, (group, port))                     # replayed
    # as from a node nobody knows (header bytes 4..7) with a fresh counter
    # (bytes 8..15): past every replay check, but the header is authenticated,
    # so the tag no longer matches
    forged = bytearray(captured)
    struct.pack_into("!IQ", forged, 4, 0xC6336463, counter + 1_000_000 + i)
    tx.sendto(bytes(forged), (group, port))
    tx.sendto(b"FC" + os.urandom(62), (group, port))       # garbage behind the magic
    tx.sendto(os.urandom(64), (group, port))               # garbage
    time.sleep(0.01)
print("sent")
"""


def drops(st: dict[str, Any]) -> dict[str, int]:
    return {k: v for k, v in st["sync"].items() if k.startswith("drop_") and v}


def test_forged_and_replayed_datagrams_change_nothing_and_are_counted(lab: LabState) -> None:
    before = {n: status(lab, n) for n in ("fw1", "fw2")}
    out = ns_exec(lab, "fw3", [str(agent.REPO / ".venv/bin/python"), "-c", FORGER])
    assert "sent" in out, out
    time.sleep(0.5)
    for node in ("fw1", "fw2"):
        after = status(lab, node)
        assert after["owned"] == before[node]["owned"]
        assert len(after["members"]) == 3 and after["stable"]
        gained = {
            k: v - before[node]["sync"].get(k, 0)
            for k, v in drops(after).items()
            if v > before[node]["sync"].get(k, 0)
        }
        # each kind of bad datagram is dropped under its own reason (the node
        # whose datagram was captured calls its replays its own datagrams)
        assert gained.get("drop_bad-tag", 0) >= 20, gained
        replays = sum(gained.get(f"drop_{r}", 0) for r in ("replayed", "own-datagram", "too-old"))
        assert replays >= 20, gained
        malformed = sum(
            gained.get(f"drop_{r}", 0)
            for r in (
                "bad-magic",
                "unsupported-version",
                "bad-length",
                "bad-reserved",
                "truncated-header",
                "truncated-payload",
                "unknown-key",
            )
        )
        assert malformed >= 40, gained


def test_prometheus_endpoint_reports_the_cluster(lab: LabState) -> None:
    scrape = (
        "import urllib.request;"
        "print(urllib.request.urlopen('http://127.0.0.1:9477/metrics', timeout=5).read().decode())"
    )
    body = ns_exec(lab, "fw1", [str(agent.REPO / ".venv/bin/python"), "-c", scrape])
    assert 'fwcluster_members{node="198.51.100.11"} 3.0' in body, body[:500]
    owned = len(status(lab, "fw1")["owned"])
    assert f'fwcluster_owned_buckets{{node="198.51.100.11"}} {owned:.1f}' in body
    assert "fwcluster_heartbeats_received_total" in body
