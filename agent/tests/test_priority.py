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
