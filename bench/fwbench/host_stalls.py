"""What held the agents back in a soak, as far as they and the machine can
tell: the stalls of their own event loops (logged by the agent) and the
time the hypervisor gave this VM's CPUs to others (steal, /proc/stat).

A SCHED_RR agent cannot be preempted by the soak's busy loops; when its
heartbeats still go out late, its log says how long its loop stood still
(runtime._clock: any gap over two heartbeat intervals), and steal says
whether the host, not anything inside the VM, took the time."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

NEEDLE = "event loop stalled"
_STALL = re.compile(NEEDLE + r" (\d+) ms")


def loop_stalls_ms(log_lines: Iterable[str]) -> list[int]:
    """The stall lengths in the agent's log lines (other lines ignored)."""
    return [int(m.group(1)) for line in log_lines if (m := _STALL.search(line))]


def stall_sentence(r: dict[str, Any]) -> str:
    """The agents' own loop stalls (from their logs) and the hypervisor's
    steal time: a stall a SCHED_RR agent suffers with the busy loops unable
    to preempt it is the kernel's or the host's, and steal says which."""
    stalls = r.get("loop_stalls_ms", {})
    every = sorted((ms for v in stalls.values() for ms in v), reverse=True)
    text = (
        f"The agents' event loops logged {len(every)} stalls of over two heartbeat "
        "intervals"
        + (f" (longest {', '.join(f'{ms} ms' for ms in every[:3])})" if every else "")
        + "; "
    )
    steal = r.get("machine_steal_share")
    if steal is None:
        return text + "steal time was not recorded."
    worst = max((p.get("steal", 0.0) for p in r.get("polls", [])), default=0.0)
    return text + (
        f"the hypervisor took {steal:.1%} of this VM's CPU time over the soak (steal), "
        f"at most {worst:.1%} in one 2 s sample."
    )
