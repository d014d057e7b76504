"""Health checks as pure state machines: when to run, when to give up, and
the rise/fall verdict.

A check is anything the daemon can run that ends in success or failure: an
operator's command, or a round of ICMP echoes to a zone's next hops. This
module owns the schedule and the verdict of each, and nothing else: no
process, socket or clock. Time comes in as `now`; what to do comes out of
`next_event()`; the daemon's adapter (`daemon/health.py`) starts and kills
the runs and feeds their results back.

Per check (events in brackets):

    state     input                                    next state
    --------  ---------------------------------------  -------------------------------
    any       timer, idle, due                         same, running [Run]
    any       timer, running, past the timeout         same, one failure [Kill]
    any       result while running                     same, one success or failure
    any       result while not running (late, killed)  unchanged (counted "late")
    pending   first success / first failure            healthy / failing [Verdict]
    healthy   `fall` failures in a row                 failing [Verdict]
    failing   `rise` successes in a row                healthy [Verdict]

The first result decides at once: a starting node neither waits `rise`
results before it may own buckets nor claims buckets for `fall` results
on a check that has never passed. After that, rise and fall keep one lost
probe or one slow command from moving buckets, and a check that flaps from
moving them on every flap.

Runs start on a fixed grid (`interval` after the previous start), so a slow
run does not slow the schedule down; a run never overlaps the next one,
because the timeout is at most the interval (checked here and in the config).
"""

from __future__ import annotations

import collections
import dataclasses
import enum


class Health(enum.Enum):
    PENDING = "pending"
    HEALTHY = "healthy"
    FAILING = "failing"


@dataclasses.dataclass(frozen=True, slots=True)
class Run:
    """Start the check now; report with `result(...)` before the timeout."""

    check: str


@dataclasses.dataclass(frozen=True, slots=True)
class Kill:
    """The run passed its timeout and counts as failed: stop it."""

    check: str


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """The check's verdict changed (never emitted for a repeat)."""

    check: str
    healthy: bool
    detail: str  # the result that decided it, for logs and status


HealthEvent = Run | Kill | Verdict


@dataclasses.dataclass(frozen=True, slots=True)
class CheckTiming:
    interval: float
    timeout: float
    rise: int
    fall: int

    def __post_init__(self) -> None:
        if not self.interval > 0:
            raise ValueError(f"interval must be positive, got {self.interval}")
        if not 0 < self.timeout <= self.interval:
            raise ValueError(
                f"timeout must be positive and at most the interval ({self.interval}), "
                f"got {self.timeout}"
            )
        if self.rise < 1 or self.fall < 1:
            raise ValueError(f"rise and fall must be at least 1, got {self.rise}, {self.fall}")


class HealthCheck:
    """One check's schedule and verdict (see the module docstring)."""

    def __init__(self, name: str, timing: CheckTiming, now: float) -> None:
        self.name = name
        self.timing = timing
        self.health = Health.PENDING
        self.detail = "no result yet"  # the latest result's, for status
        self.stats: collections.Counter[str] = collections.Counter()
        self._next_start = now  # the first run at once
        self._deadline: float | None = None  # set while a run is under way
        self._successes = 0  # in a row
        self._failures = 0  # in a row
        self._events: collections.deque[HealthEvent] = collections.deque()

    @property
    def running(self) -> bool:
        return self._deadline is not None

    def next_timer(self) -> float:
        return self._deadline if self._deadline is not None else self._next_start

    def handle_timer(self, now: float) -> None:
        if self._deadline is not None:
            if now < self._deadline:
                return
            self._deadline = None
            self.stats["timeouts"] += 1
            self._events.append(Kill(self.name))
            self._record(False, f"no result within {self.timing.timeout:g} s")
        if now >= self._next_start:
            # on the grid; a run that was held up skips the slots it missed
            while self._next_start <= now:
                self._next_start += self.timing.interval
            self._deadline = now + self.timing.timeout
            self.stats["runs"] += 1
            self._events.append(Run(self.name))

    def result(self, ok: bool, detail: str, now: float) -> None:
        """The outcome of the run under way (`detail`: what it said, short)."""
        if self._deadline is None:
            self.stats["late"] += 1  # killed at its timeout: that counted already
            return
        self._deadline = None
        self._record(ok, detail)

    def next_event(self) -> HealthEvent | None:
        return self._events.popleft() if self._events else None

    def _record(self, ok: bool, detail: str) -> None:
        self.stats["successes" if ok else "failures"] += 1
        if ok:
            self._successes, self._failures = self._successes + 1, 0
            turns = self.health is Health.PENDING or (
                self.health is Health.FAILING and self._successes >= self.timing.rise
            )
        else:
            self._successes, self._failures = 0, self._failures + 1
            turns = self.health is Health.PENDING or (
                self.health is Health.HEALTHY and self._failures >= self.timing.fall
            )
        self.detail = detail
        if turns:
            self.health = Health.HEALTHY if ok else Health.FAILING
            self._events.append(Verdict(self.name, ok, detail))
