"""What a fault did to the flows, from the traced client's gap table: which
flows stalled, and when the last of them moved again. Pure functions.

A flow is *stalled by the fault* when one of its gaps (time between two
successive answers) contains the fault or begins within `window_s` after it,
and is longer than a healthy gap (one interval) by more than `excess_s`
(50 ms: the issue's "stalled > 50 ms"). Its *recovery* is the end of that gap
(the first answer after the outage) minus the fault time. The failover time
is the latest recovery of any stalled flow; a flow still waiting at the end
of the run has no recovery and counts as unrecovered.

Resolution: a flow only shows it moves again when its next record is
answered, so recovery times are late by up to one interval.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping
from typing import Any

Gap = tuple[float, float | None]


@dataclasses.dataclass(frozen=True)
class FaultImpact:
    flows: int  # flows of the kinds looked at
    stalled: int
    unrecovered: int
    recoveries_s: tuple[float, ...]  # per stalled, recovered flow
    longest_stall_s: float
    # The stalling gap of every stalled flow, relative to the fault: (start, end or None)
    stall_gaps: tuple[tuple[float, float | None], ...] = ()

    @property
    def failover_s(self) -> float | None:
        """Fault to the last stalled flow moving again; None if nothing stalled."""
        return max(self.recoveries_s) if self.recoveries_s else None

    @property
    def stalled_share(self) -> float:
        return self.stalled / self.flows if self.flows else 0.0


def impact(
    gaps: Mapping[int, list[Gap]],
    flows: int,
    fault_at: float,
    interval_s: float,
    window_s: float = 1.0,
    excess_s: float = 0.050,
) -> FaultImpact:
    stalled = unrecovered = 0
    recoveries: list[float] = []
    chosen: list[tuple[float, float | None]] = []
    longest = 0.0
    for flow_gaps in gaps.values():
        worst: Gap | None = None
        for start, end in flow_gaps:
            if start > fault_at + window_s or (end is not None and end <= fault_at):
                continue  # before the fault, or long after it: not the fault's doing
            length = (end if end is not None else float("inf")) - start
            if length <= interval_s + excess_s:
                continue
            if (
                worst is None
                or worst[1] is not None
                and (end is None or end > worst[1])
            ):
                worst = (start, end)
        if worst is None:
            continue
        stalled += 1
        chosen.append(
            (worst[0] - fault_at, None if worst[1] is None else worst[1] - fault_at)
        )
        if worst[1] is None:
            unrecovered += 1
        else:
            recoveries.append(worst[1] - fault_at)
            longest = max(longest, worst[1] - worst[0])
    return FaultImpact(
        flows,
        stalled,
        unrecovered,
        tuple(sorted(recoveries)),
        longest,
        tuple(sorted(chosen)),
    )


def recovery_ms(run: dict[str, Any]) -> float | None:
    """The fault to the last stalled flow moving again: 0 if no flow stalled
    (a hitless drain), None if a stalled flow never moved again."""
    if run["unrecovered_flows"]:
        return None
    return run["failover_ms"] or 0.0


def med_worst(values: list[float | None]) -> tuple[str, str]:
    """(median, worst) of recovery times as text; None is a flow that never
    moved again, which makes the worst "unrecovered"."""
    known = [v for v in values if v is not None]
    if not known:
        return "n/a", "n/a"
    worst = "unrecovered" if len(known) < len(values) else f"{max(known):.0f} ms"
    return f"{statistics.median(known):.0f} ms", worst
