"""Runtime._pump sends a heartbeat's datagrams with the data plane's fence
mark, so their packets refresh the fence in the kernel on the way out
(dataplane/fence.py), and refreshes by netlink only what they did not: no
copy left, a fence held down after a stall, a backend without the mark.

The Runtime is built without its constructor (which opens sockets, the state
directory and keys): only what a pump uses is set."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from availability_manager.daemon.runtime import Runtime
from availability_manager.node import Destination

MARK = 0x66776366
FENCE_TIMEOUT = 0.125


class Loop:
    def __init__(self) -> None:
        self.now = 100.0

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, fn: Any) -> Any:
        return None


class Node:
    """Sends a heartbeat when `heartbeat_due` (last_heartbeat_sent moves),
    else only data."""

    def __init__(self) -> None:
        self.last_heartbeat_sent: float | None = None
        self.heartbeat_due = True
        self.relearning = False

    def next_event(self) -> None:
        return None

    def phase(self) -> str:
        return "member"

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Destination]]:
        if self.heartbeat_due:
            self.last_heartbeat_sent = now
            return [(b"heartbeat+state", Destination.SYNC), (b"heartbeat", Destination.ZONES)]
        return [(b"data", Destination.SYNC)]

    def next_timer(self) -> None:
        return None


class Sock:
    def __init__(self, leaves: bool = True) -> None:
        self.sent: list[tuple[bytes, int]] = []
        self.leaves = leaves

    def send(self, datagram: bytes, mark: int = 0) -> bool:
        self.sent.append((datagram, mark))
        return self.leaves


class DataPlane:
    def __init__(self, fence_mark: int) -> None:
        self.fence_mark = fence_mark
        self.refreshes: list[float] = []

    def keep_alive(self, timeout_s: float | None = None) -> None:
        assert timeout_s is not None
        self.refreshes.append(timeout_s)


def runtime(
    fence_mark: int = MARK, sync_leaves: bool = True, zone_leaves: bool = True
) -> tuple[Runtime, Node, Sock, Sock, DataPlane]:
    rt = object.__new__(Runtime)
    node, sync, zone, dp = Node(), Sock(sync_leaves), Sock(zone_leaves), DataPlane(fence_mark)
    rt.loop = Loop()  # type: ignore[assignment]
    rt.node = node  # type: ignore[assignment]
    rt.sync = sync  # type: ignore[assignment]
    rt.zone_sockets = [zone]  # type: ignore[list-item]
    rt.dataplane = dp  # type: ignore[assignment]
    rt.ruleset_watch = None
    rt.counters = Counter()
    rt._phase = "member"
    rt._timer = None
    rt._fence_timeout = FENCE_TIMEOUT
    rt._fenced_from = None
    rt._fence_held = False
    rt._last_ran, rt._stall_after = rt.loop.now, 1.0  # type: ignore[attr-defined]
    return rt, node, sync, zone, dp


def test_a_heartbeat_refreshes_the_fence_with_its_own_packets() -> None:
    rt, _node, sync, zone, dp = runtime()
    rt._pump()
    assert sync.sent == [(b"heartbeat+state", MARK)]
    assert zone.sent == [(b"heartbeat", MARK)]
    assert dp.refreshes == [], "a marked heartbeat was refreshed by netlink as well"
    assert rt.counters["fence_heartbeats"] == 1


def test_datagrams_without_a_heartbeat_go_unmarked() -> None:
    rt, node, sync, _zone, dp = runtime()
    rt._pump()
    node.heartbeat_due = False
    rt._pump()
    assert sync.sent[-1] == (b"data", 0)
    assert dp.refreshes == [] and rt.counters["fence_heartbeats"] == 1


def test_one_copy_that_left_is_enough() -> None:
    rt, _node, _sync, _zone, dp = runtime(sync_leaves=False)
    rt._pump()  # the sync link is down; the zone copy went out, marked
    assert dp.refreshes == []


def test_a_heartbeat_none_of_whose_copies_left_is_refreshed_by_netlink() -> None:
    rt, _node, _sync, _zone, dp = runtime(sync_leaves=False, zone_leaves=False)
    rt._pump()
    assert dp.refreshes == [FENCE_TIMEOUT]
    assert rt.counters["fence_heartbeats"] == 0


def test_a_fence_held_after_a_stall_is_neither_marked_nor_refreshed() -> None:
    rt, node, sync, _zone, dp = runtime()
    rt._fence_held, node.relearning = True, True
    rt._pump()
    assert sync.sent == [(b"heartbeat+state", 0)]
    assert dp.refreshes == []
    # Relearned: the fence rises at once, from that heartbeat, by netlink.
    node.relearning, node.heartbeat_due = False, False
    rt.loop.now += 0.02  # type: ignore[attr-defined]
    rt._pump()
    assert dp.refreshes == [pytest.approx(FENCE_TIMEOUT - 0.02)]


def test_a_backend_without_the_mark_is_refreshed_by_netlink() -> None:
    rt, _node, sync, _zone, dp = runtime(fence_mark=0)
    rt._pump()
    assert sync.sent == [(b"heartbeat+state", 0)]
    assert dp.refreshes == [FENCE_TIMEOUT]
