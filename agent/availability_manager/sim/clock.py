"""The simulator's virtual clock: a heap of timed actions.

Nothing in the simulator reads a real clock. Every action (a datagram
arriving, a node's timer, a workload step, a scripted fault) is scheduled at a
virtual time; `run_until` pops them in (time, insertion order) order, so a run
is a pure function of the seed.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

Action = Callable[[], object]


class Scheduler:
    """A deterministic discrete-event queue. Ties are broken by insertion order."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self._heap: list[tuple[float, int, Action]] = []
        self._seq = 0
        self.steps = 0

    def at(self, when: float, action: Action) -> None:
        """Run `action` at virtual time `when` (never in the past)."""
        when = max(when, self.now)
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, action))

    def after(self, delay: float, action: Action) -> None:
        self.at(self.now + delay, action)

    def next_time(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def step(self) -> bool:
        """Run the earliest action; False when the queue is empty."""
        if not self._heap:
            return False
        when, _, action = heapq.heappop(self._heap)
        self.now = when
        self.steps += 1
        action()
        return True

    def run_until(self, end: float, after_step: Callable[[], bool] | None = None) -> None:
        """Run every action due at or before `end`; `after_step` returning False stops early."""
        while self._heap and self._heap[0][0] <= end:
            self.step()
            if after_step is not None and not after_step():
                return
        self.now = max(self.now, end)
