"""The data plane's commands run at the agent's own scheduling priority.

The agent asks for SCHED_RR with SCHED_RESET_ON_FORK (daemon/main.py): the
processes it starts run at normal priority, so that an operator's health
check or notify hook can never hold a core against the agent's heartbeats.
The data plane's own commands (`nft`, `ip`, `modprobe`) are another matter:
a restore of a flushed ruleset and a step back from a refusing kernel wait
for them while the node's buckets are not forwarded, and on a busy machine a
normal-priority `nft` waits behind the very traffic it should let through.
They are started through `chrt` with the agent's policy and priority.
Read-only listings (`nft -j list`: status, counters, the ruleset check) are
not: a status poll every second or two would run `nft` processes at the
heartbeats' own priority, and on two busy cores an agent's loop can then wait
a whole round-robin slice (100 ms) for them; the false takeover soak's paired
112 ms stalls were suspected of this (docs/benchmarks/handover_drain.md).
nftables.py starts those at normal priority.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

_FLAGS = {os.SCHED_RR: "-r", os.SCHED_FIFO: "-f"}


def at_own_priority(argv: Sequence[str]) -> list[str]:
    """`argv`, prefixed with `chrt` when this process runs under a realtime
    policy its children do not inherit (SCHED_RESET_ON_FORK); as it is
    otherwise (they inherit it, or there is nothing to keep)."""
    raw = os.sched_getscheduler(0)
    flag = _FLAGS.get(raw & ~os.SCHED_RESET_ON_FORK)
    if flag is None or not raw & os.SCHED_RESET_ON_FORK:
        return list(argv)
    priority = os.sched_getparam(0).sched_priority
    return ["chrt", flag, str(priority), *argv]
