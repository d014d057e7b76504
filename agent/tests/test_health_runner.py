"""The health checks' asyncio adapter with real subprocesses and real ICMP on
loopback: verdicts reach the runtime's callbacks, a hanging command is killed
with its children at the timeout, output is bounded, the loop never blocks."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from availability_manager.daemon.health import DETAIL_LIMIT, HealthRunner
from availability_manager.daemon.health_config import CheckConfig, HealthConfig, NexthopConfig
from availability_manager.dataplane.base import Zone
from availability_manager.health import CheckTiming

LOOP_ZONE = Zone("loop", "lo", (ipaddress.ip_interface("127.0.0.9/8"),), "01:00:5e:7f:00:09")


class Calls:
    """What the runner told the runtime."""

    def __init__(self, peers_reach: bool = True) -> None:
        self.faults: dict[str, str | None] = {}
        self.caps: dict[str, int | None] = {}
        self.nexthops_ok: list[bool] = []
        self.peers_reach = peers_reach

    def runner(self, cfg: HealthConfig, zones: tuple[Zone, ...] = ()) -> HealthRunner:
        return HealthRunner(
            cfg,
            zones,
            asyncio.get_running_loop(),
            set_fault=self.faults.__setitem__,
            set_weight_cap=self.caps.__setitem__,
            set_nexthops_ok=self.nexthops_ok.append,
            peers_reach_nexthops=lambda: self.peers_reach,
        )


def check(name: str, script: str, timeout: float = 1.0, **kw: Any) -> CheckConfig:
    timing = CheckTiming(interval=max(timeout, 0.2), timeout=timeout, rise=1, fall=1)
    return CheckConfig(name, ("/bin/sh", "-c", script), timing, **kw)


async def until(cond: Callable[[], bool], limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_a_failing_command_is_a_fault_and_a_passing_one_clears_it(tmp_path: Path) -> None:
    flag = tmp_path / "fail"
    flag.write_text("")
    script = f'if [ -e {flag} ]; then echo "proxy down"; exit 3; fi; echo fine'

    async def main() -> None:
        calls = Calls()
        runner = calls.runner(HealthConfig(checks=(check("proxy", script),)))
        runner.start()
        try:
            await until(lambda: calls.faults.get("check:proxy") is not None)
            assert calls.faults["check:proxy"] == "failing: exit status 3: proxy down"
            flag.unlink()
            await until(lambda: "check:proxy" in calls.faults and not calls.faults["check:proxy"])
            assert runner.status()["check:proxy"]["health"] == "healthy"
            assert calls.caps == {}
        finally:
            runner.close()
            await runner.wait_closed()

    asyncio.run(main())


def test_action_weight_caps_the_weight_instead_of_stepping_back() -> None:
    async def main() -> None:
        calls = Calls()
        cfg = check("load", "exit 1", action="weight", weight=2)
        runner = calls.runner(HealthConfig(checks=(cfg,)))
        runner.start()
        try:
            await until(lambda: calls.caps.get("check:load") == 2)
            assert calls.faults == {}
        finally:
            runner.close()
            await runner.wait_closed()

    asyncio.run(main())


def test_a_hanging_command_is_killed_with_its_children_at_the_timeout(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # the first run's shell starts a child that would outlive it, records
    # both pids, then hangs itself (as every later run does)
    script = (
        f"if [ ! -e {pids} ]; then sleep 60 & echo $! $$ > {pids}.new; mv {pids}.new {pids}; fi;"
        " sleep 60"
    )

    async def main() -> None:
        calls = Calls()
        runner = calls.runner(HealthConfig(checks=(check("hang", script, timeout=0.3),)))
        started = time.monotonic()
        ticks = 0

        async def ticker() -> None:  # the loop keeps running meanwhile
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick_task = asyncio.create_task(ticker())
        runner.start()
        try:
            await until(lambda: calls.faults.get("check:hang") is not None)
            assert calls.faults["check:hang"] == "failing: no result within 0.3 s"
            assert time.monotonic() - started < 2.0
            assert ticks >= 10
            await until(lambda: pids.exists() and len(pids.read_text().split()) == 2)
            for pid in map(int, pids.read_text().split()):
                await until(lambda pid=pid: not Path(f"/proc/{pid}").exists() or _zombie(pid))
            assert runner.checks["check:hang"].stats["timeouts"] >= 1
        finally:
            tick_task.cancel()
            runner.close()
            await runner.wait_closed()

    asyncio.run(main())


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except OSError:
        return True


def test_a_flood_of_output_is_read_to_the_end_but_kept_short() -> None:
    script = "head -c 2000000 /dev/zero | tr '\\0' x; echo; exit 1"

    async def main() -> None:
        calls = Calls()
        runner = calls.runner(HealthConfig(checks=(check("noisy", script, timeout=5.0),)))
        runner.start()
        try:
            await until(lambda: calls.faults.get("check:noisy") is not None)
            fault = calls.faults["check:noisy"]
            assert fault is not None and fault.startswith("failing: exit status 1: xxx")
            assert len(fault) <= len("failing: ") + DETAIL_LIMIT
        finally:
            runner.close()
            await runner.wait_closed()

    asyncio.run(main())


def test_a_command_that_cannot_start_fails_with_the_reason() -> None:
    cfg = CheckConfig("gone", ("/nonexistent/check",), CheckTiming(0.5, 0.5, 1, 1))

    async def main() -> None:
        calls = Calls()
        runner = calls.runner(HealthConfig(checks=(cfg,)))
        runner.start()
        try:
            await until(lambda: calls.faults.get("check:gone") is not None)
            assert "cannot run /nonexistent/check" in str(calls.faults["check:gone"])
        finally:
            runner.close()
            await runner.wait_closed()

    asyncio.run(main())


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="raw ICMP sockets need root")


def nexthops(*targets: str, only_if_a_peer_reaches: bool = True) -> HealthConfig:
    addrs = tuple(ipaddress.ip_address(t) for t in targets)
    return HealthConfig(
        nexthops=NexthopConfig(
            CheckTiming(interval=0.05, timeout=0.05, rise=1, fall=1),
            only_if_a_peer_reaches,
            (("loop", addrs),),
        )
    )


@needs_root
def test_a_next_hop_that_answers_echo_keeps_the_node_fit() -> None:
    async def main() -> None:
        calls = Calls()
        runner = calls.runner(nexthops("127.0.0.1"), (LOOP_ZONE,))
        runner.start()
        try:
            await until(lambda: runner.checks["nexthop:loop"].stats["successes"] >= 3)
            assert runner.status()["nexthop:loop"]["detail"] == "127.0.0.1 answers"
            assert calls.faults["nexthop"] is None and calls.nexthops_ok[-1] is True
        finally:
            runner.close()
            await runner.wait_closed()

    asyncio.run(main())


@needs_root
def test_a_lost_next_hop_steps_back_only_while_a_peer_reaches_its_own() -> None:
    # lo has no global IPv6 address of its own: nothing can be sent, so the
    # zone's next hop is lost at once (and no packet leaves)
    async def main() -> None:
        calls = Calls(peers_reach=False)
        runner = calls.runner(nexthops("2001:db8::fe"), (LOOP_ZONE,))
        runner.start()
        try:
            await until(lambda: runner.status()["nexthop:loop"]["kept_buckets"])
            assert calls.nexthops_ok[-1] is False  # the peers are told
            assert calls.faults["nexthop"] is None  # but nobody else reaches theirs
            calls.peers_reach = True
            await until(lambda: calls.faults["nexthop"] is not None)
            assert calls.faults["nexthop"] == "zone loop: no own IPv6 address on lo"
            calls.peers_reach = False  # the last peer lost its own too: come back
            await until(lambda: calls.faults["nexthop"] is None)
        finally:
            runner.close()
            await runner.wait_closed()

    asyncio.run(main())


@needs_root
def test_kept_buckets_are_given_away_only_if_no_own_recovery_follows_a_peers() -> None:
    """A next hop lost by every node comes back to each a round apart: the
    first peer to reach its own again must not make this node step back for
    the moment its own check still needs (NEXTHOP_CONFIRM_INTERVALS rounds);
    a peer that reaches again for longer than that does."""

    async def main() -> None:
        calls = Calls(peers_reach=False)
        runner = calls.runner(nexthops("2001:db8::fe"), (LOOP_ZONE,))
        runner.start()
        try:
            await until(lambda: runner.status()["nexthop:loop"]["kept_buckets"])
            # a peer's flag for less than the grace (2 rounds of 50 ms): kept throughout
            calls.peers_reach = True
            await asyncio.sleep(0.03)
            calls.peers_reach = False
            await asyncio.sleep(0.3)
            assert calls.faults["nexthop"] is None
            # for longer: given away, no sooner than the grace
            calls.peers_reach = True
            since = time.monotonic()
            await until(lambda: calls.faults["nexthop"] is not None)
            assert time.monotonic() - since >= 2 * 0.05 - 0.01
        finally:
            runner.close()
            await runner.wait_closed()

    asyncio.run(main())
