"""Runtime._keep_fence_up reads the ruleset watch in the same wakeup as the
fence refresh: the refresh is an nftables transaction whose notifications the
kernel queues on the watch during the send, and left for the selector they
cost an event loop round of their own per heartbeat (issue 19).

The Runtime is built without its constructor (which opens sockets, the state
directory and keys): only what the fence and the watch use is set."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from availability_manager.daemon.runtime import RULESET_CHECK_DELAY_S, Runtime

FENCE_TIMEOUT = 0.125


class Loop:
    def __init__(self) -> None:
        self.now = 100.0
        self.later: list[tuple[float, Callable[..., None], tuple[Any, ...]]] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        self.later.append((delay, fn, args))


class Watch:
    """The notification socket: `queued` is what the kernel put there."""

    def __init__(self) -> None:
        self.queued: list[str] = []
        self.reads = 0

    def changed(self) -> bool:
        self.reads += 1
        got, self.queued = self.queued, []
        return any(n != "own-fence" for n in got)  # set elements are ignored


class DataPlane:
    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.refreshes: list[float] = []

    def keep_alive(self, timeout_s: float | None = None) -> None:
        assert timeout_s is not None
        self.refreshes.append(timeout_s)
        self.watch.queued.append("own-fence")  # as nf_tables does, during the send


class NodeStub:
    last_heartbeat_sent: float | None = None


def runtime(watch: Watch | None) -> tuple[Runtime, Loop, DataPlane, NodeStub]:
    rt = object.__new__(Runtime)
    loop, dp, node = Loop(), DataPlane(watch or Watch()), NodeStub()
    rt.loop = loop  # type: ignore[assignment]
    rt.dataplane = dp  # type: ignore[assignment]
    rt.node = node  # type: ignore[assignment]
    rt.ruleset_watch = watch
    rt._fence_timeout = FENCE_TIMEOUT
    rt._fenced_from = None
    rt._fence_held = False
    rt._ruleset_check_since = None
    return rt, loop, dp, node


def test_the_refresh_notifications_are_read_in_the_same_wakeup() -> None:
    watch = Watch()
    rt, loop, dp, node = runtime(watch)
    node.last_heartbeat_sent = loop.now
    rt._keep_fence_up(loop.now)
    assert dp.refreshes == [FENCE_TIMEOUT]
    assert watch.queued == [], "the refresh's notifications were left for another wakeup"
    assert watch.reads == 1
    assert loop.later == [], "the agent's own fence refresh queued a ruleset check"

    # No heartbeat since: no refresh, no read.
    rt._keep_fence_up(loop.now + 0.01)
    assert len(dp.refreshes) == 1 and watch.reads == 1


def test_a_change_by_someone_else_read_with_the_refresh_queues_a_check() -> None:
    watch = Watch()
    rt, loop, _dp, node = runtime(watch)
    watch.queued.append("nft flush ruleset")
    node.last_heartbeat_sent = loop.now
    rt._keep_fence_up(loop.now)
    assert watch.queued == []
    assert rt._ruleset_check_since == loop.now
    assert [(delay, fn.__name__) for delay, fn, _ in loop.later] == [
        (RULESET_CHECK_DELAY_S, "_submit_unless_stopped")
    ]


def test_no_watch_no_read() -> None:
    rt, loop, dp, node = runtime(None)
    node.last_heartbeat_sent = loop.now
    rt._keep_fence_up(loop.now)  # clusterdev: no watch
    assert len(dp.refreshes) == 1
    assert loop.later == []
