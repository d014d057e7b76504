"""When the kernel refuses the agent's work: retry a little, then step back.

The runtime writes the Node's decisions into the kernel (the owned buckets,
injected connections). A write that fails leaves a node that has announced
buckets its data plane does not forward: the cluster thinks traffic is
handled that is dropped. This object decides, with time passed in, what the
runtime does about it:

    write fails        -> retry after each delay in RETRY_DELAYS_S (in line),
                          unless the kernel denies it for good (is_final)
    still failing      -> `failed()`: the fault is set ("kernel" watcher in
                          own_status), the node gives its buckets away, and a
                          probe is scheduled after the next backoff step
    probe due          -> `probe_due()`: the runtime repairs what it can
                          (ruleset, owned set) and tries a harmless write
    probe succeeds     -> `probe_result(None)`: fault cleared, the node rejoins
    probe fails        -> the next, longer backoff step

The backoff climbs (PROBE_BACKOFF_S) so that a kernel that refuses again
after each rejoin does not move buckets back and forth every second; it falls
back to its first step only after HEALTHY_RESET_S without a failure.
"""

from __future__ import annotations

import errno
import os

# In-line retries of one kernel write, in seconds after the failed attempt:
# three attempts within about 50 ms plus the writes' own time. The event loop
# waits for a release of buckets (runtime._perform), so these delays must stay
# far below the heartbeat timeout (3 x 50 ms in the lab).
RETRY_DELAYS_S = (0.01, 0.03)
# Refusals that no retry within milliseconds can change: the kernel denies the
# agent the operation itself (another program's table with `flags owner`, a
# missing capability, an LSM). They are tried once (kernel_work.retrying):
# retrying only delays the step back, and every in-line attempt is an `nft`
# process, 100 ms and more on a loaded machine, while nobody forwards the
# node's buckets.
FINAL_REFUSALS = (os.strerror(errno.EPERM), os.strerror(errno.EACCES))
# Seconds from a step back to the first probe, then between failed probes.
PROBE_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
# A step back this long after the last failure starts the backoff afresh.
HEALTHY_RESET_S = 60.0


def is_final(problem: str) -> bool:
    """True when `problem` names a refusal that retrying cannot change."""
    return any(words in problem for words in FINAL_REFUSALS)


def attempts_for(problem: str) -> int:
    """How often a kernel write that failed with `problem` was attempted."""
    return 1 if is_final(problem) else 1 + len(RETRY_DELAYS_S)


class KernelGuard:
    def __init__(self) -> None:
        self.fault: str | None = None
        self.step_backs = 0  # how often the node stepped back (a metric)
        self.probes_failed = 0
        self._level = 0  # index into PROBE_BACKOFF_S of the next wait
        self._next_probe: float | None = None
        self._probing = False
        self._last_failure: float | None = None

    def failed(self, what: str, detail: str, now: float) -> str:
        """A kernel write failed after its retries. Returns the fault to report.
        While the node is already stepped back, only the text changes: the
        probe keeps its schedule."""
        if self._last_failure is not None and now - self._last_failure >= HEALTHY_RESET_S:
            self._level = 0
        self._last_failure = now
        tries = attempts_for(detail)
        self.fault = f"{what} failed {tries} time{'s' if tries > 1 else ''}: {detail}"
        if self._next_probe is None:
            self.step_backs += 1
            self._schedule(now)
        return self.fault

    def probe_due(self, now: float) -> bool:
        """True once per due probe: the caller runs it and reports the result."""
        if self._probing or self._next_probe is None or now < self._next_probe:
            return False
        self._probing = True
        return True

    def probe_result(self, problem: str | None, now: float) -> str | None:
        """The probe's outcome (None: the kernel took every write). Returns the
        fault to report: None when the node may own buckets again."""
        self._probing = False
        if problem is None:
            self.fault = None
            self._next_probe = None
            return None
        self.probes_failed += 1
        self._last_failure = now
        self.fault = f"kernel still refuses: {problem}"
        self._schedule(now)
        return self.fault

    def next_probe_in(self, now: float) -> float | None:
        return None if self._next_probe is None else max(0.0, self._next_probe - now)

    def _schedule(self, now: float) -> None:
        self._next_probe = now + PROBE_BACKOFF_S[self._level]
        self._level = min(self._level + 1, len(PROBE_BACKOFF_S) - 1)
