"""Notify hooks: which call each change makes, the config's checks, and the
runner (real processes, real timeouts, the event loop kept free)."""

from __future__ import annotations

import asyncio
import copy
import os
import stat
from pathlib import Path

import pytest
from test_config import GOOD, parse

from availability_manager import node_events as ev
from availability_manager.daemon.config import ConfigError, reload_incompatible
from availability_manager.daemon.notify_hooks import (
    HOOK_EVENTS,
    MAX_QUEUED,
    HookCall,
    HookRunner,
    NotifyHook,
    call_for_event,
    call_for_fault,
    call_for_phase,
    executable_problem,
)
from availability_manager.types import node_id_from_address

PEER = node_id_from_address("192.0.2.2")


def test_node_events_make_calls_with_their_details() -> None:
    ready = call_for_event(ev.Ready(owned=frozenset(range(5)), members=(PEER,)))
    assert ready == HookCall("ready", (("owned", "5"),))
    owner = call_for_event(
        ev.ActiveBucketsChanged(
            active=frozenset({1, 2, 3, 9}), added=frozenset({9}), removed=frozenset({4, 5})
        )
    )
    assert owner is not None
    assert owner.argv() == ["owner", "4", "9", "4-5"]
    assert owner.env("192.0.2.1") == {
        "FWCLUSTER_EVENT": "owner",
        "FWCLUSTER_NODE": "192.0.2.1",
        "FWCLUSTER_OWNED": "4",
        "FWCLUSTER_ADDED": "9",
        "FWCLUSTER_REMOVED": "4-5",
    }
    down = call_for_event(ev.NodeDown(node=PEER, reason="timeout"))
    assert down is not None and down.argv() == ["peer_down", "192.0.2.2", "timeout"]
    up = call_for_event(ev.NodeUp(node=PEER, incarnation=3))
    assert up is not None and up.argv() == ["peer_up", "192.0.2.2", "joined"]
    oos = call_for_event(ev.OutOfSync(peer=PEER))
    assert oos is not None and oos.argv() == ["out_of_sync", "192.0.2.2"]
    # data-plane orders are not the operator's business
    assert call_for_event(ev.InjectConnections(conns=(), buckets=frozenset())) is None
    assert call_for_event(ev.OwnedBucketsChanged(owned=frozenset())) is None


def test_phase_and_fault_calls() -> None:
    assert call_for_phase("member", "draining") == HookCall("draining", ())
    assert call_for_phase("draining", "member") == HookCall("member", ())
    assert call_for_phase("member", "member") is None
    assert call_for_phase("member", "leaving") == HookCall("leaving", ())
    assert call_for_phase("leaving", "left") == HookCall("left", ())
    assert call_for_phase("joining", "joining") is None
    raised = call_for_fault("links", None, "interfaces down: out0")
    assert raised is not None
    assert raised.argv() == ["fault", "raised", "links", "interfaces down: out0"]
    changed = call_for_fault("links", "interfaces down: out0", "interfaces down: out0, in0")
    assert changed is not None and changed.argv()[1] == "raised"
    cleared = call_for_fault("links", "interfaces down: out0", None)
    assert cleared is not None and cleared.argv() == ["fault", "cleared", "links", ""]
    assert call_for_fault("kernel", None, None) is None
    assert call_for_fault("kernel", "x", "x") is None


def script(tmp_path: Path, body: str, name: str = "hook.sh", mode: int = 0o755) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(mode)
    return path


def test_executable_problems_are_named(tmp_path: Path) -> None:
    assert (
        executable_problem(tmp_path / "none") == f"{tmp_path / 'none'}: No such file or directory"
    )
    assert executable_problem(tmp_path) == f"{tmp_path} is not a regular file"
    assert "is not executable" in str(executable_problem(script(tmp_path, "", "a", 0o644)))
    assert "writable by group or others" in str(
        executable_problem(script(tmp_path, "", "b", 0o775))
    )
    assert "writable by group or others" in str(
        executable_problem(script(tmp_path, "", "c", 0o757))
    )
    good = script(tmp_path, "", "d")
    assert executable_problem(good) is None
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert "writable by others" in str(executable_problem(script(shared, "", "e")))
    shared.chmod(0o1777)  # sticky, like /tmp: others cannot replace our file
    assert executable_problem(shared / "e") is None


def with_notify(value: object) -> dict[str, object]:
    data = copy.deepcopy(GOOD)
    data["notify"] = value
    return data


def test_config_notify_section(tmp_path: Path) -> None:
    hook = script(tmp_path, "exit 0\n")
    cfg = parse(with_notify([{"command": str(hook)}]))
    assert cfg.notify == (NotifyHook((str(hook),), frozenset(HOOK_EVENTS), 10.0),)
    cfg = parse(
        with_notify(
            [{"command": [str(hook), "--quiet"], "events": ["fault", "owner"], "timeout_s": 2.5}]
        )
    )
    assert cfg.notify == (NotifyHook((str(hook), "--quiet"), frozenset({"fault", "owner"}), 2.5),)
    assert parse(GOOD).notify == ()
    # notify changes on a reload (SIGHUP); nothing else has to restart for it
    assert reload_incompatible(parse(GOOD), cfg) == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("/bin/true", "notify: expected a list of at most 16 hooks"),
        ([{"command": "hook.sh"}], r"notify\[0\].command: expected an absolute path"),
        ([{"command": []}], r"notify\[0\].command: expected a path, or a list"),
        ([{"command": "/nonexistent/hook"}], "/nonexistent/hook: No such file"),
        ([{"command": "HOOK", "events": ["reboot"]}], r"notify\[0\].events\[0\]: expected one"),
        ([{"command": "HOOK", "events": []}], r"notify\[0\].events: expected a non-empty"),
        ([{"command": "HOOK", "timeout_s": 0}], r"notify\[0\].timeout_s: expected a number"),
        ([{"command": "HOOK", "timeout_s": True}], r"notify\[0\].timeout_s: expected a number"),
        ([{"command": "HOOK", "when": "always"}], r"notify\[0\].when: unknown key"),
        ([{"command": "WRITABLE"}], "is writable by group or others"),
    ],
)
def test_config_notify_mistakes_are_named(tmp_path: Path, value: object, message: str) -> None:
    hook = script(tmp_path, "exit 0\n")
    writable = script(tmp_path, "exit 0\n", "w.sh", 0o777)
    text = repr(value).replace("'HOOK'", repr(str(hook))).replace("'WRITABLE'", repr(str(writable)))
    with pytest.raises(ConfigError, match=message):
        parse(with_notify(eval(text)))  # the test's own literals


# -- the runner ------------------------------------------------------------------------


def recorder(tmp_path: Path, extra: str = "") -> tuple[Path, Path]:
    """A hook appending its arguments and two variables to a log, one line a call."""
    log = tmp_path / "calls.log"
    hook = script(
        tmp_path,
        extra + f'echo "$* | $FWCLUSTER_EVENT $FWCLUSTER_NODE $FWCLUSTER_WATCHER" >> {log}\n',
    )
    return hook, log


def run_calls(runner: HookRunner, calls: list[HookCall], grace: float = 5.0) -> None:
    async def go() -> None:
        for call in calls:
            runner.fire(call)
        await runner.close(grace)

    asyncio.run(go())


def test_hooks_run_in_order_with_arguments_and_environment(tmp_path: Path) -> None:
    hook, log = recorder(tmp_path)
    runner = HookRunner((NotifyHook((str(hook),)),), "192.0.2.1")
    calls = [
        HookCall("draining", ()),
        call_for_fault("links", None, "interfaces down: out0"),
        HookCall("member", ()),
    ]
    run_calls(runner, [c for c in calls if c is not None])
    assert log.read_text().splitlines() == [
        "draining | draining 192.0.2.1 ",
        "fault raised links interfaces down: out0 | fault 192.0.2.1 links",
        "member | member 192.0.2.1 ",
    ]
    assert runner.stats() == {"notify_run": 3}


def test_a_hook_gets_only_the_events_it_asked_for(tmp_path: Path) -> None:
    hook, log = recorder(tmp_path)
    runner = HookRunner((NotifyHook((str(hook), "fixed"), frozenset({"fault"})),), "n")
    run_calls(runner, [HookCall("draining", ()), HookCall("fault", (("fault", "cleared"),))])
    assert log.read_text().splitlines() == ["fixed fault cleared | fault n "]


def test_a_hanging_hook_is_killed_and_the_next_call_still_runs(tmp_path: Path) -> None:
    started = tmp_path / "started"
    hook, log = recorder(
        tmp_path,
        f'if [ "$2" = hang ]; then touch {started}; sleep 30; echo late >> {tmp_path}/late; fi\n',
    )
    runner = HookRunner((NotifyHook((str(hook),), timeout_s=0.3),), "n")
    run_calls(runner, [HookCall("owner", (("owned", "hang"),)), HookCall("member", ())])
    assert started.exists() and not (tmp_path / "late").exists()
    assert log.read_text().splitlines() == ["member | member n "]  # no "late": killed
    assert runner.stats() == {"notify_timeouts": 1, "notify_run": 1}


def test_a_failing_hook_is_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hook = script(tmp_path, 'echo "no route to pager" ; exit 3\n')
    runner = HookRunner((NotifyHook((str(hook),)),), "n")
    run_calls(runner, [HookCall("left", ())])
    assert runner.stats() == {"notify_failed": 1}
    assert "exit 3: no route to pager" in caplog.text


def test_hooks_never_block_the_event_loop_and_a_full_queue_drops(tmp_path: Path) -> None:
    hook = script(tmp_path, "sleep 0.2\n")
    runner = HookRunner((NotifyHook((str(hook),), timeout_s=5),), "n")
    lateness: list[float] = []

    async def go() -> None:
        loop = asyncio.get_running_loop()
        for i in range(MAX_QUEUED + 10):
            runner.fire(HookCall("owner", (("owned", str(i)),)))
        for _ in range(10):  # a heartbeat timer every 20 ms meanwhile
            due = loop.time() + 0.02
            await asyncio.sleep(0.02)
            lateness.append(loop.time() - due)
        await runner.close(grace=0)

    asyncio.run(go())
    # fire() queues synchronously: MAX_QUEUED wait, the rest are dropped
    assert runner.stats()["notify_dropped"] == 10
    assert max(lateness) < 0.15  # a blocking run would be 0.2 s late at once


def test_a_hook_that_cannot_start_is_counted(tmp_path: Path) -> None:
    hook = script(tmp_path, "")
    runner = HookRunner((NotifyHook((str(hook),)),), "n")
    os.chmod(hook, stat.S_IRUSR)  # became unrunnable after the config was checked
    run_calls(runner, [HookCall("ready", ())])
    assert runner.stats() == {"notify_failed": 1}
