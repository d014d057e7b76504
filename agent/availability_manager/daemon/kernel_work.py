"""Kernel writes as the runtime's worker thread does them: with bounded
retries, and a harmless write that tells a refusing kernel from a refused entry.

Runs on the worker thread (it sleeps between attempts); the decisions about
stepping back are kernel_guard.KernelGuard's, on the event loop.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Protocol

from ..connection import PROTO_UDP, Connection, Tuple
from .kernel_guard import RETRY_DELAYS_S, is_final

log = logging.getLogger("availability-manager")

# A UDP entry on a loopback address: it can never match forwarded traffic, and
# its mark is 0, so the agent does not sync it (cluster_relevance). Injected
# and deleted again to learn whether the kernel takes conntrack writes at all.
_PROBE_ADDR = ipaddress.IPv4Address("127.0.0.254").packed
PROBE_CONNECTION = Connection(
    PROTO_UDP, Tuple(_PROBE_ADDR, _PROBE_ADDR, 9, 9), Tuple(_PROBE_ADDR, _PROBE_ADDR, 9, 9)
)


class Injector(Protocol):
    refused: list[tuple[Connection, str]]

    def inject(self, conns: list[Connection]) -> int: ...
    def delete(self, conns: list[Connection]) -> int: ...


def retrying(what: str, attempt: Callable[[], str | None], errors: Counter[str]) -> str | None:
    """Run `attempt` (None: done; a text: what went wrong; or it raises) up to
    1 + len(RETRY_DELAYS_S) times, or once for a final refusal (is_final).
    Returns None once it succeeds, else the last problem. Each failed attempt
    is logged and counted in errors["kernel_errors"]."""
    problem: str | None = "not attempted"
    for tries, delay in enumerate((0.0, *RETRY_DELAYS_S), start=1):
        if delay:
            time.sleep(delay)
        try:
            problem = attempt()
        except Exception as exc:  # nft, netlink, genl: any refusal
            problem = brief(f"{type(exc).__name__}: {exc}")
        if problem is None:
            if tries > 1:
                log.info("%s succeeded on attempt %d", what, tries)
            return None
        errors["kernel_errors"] += 1
        log.warning(
            "%s failed (attempt %d of %d): %s", what, tries, 1 + len(RETRY_DELAYS_S), problem
        )
        if is_final(problem):
            log.warning("%s: not retried, the kernel denies the operation itself", what)
            break
    return problem


def brief(problem: str, limit: int = 300) -> str:
    """The first line of an error (nft echoes its whole script after it)."""
    line = problem.strip().splitlines()[0] if problem.strip() else problem
    return line if len(line) <= limit else line[: limit - 3] + "..."


def injection_attempts(
    conntrack: Injector, conns: Sequence[Connection], written: Counter[str]
) -> Callable[[], str | None]:
    """An attempt for `retrying` that injects `conns` and, on a refusal,
    retries only the refused entries. Counts what the kernel took in
    written["injected"]."""
    pending = list(conns)

    def attempt() -> str | None:
        nonlocal pending
        if not pending:
            return None
        done = conntrack.inject(pending)
        written["injected"] += done
        if done >= len(pending):
            pending = []
            return None
        refused = list(conntrack.refused)
        reasons = Counter(reason for _, reason in refused)
        if refused:
            pending = [c for c, _ in refused]
        return f"conntrack refused {len(pending)} of {len(conns)} entries ({_reasons(reasons)})"

    return attempt


def conntrack_probe(conntrack: Injector) -> str | None:
    """Inject and delete PROBE_CONNECTION: None if the kernel took both."""
    if conntrack.inject([PROBE_CONNECTION]) != 1:
        reasons = Counter(reason for _, reason in conntrack.refused)
        return f"conntrack refuses a probe entry ({_reasons(reasons) or 'no reason given'})"
    if conntrack.delete([PROBE_CONNECTION]) != 1:
        return "conntrack cannot delete its probe entry"
    return None


def _reasons(reasons: Counter[str]) -> str:
    return ", ".join(f"{r} x{n}" for r, n in reasons.most_common())
