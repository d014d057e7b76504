"""The operator's conntrackd-style tools on real kernels with the real agent.

One 3-node lab (prefix fwo-) for the module, under live traffic: `clusterctl
kernel` and `cache` list the same connections each node's kernel and peers
hold, filters select them; `stats`, `flush-cache` and `resync` act on the
sync caches, and a takeover after a flush and a resync still loses nothing;
notify hooks run on a drain, a join and a zone link going down and up.
Every test leaves the three nodes active and stable.
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

PREFIX = "fwo-"
NODES = ("fw1", "fw2", "fw3")
TCP_FLOWS = 30
TRAFFIC = ["--tcp", str(TCP_FLOWS), "--udp", "5", "--ping", "1", "--interval-ms", "50"]


@pytest.fixture(scope="module")
def lab(lab_run_dir: Callable[[str], Path]) -> Iterator[LabState]:
    with build.running(lab_run_dir(PREFIX), PREFIX, keep_logs=True) as state:
        yield state
    assert not [ns for ns in list_namespaces() if ns.startswith(PREFIX)]


def ctl(state: LabState, node: str, *args: str) -> str:
    out = subprocess.run(
        agent.clusterctl_argv(state.run_dir, node, *args),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def ctl_json(state: LabState, node: str, *args: str) -> Any:
    return json.loads(ctl(state, node, *args, "--json"))


def node_id(state: LabState, node: str) -> str:
    st = cluster.agent_status(state, node)
    assert st is not None
    return str(st["node_id"])


def flows(entries: list[dict[str, Any]]) -> set[tuple[str, int]]:
    return {(e["src"], e["sport"]) for e in entries}


def assert_nothing_lost(s: dict[str, Any], udp_lost_per_flow: int = 0) -> None:
    detail = {k: s[k] for k in ("tcp", "udp", "ping")}
    assert s["established"] == s["connections"] == TCP_FLOWS, detail
    assert s["lost"] == 0 and s["duplicates"] == 0, detail
    assert s["tcp"]["bytes_sent"] == s["tcp"]["bytes_echoed"], detail
    assert s["udp"]["lost"] <= 5 * udp_lost_per_flow, detail


def test_kernel_and_cache_listings_agree_and_filter(lab: LabState) -> None:
    port = str(traffic_control.default_target(lab).port)
    traffic_control.start(lab, TRAFFIC)
    try:
        time.sleep(1.5)
        streams = ["--proto", "tcp", "--dport", port, "--state", "established", "--limit", "0"]
        kernel = {n: ctl_json(lab, n, "kernel", *streams)["entries"] for n in NODES}
        local = {n: ctl_json(lab, n, "cache", "--source", "local", *streams) for n in NODES}
        seen_by_fw2 = {
            n: ctl_json(lab, "fw2", "cache", "--source", node_id(lab, n), *streams)["entries"]
            for n in ("fw1", "fw3")
        }
        human = ctl(lab, "fw1", "kernel", "--proto", "tcp", "--dport", port, "--limit", "2")
    finally:
        s = traffic_control.stop_background(lab)
    assert_nothing_lost(s)
    # every stream is in exactly one node's kernel, classified and owned by that node
    everyone = [f for n in NODES for f in flows(kernel[n])]
    assert len(everyone) == len(set(everyone)) == TCP_FLOWS
    for n in NODES:
        me = node_id(lab, n)
        assert all(e["owner"] == [me] and e["bucket"] is not None for e in kernel[n])
        # the agent announced exactly what its kernel holds
        assert flows(local[n]["entries"]) == flows(kernel[n])
        assert local[n]["more"] == 0
    # and the peers cached exactly that
    for n in ("fw1", "fw3"):
        assert flows(seen_by_fw2[n]) == flows(kernel[n])
    lines = human.splitlines()
    assert len(kernel["fw1"]) > 2, "fw1 should carry about a third of the streams"
    assert lines[2].startswith(f"2 of {len(kernel['fw1'])} matching kernel entries shown")
    assert lines[3].startswith(f"{len(kernel['fw1']) - 2} more")
    # a source filter that matches nothing: an empty listing, not an error
    assert ctl_json(lab, "fw1", "kernel", "--src", "198.18.0.0/15")["matched"] == 0


def wait_for(what: str, check: Callable[[], bool], timeout: float = 10.0) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.1)
    return time.monotonic() - start


def test_flush_cache_and_resync_then_a_takeover_loses_nothing(lab: LabState) -> None:
    fw1, fw3 = node_id(lab, "fw1"), node_id(lab, "fw3")
    survivors = ("fw1", "fw2")
    traffic_control.start(lab, TRAFFIC)
    try:
        time.sleep(1.5)
        victim = flows(
            ctl_json(lab, "fw3", "cache", "--source", "local", "--limit", "0")["entries"]
        )
        assert victim, "fw3 carries no connection to take over"
        flushed = ctl_json(lab, "fw2", "flush-cache", "--peer", fw3)
        assert flushed == {"flushed": [fw3], "entries_dropped": flushed["entries_dropped"]}
        assert flushed["entries_dropped"] >= len(victim)
        asked = ctl_json(lab, "fw2", "resync", "--peer", fw3)
        assert asked == {"asked": [fw3], "kernel_reread": False}

        def refilled() -> bool:
            cached = ctl_json(lab, "fw2", "cache", "--source", fw3, "--limit", "0")["entries"]
            return victim <= flows(cached)

        took = wait_for("fw2's cache of fw3 refilled by the resync", refilled, timeout=5.0)
        print(f"resync refilled {len(victim)} entries within {took:.2f} s")
        stats = {n: ctl_json(lab, n, "stats") for n in ("fw2", "fw3")}
        assert stats["fw2"]["resyncs"]["requests_sent"].get("operator", 0) >= 1
        assert stats["fw3"]["resyncs"]["rounds_sent"].get("request-full", 0) >= 1
        assert stats["fw2"]["messages"]["received"]
        # fw1 resyncs its whole view of the kernel too: nothing changes in its cache
        assert ctl_json(lab, "fw1", "resync", "--kernel")["kernel_reread"] is True
        faults.kill(lab, "fw3")
        cluster.wait_settled(lab, timeout=15)
        time.sleep(1.5)
        taken = set()
        for n in survivors:
            taken |= flows(
                ctl_json(lab, n, "kernel", "--limit", "0", "--owner", node_id(lab, n))["entries"]
            )
    finally:
        s = traffic_control.stop_background(lab)
        faults.revive(lab, "fw3")
    assert_nothing_lost(s, udp_lost_per_flow=15)
    assert victim <= taken, "a survivor's kernel lacks connections of the dead node"
    cluster.wait_settled(lab, timeout=60)
    assert fw1 != fw3


HOOK = """#!/bin/sh
echo "$* | $FWCLUSTER_EVENT $FWCLUSTER_NODE" >> {log}
"""


def test_notify_hooks_run_on_drain_join_and_a_link_fault(lab: LabState) -> None:
    hook_dir = lab.run_dir / "hooks"
    hook_dir.mkdir(mode=0o755, exist_ok=True)
    log = hook_dir / "fw3.log"
    log.unlink(missing_ok=True)
    hook = hook_dir / "notify.sh"
    hook.write_text(HOOK.format(log=log))
    hook.chmod(0o755)
    path = agent.config_path(lab.run_dir, "fw3")
    original = path.read_text()
    data = yaml.safe_load(original)
    data["notify"] = [{"command": str(hook), "timeout_s": 5}]
    proc = lab.procs["agent:fw3"]
    zone_if = lab.topology().zones[0].node_ifname
    ns = lab.topology().node("fw3").ns
    try:
        path.write_text(yaml.safe_dump(data))
        os.kill(proc.pid, signal.SIGHUP)  # notify is reloadable
        me = node_id(lab, "fw3")
        wait_for(
            "the reload",
            lambda: (cluster.agent_status(lab, "fw3") or {}).get("sync", {}).get("reloads", 0) >= 1,
        )
        assert "drain: confirmed" in ctl(lab, "fw3", "drain", "--timeout", "30")
        assert "join: confirmed" in ctl(lab, "fw3", "join", "--timeout", "30")
        ns_run(ns, ["ip", "link", "set", zone_if, "down"])
        try:
            wait_for("fault raised", lambda: "fault raised links" in text(log))
        finally:
            ns_run(ns, ["ip", "link", "set", zone_if, "up"])
        wait_for("fault cleared", lambda: "fault cleared links" in text(log), timeout=30)
        cluster.wait_settled(lab, timeout=30)
        wait_for("an owner call after the link returned", lambda: owns_again(log))
    finally:
        path.write_text(original)
        os.kill(proc.pid, signal.SIGHUP)
    lines = text(log).splitlines()
    calls = [line.split(" | ")[0].split() for line in lines]
    events = [c[0] for c in calls]
    # the environment names the event and the node
    assert all(line.endswith(f"| {c[0]} {me}") for line, c in zip(lines, calls, strict=True))
    # in order: the drain gives every bucket away, the join takes a share back
    drain = events.index("draining")
    member = events.index("member")
    assert ["owner", "0"] in [c[:2] for c in calls[drain:member]]
    assert any(c[0] == "owner" and c[1] != "0" for c in calls[member:])
    fault = events.index("fault")
    assert calls[fault][1:4] == ["raised", "links", "interfaces"]
    cleared = next(c for c in calls[fault:] if c[0] == "fault" and c[1] == "cleared")
    assert cleared == ["fault", "cleared", "links"]


def text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def owns_again(log: Path) -> bool:
    """The last call is an owner call with buckets, after the link fault cleared."""
    lines = text(log).splitlines()
    cleared = [i for i, line in enumerate(lines) if line.startswith("fault cleared")]
    if not cleared:
        return False
    owner = [line.split()[1] for line in lines[cleared[-1] :] if line.startswith("owner ")]
    return bool(owner) and owner[-1] != "0"


BURST = 3000  # new UDP connections, in runs of 100 a millisecond apart
BURST_SPORT = 45678


def deferred_reads(state: LabState) -> dict[str, int]:
    out = {}
    for n in NODES:
        st = cluster.agent_status(state, n)
        assert st is not None
        out[n] = int(st["sync"]["busy_reads_deferred"])
    return out


def test_a_burst_of_new_connections_is_read_in_batches_and_reaches_every_peer(
    lab: LabState,
) -> None:
    """The agents' interrupt moderation (daemon/read_moderation.py) on real
    kernels: a burst of new connections makes the busy sockets wait their
    2 ms (the counter rises on the owners), and still every connection is in
    its owner's kernel, announced, and cached by both peers."""
    target = traffic_control.default_target(lab)
    before = deferred_reads(lab)
    burst = (  # in runs of 100 a millisecond apart: no drop in the veths' backlog
        "import socket, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"s.bind(('0.0.0.0', {BURST_SPORT}))\n"
        f"for port in range(20000, 20000 + {BURST}):\n"
        f"    s.sendto(b'x', ({target.address!r}, port))\n"
        "    if port % 100 == 99:\n"
        "        time.sleep(0.001)\n"
    )
    ns_run(lab.topology().host(target.client).ns, ["python3", "-c", burst], timeout=30)
    only_burst = ["--proto", "udp", "--sport", str(BURST_SPORT), "--limit", "1"]

    def everywhere() -> bool:
        kernel = sum(int(ctl_json(lab, n, "kernel", *only_burst)["matched"]) for n in NODES)
        cached = sum(int(ctl_json(lab, n, "cache", "--source", "peers", *only_burst)["matched"])
                     for n in NODES)  # fmt: skip
        # each node's peers' caches hold the connections the other two own
        return kernel == BURST and cached == 2 * BURST

    wait_for("every burst connection in one kernel and two peer caches", everywhere)
    after = deferred_reads(lab)
    assert sum(after.values()) > sum(before.values()), (before, after)
