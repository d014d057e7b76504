"""FTP (passive and active) and TFTP through the cluster's conntrack helpers,
across a failover and a drain of the node that owns the control connection,
on real kernels with the real agent.

One 3-node lab (prefix fwp-) with the helper policy (helpers_policy.py) on
every node serves the module; the FTP and TFTP servers of ftp_lab/tftp_lab
run on the inside server, the clients on the outside client. Each test:

- starts one transfer and finds the node whose kernel holds the control
  connection (FTP port 21, TFTP's read request to port 69); only that node
  has the data connection too (it inherited the master's bucket);
- kills that node (agent SIGKILL, links down) or drains it, either in the
  middle of the data transfer or between the announcement of the data
  connection (PASV reply, PORT, TFTP read request) and its first packet;
- asserts the file arrived whole (0 lost) and nothing twice (0 duplicates),
  and prints the counts.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import test_cluster_behaviour
from test_cluster_behaviour import ctl, ns_exec

from fwcluster_lab import build, cluster, faults, helpers_policy
from fwcluster_lab.netns import in_ns, list_namespaces, spawn
from fwcluster_lab.state import LabState

pytestmark = test_cluster_behaviour.pytestmark  # root, nftables, the daemon

PREFIX = "fwp-"
FTP_SIZE = 600_000  # at 200 kB/s: a 3 s transfer
TFTP_SIZE = 60_000  # 118 blocks, 10 ms apart, after a 1.5 s wait for the first one
TFTP_FIRST_DELAY = 1.5
NODES = ("fw1", "fw2", "fw3")


@pytest.fixture(scope="module")
def lab(lab_run_dir: Callable[[str], Path]) -> Iterator[LabState]:
    run_dir = lab_run_dir(PREFIX)
    build.down(run_dir, PREFIX)
    state = build.up(run_dir, PREFIX, nodes=3, agents=True)
    try:
        cluster.wait_settled(state, timeout=60)
        topo = state.topology()
        for node in topo.nodes:
            helpers_policy.install(node)
        server = topo.servers[0]
        address = str(server.links[0].address.ip)
        py = [sys.executable, "-m"]
        for what, argv in (
            ("ftp", [*py, "fwcluster_lab.ftp_lab", "server", "--address", address]),
            (
                "tftp",
                [
                    *py,
                    "fwcluster_lab.tftp_lab",
                    "server",
                    "--address",
                    address,
                    "--size",
                    str(TFTP_SIZE),
                    "--first-delay",
                    str(TFTP_FIRST_DELAY),
                    "--stats-dir",
                    str(run_dir / "tftp-stats"),
                ],
            ),
        ):
            proc = spawn(
                server.ns, argv, run_dir / f"{what}-server.log", f"{what}:server", build.lab_env()
            )
            state.procs[proc.what] = proc
        state.save()
        time.sleep(1.0)  # the servers bind
        yield state
    finally:
        build.down(run_dir, PREFIX, keep_logs=True)
        assert not [ns for ns in list_namespaces() if ns.startswith(PREFIX)]


class Client:
    """A lab client process: JSON result on its last stdout line."""

    def __init__(self, state: LabState, module: str, *args: str) -> None:
        topo = state.topology()
        self.server = str(topo.servers[0].links[0].address.ip)
        argv = [sys.executable, "-m", module, "client", "--server", self.server, *args]
        self.proc = subprocess.Popen(
            in_ns(topo.clients[0].ns, argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=build.lab_env(),
        )

    def wait_line(self, prefix: str, timeout: float = 20.0) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith(prefix):
                return line
            if not line and self.proc.poll() is not None:
                break
        raise AssertionError(f"client never printed {prefix!r}")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def result(self, timeout: float = 60.0) -> dict[str, Any]:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        assert lines, f"client printed no result: {out!r}"
        result: dict[str, Any] = json.loads(lines[-1])
        return result


def holders(state: LabState, proto: str, pattern: str) -> list[str]:
    """Living nodes whose kernel has a `proto` entry matching `pattern`."""
    return [
        node
        for node in cluster.living_nodes(state)
        if re.search(pattern, ns_exec(state, node, ["conntrack", "-L", "-p", proto]))
    ]


def owner_of(state: LabState, proto: str, *patterns: str) -> str:
    """The one node whose kernel has entries matching every pattern (the
    control connection and, if given, its data connection); no other
    living node may have any of them."""
    found: dict[str, list[str]] = {}
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        found = {p: holders(state, proto, p) for p in patterns}
        if all(len(nodes) == 1 for nodes in found.values()):
            owners = {nodes[0] for nodes in found.values()}
            assert len(owners) == 1, f"control and data connections on different nodes: {found}"
            return owners.pop()
        time.sleep(0.05)
    raise AssertionError(f"entries held by {found}, expected exactly one node each")


def port_of(client: Client, what: str) -> int:
    return int(client.wait_line(what).split()[1])


@contextlib.contextmanager
def disrupted(state: LabState, node: str, how: str) -> Iterator[None]:
    """`node` killed (agent SIGKILL, links down) or drained for the block;
    revived or joined again after it, and the cluster settled."""
    if how == "kill":
        faults.kill(state, node)
    else:
        assert "drain: confirmed" in ctl(state, node, "drain", "--timeout", "30")
    try:
        yield
    finally:
        if how == "kill":
            faults.revive(state, node)
        else:
            assert "join: confirmed" in ctl(state, node, "join", "--timeout", "30")
        cluster.wait_settled(state, timeout=60)


def check_ftp(result: dict[str, Any], label: str) -> None:
    lost = result["expected"] - min(result["received"], result["expected"])
    print(
        f"{label}: {result['received']}/{result['expected']} bytes, lost {lost}, "
        f"duplicates {result['duplicates']}, intact {result['intact']}, "
        f"{result['seconds']} s, error {result['error']}"
    )
    assert result["error"] is None, result
    assert lost == 0 and result["duplicates"] == 0 and result["intact"], result


def check_tftp(state: LabState, result: dict[str, Any], label: str) -> None:
    stats = state.run_dir / "tftp-stats" / f"{result['port']}.json"
    assert _wait(stats.exists), f"no server stats for client port {result['port']}"
    sent = json.loads(stats.read_text())["sent"]
    received = result["received_per_block"]
    duplicates = sum(max(0, n - sent.get(b, 0)) for b, n in received.items())
    lost = result["expected"] - result["received"]
    print(
        f"{label}: {result['received']}/{result['expected']} bytes in {result['blocks']} "
        f"blocks, lost {lost}, duplicates {duplicates}, retransmitted "
        f"{sum(sent.values()) - len(sent)}, {result['seconds']} s, error {result['error']}"
    )
    assert result["error"] is None, result
    assert lost == 0 and result["intact"], result
    assert duplicates == 0, (received, sent)


def _wait(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.mark.parametrize("how", ["kill", "drain"])
@pytest.mark.parametrize("mode", ["passive", "active"])
def test_ftp_transfer_survives_its_owner_mid_transfer(lab: LabState, mode: str, how: str) -> None:
    client = Client(lab, "fwcluster_lab.ftp_lab", "--mode", mode, "--size", str(FTP_SIZE))
    control, data = port_of(client, "CONTROL"), port_of(client, "DATA")
    time.sleep(1.0)  # a third of the file is through
    owner = owner_of(lab, "tcp", rf"sport={control} dport=21 ", rf"dport={data} ")
    with disrupted(lab, owner, how):
        result = client.result()
    check_ftp(result, f"ftp {mode}, {how} of {owner} mid-transfer")


@pytest.mark.parametrize("how", ["kill", "drain"])
@pytest.mark.parametrize("mode", ["passive", "active"])
def test_ftp_data_connection_announced_before_a_failover_still_opens(
    lab: LabState, mode: str, how: str
) -> None:
    client = Client(lab, "fwcluster_lab.ftp_lab", "--mode", mode, "--size", "100000", "--pause")
    control = port_of(client, "CONTROL")
    client.wait_line("READY")  # the helper holds the expectation now
    owner = owner_of(lab, "tcp", rf"sport={control} dport=21 ")
    with disrupted(lab, owner, how):
        time.sleep(0.5)  # the survivors have taken the buckets over
        client.go()
        result = client.result()
    check_ftp(result, f"ftp {mode}, {how} of {owner} between announcement and data")


@pytest.mark.parametrize("how", ["kill", "drain"])
@pytest.mark.parametrize("when", ["before-data", "mid-transfer"])
def test_tftp_transfer_survives_its_owner(lab: LabState, when: str, how: str) -> None:
    client = Client(lab, "fwcluster_lab.tftp_lab", "--size", str(TFTP_SIZE))
    port = port_of(client, "CONTROL")
    # the server answers the read request after TFTP_FIRST_DELAY
    time.sleep(0.3 if when == "before-data" else TFTP_FIRST_DELAY + 0.5)
    patterns = [rf"sport={port} dport=69 "]
    if when == "mid-transfer":
        patterns.append(rf"sport=(?!69 )\d+ dport={port} ")  # server's new port -> client
    owner = owner_of(lab, "udp", *patterns)
    with disrupted(lab, owner, how):
        result = client.result()
    check_tftp(lab, result, f"tftp, {how} of {owner} {when}")


def test_the_servers_ran_throughout(lab: LabState) -> None:
    for name in ("ftp:server", "tftp:server"):
        assert lab.procs[name].alive(), f"{name} died; see {lab.run_dir}"
