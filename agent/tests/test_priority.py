import os

import pytest

from availability_manager.dataplane import priority
from availability_manager.dataplane.priority import at_own_priority


def test_a_realtime_agent_starts_its_commands_at_its_own_priority(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Unit level: the policy as the agent sets it (daemon/main.py), faked;
    # the real call is checked below for this (normal) process.
    monkeypatch.setattr(
        priority.os, "sched_getscheduler", lambda _pid: os.SCHED_RR | os.SCHED_RESET_ON_FORK
    )
    monkeypatch.setattr(priority.os, "sched_getparam", lambda _pid: os.sched_param(20))
    assert at_own_priority(["nft", "-f", "-"]) == ["chrt", "-r", "20", "nft", "-f", "-"]
    # children that inherit the policy (systemd's CPUSchedulingPolicy alone) need no chrt
    monkeypatch.setattr(priority.os, "sched_getscheduler", lambda _pid: os.SCHED_RR)
    assert at_own_priority(["nft", "-f", "-"]) == ["nft", "-f", "-"]


def test_a_normal_process_starts_them_as_they_are() -> None:
    if os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK != os.SCHED_OTHER:
        pytest.skip("this test process runs under a realtime policy")
    assert at_own_priority(("ip", "addr")) == ["ip", "addr"]


# Run in a child that takes the agent's policy (SCHED_RR with reset-on-fork,
# as daemon/main.py sets it): each command reports its own policy.
_POLICIES_OF_COMMANDS = """
import os, sys
from availability_manager.dataplane.nftables import _run
os.sched_setscheduler(0, os.SCHED_RR | os.SCHED_RESET_ON_FORK, os.sched_param(10))
show = ["python3", "-c", "import os; print(os.sched_getscheduler(0))"]
print(_run(show).strip(), _run(show, writes=False).strip())
"""


def test_a_realtime_agents_writes_run_realtime_and_its_reads_at_normal_priority() -> None:
    """A status poll's `nft list` must not take a core from the heartbeats at
    the agent's own priority (the soak's paired 100+ ms stalls); a write (a
    restore, a forwarding update) must not wait behind the traffic."""
    import subprocess
    import sys

    if os.geteuid() != 0:
        pytest.skip("setting SCHED_RR needs root")
    done = subprocess.run(
        [sys.executable, "-c", _POLICIES_OF_COMMANDS],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    write_policy, read_policy = (int(p) for p in done.stdout.split())
    assert write_policy == os.SCHED_RR
    assert read_policy == os.SCHED_OTHER
