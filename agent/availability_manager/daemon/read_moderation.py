"""Interrupt moderation for the event loop's busiest sockets.

At thousands of connections per second the conntrack event socket and the
sync socket become readable again right after each drain, and every wakeup
costs an epoll round, a failing recv (the drain's end) and the callback's own
setup: in the lab most of those wakeups found one or two events (docs/
benchmarks.md, "Sync capacity"). A NIC's interrupt moderation and NAPI solve
the same problem: while a socket is busy, read it at most once per interval
and let the queue fill meanwhile. A quiet socket is read at once, so heartbeats
and the first events of a burst keep their latency; only a socket read less
than an interval ago waits, for the rest of that interval.

One read soon after a quiet one is not moderated: two peers' heartbeats a
moment apart are not a busy socket, and holding the second back cost an idle
agent two more wakeups and two epoll_ctl calls (the deferral and the timer
that ends it) for a wakeup it spared nobody (issue 19, docs/benchmarks/
lab_scale.md). A socket is busy once it was read twice within an interval;
from then on every read within an interval of the last one waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class ModeratedReader:
    """Calls `drain` when `fd` is readable, at most once per `interval_s`.

    While the wait runs the fd is off the selector (the kernel queues for us);
    `drain` must read everything that is queued, as a level-triggered reader's
    callback does."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        drain: Callable[[], None],
        interval_s: float,
    ) -> None:
        if interval_s < 0:
            raise ValueError("interval_s must not be negative")
        self._loop = loop
        self._fd = fd
        self._drain = drain
        self._interval_s = interval_s
        self._last_drain = float("-inf")
        # The last drain came less than an interval after the one before it
        # (or was deferred): the socket is busy, the next read may wait.
        self._busy = False
        self._deferred: asyncio.TimerHandle | None = None
        self._watching = False
        self.deferred_drains = 0  # wakeups held back (`busy_reads_deferred` in stats)

    def start(self) -> None:
        if not self._watching and self._deferred is None:
            self._loop.add_reader(self._fd, self._readable)
            self._watching = True

    def stop(self) -> None:
        if self._watching:
            self._loop.remove_reader(self._fd)
            self._watching = False
        if self._deferred is not None:
            self._deferred.cancel()
            self._deferred = None

    def _readable(self) -> None:
        now = self._loop.time()
        wait = self._last_drain + self._interval_s - now
        if wait <= 0 or not self._busy:
            self._busy = wait > 0  # the second read within an interval: busy
            self._run(now)
            return
        self._loop.remove_reader(self._fd)
        self._watching = False
        self.deferred_drains += 1
        self._deferred = self._loop.call_later(wait, self._resume)

    def _resume(self) -> None:
        self._deferred = None
        self._busy = True
        self._loop.add_reader(self._fd, self._readable)
        self._watching = True
        self._run(self._loop.time())

    def _run(self, now: float) -> None:
        self._last_drain = now
        self._drain()
