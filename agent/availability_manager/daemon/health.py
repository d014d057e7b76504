"""The asyncio adapter of the health checks (`health.py` holds their logic).

It runs what the state machines ask for, without blocking the event loop:
operators' commands as subprocesses (killed with their process group at the
timeout; output read to the end but only the first OUTPUT_LIMIT bytes kept),
and rounds of ICMP echoes to each zone's next hops (`icmp_probe.py`). The
results go back to the state machines; their verdicts become the node's
own status through the runtime's callbacks:

- a zone whose next hops stop answering: the watcher "nexthop" reports a
  fault (the node steps back), but only while some peer still reaches its
  own next hops (`only_if_a_peer_reaches`, the flag in the heartbeats), so a
  next hop lost by every node does not empty the cluster;
- a failing check with action `drain`: the watcher "check:<name>" reports a
  fault; with action `weight`: it caps the node's weight instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable, Sequence
from typing import Any

from ..dataplane.base import Zone
from ..health import Health, HealthCheck, Kill, Run, Verdict
from .health_config import CheckConfig, HealthConfig
from .icmp_probe import Address, EchoSocket

log = logging.getLogger("availability-manager")

OUTPUT_LIMIT = 4096  # bytes of a command's output kept for the log
DETAIL_LIMIT = 200  # characters of it in the verdict (status, fault string)
NEXTHOP = "nexthop"
# A next hop that every node loses is lost by each at a slightly different
# moment (their rounds are not in step): the first to notice would see the
# others still reaching theirs and step back for a moment. It waits this many
# intervals first, long enough for the others' verdicts and heartbeats. The
# same holds when it comes back: the first node whose next hop passes again
# would make the others, whose own checks are a round behind, step back for a
# moment (and their peers take and hand back every bucket within a second);
# a node that kept its buckets waits as long before it gives them away.
NEXTHOP_CONFIRM_INTERVALS = 2


class _ZoneProbe:
    """A zone's next-hop targets and its echo sockets (one per address family)."""

    def __init__(self, zone: Zone, targets: Sequence[Address], runner: HealthRunner) -> None:
        self.zone = zone
        self.targets = frozenset(targets)
        shared = [ip.ip for ip in zone.cluster_ips]
        families = {socket.AF_INET if t.version == 4 else socket.AF_INET6 for t in targets}
        self.sockets = {
            fam: EchoSocket(zone.interface, fam, shared, runner.forget_fd)
            for fam in sorted(families)
        }
        self.seq = 0


class HealthRunner:
    def __init__(
        self,
        cfg: HealthConfig,
        zones: Sequence[Zone],
        loop: asyncio.AbstractEventLoop,
        set_fault: Callable[[str, str | None], None],
        set_weight_cap: Callable[[str, int | None], None],
        set_nexthops_ok: Callable[[bool], None],
        peers_reach_nexthops: Callable[[], bool],
    ) -> None:
        self.cfg = cfg
        self.loop = loop
        self._set_fault = set_fault
        self._set_weight_cap = set_weight_cap
        self._set_nexthops_ok = set_nexthops_ok
        self._peers_reach = peers_reach_nexthops
        now = loop.time()
        by_name = {z.name: z for z in zones}
        self._zones = {
            f"{NEXTHOP}:{name}": _ZoneProbe(by_name[name], targets, self)
            for name, targets in cfg.nexthops.targets
        }
        self._commands = {f"check:{c.name}": c for c in cfg.checks}
        self.checks = {name: HealthCheck(name, cfg.nexthops.timing, now) for name in self._zones}
        self.checks.update({n: HealthCheck(n, c.timing, now) for n, c in self._commands.items()})
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._readers: set[int] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._kept_buckets = False  # a next hop is lost, but no peer reaches its own
        self._lost_since: float | None = None  # since when some zone's next hop is lost
        # since when a peer reaches its next hops again while ours are still lost
        # and the buckets were kept (NEXTHOP_CONFIRM_INTERVALS)
        self._peer_back_since: float | None = None
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        self._arm()

    def close(self) -> None:
        """Stop: no more runs, running commands killed (`wait_closed` reaps them)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for proc in self._procs.values():
            _kill_group(proc)
        for probe in self._zones.values():
            for es in probe.sockets.values():
                es.close()

    async def wait_closed(self) -> None:
        """After close: until the killed commands are reaped."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def watchers(self) -> list[str]:
        """The names under which this runner reports faults and weight caps."""
        return [NEXTHOP, *self._commands] if self._zones else list(self._commands)

    def forget_fd(self, fd: int) -> None:
        """Before an echo socket closes: stop watching its descriptor."""
        if fd in self._readers:
            self._readers.discard(fd)
            self.loop.remove_reader(fd)

    # -- the state machines' timer and events ---------------------------------------

    def _arm(self) -> None:
        if self._closed:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.checks:
            deadline = min(c.next_timer() for c in self.checks.values())
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self.loop.time()
        for check in self.checks.values():
            if check.next_timer() <= now:
                check.handle_timer(now)
        self._after_input()

    def _result(self, name: str, ok: bool, detail: str) -> None:
        if self._closed:
            return  # a command killed by close(): its verdict no longer counts
        self.checks[name].result(ok, detail, self.loop.time())
        self._after_input()

    def _after_input(self) -> None:
        for name, check in self.checks.items():
            while (event := check.next_event()) is not None:
                match event:
                    case Run():
                        self._run(name)
                    case Kill():
                        self._kill(name)
                    case Verdict():
                        self._verdict(event)
        self._apply_nexthops()  # also follows the peers' flags, once a round
        self._arm()

    def _verdict(self, v: Verdict) -> None:
        if v.healthy:
            log.info("health: %s passes again (%s)", v.check, v.detail)
        else:
            log.warning("health: %s fails: %s", v.check, v.detail)
        cfg = self._commands.get(v.check)
        if cfg is None:
            return  # next hops: _apply_nexthops
        if cfg.action == "weight":
            self._set_weight_cap(v.check, None if v.healthy else cfg.weight)
        else:
            self._set_fault(v.check, None if v.healthy else f"failing: {v.detail}")

    def _apply_nexthops(self) -> None:
        if not self._zones:
            return
        lost = {
            name.partition(":")[2]: self.checks[name].detail
            for name in self._zones
            if self.checks[name].health is Health.FAILING
        }
        self._set_nexthops_ok(not lost)
        now = self.loop.time()
        fault = None
        if lost:
            if self._lost_since is None:
                self._lost_since = now
            fault = "; ".join(f"zone {zone}: {detail}" for zone, detail in sorted(lost.items()))
            confirm = NEXTHOP_CONFIRM_INTERVALS * self.cfg.nexthops.timing.interval
            if now - self._lost_since < confirm - 1e-6:
                return  # not yet: the verdict stands as it was (see the constant)
            kept = self.cfg.nexthops.only_if_a_peer_reaches and not self._peers_reach()
            if kept or not self._kept_buckets:
                self._peer_back_since = None
            else:  # a peer reaches again: our own check may pass within a round too
                if self._peer_back_since is None:
                    self._peer_back_since = now
                if now - self._peer_back_since < confirm - 1e-6:
                    return  # not yet: the buckets stay kept (see the constant)
            if kept != self._kept_buckets and kept:
                log.warning(
                    "health: next hop lost (%s), but no other node reaches its own: "
                    "keeping the buckets",
                    fault,
                )
            self._kept_buckets = kept
            if kept:
                fault = None
        else:
            self._kept_buckets = False
            self._lost_since = None
            self._peer_back_since = None
        self._set_fault(NEXTHOP, fault)

    # -- next hops ----------------------------------------------------------------------

    def _run(self, name: str) -> None:
        probe = self._zones.get(name)
        if probe is None:
            self._start_command(name, self._commands[name])
            return
        probe.seq = (probe.seq + 1) & 0xFFFF
        errors = []
        sent = 0
        for target in sorted(probe.targets, key=str):
            es = probe.sockets[socket.AF_INET if target.version == 4 else socket.AF_INET6]
            err = es.ensure_open() or es.send(target, probe.seq)
            if err is None:
                sent += 1
                fd = es.fileno()
                if fd is not None and fd not in self._readers:
                    self._readers.add(fd)
                    self.loop.add_reader(fd, self._on_replies, name, es)
            else:
                errors.append(err)
        if not sent:  # nothing left: a failure now, not at the timeout
            self.loop.call_soon(self._result, name, False, "; ".join(sorted(set(errors))))

    def _on_replies(self, name: str, es: EchoSocket) -> None:
        probe = self._zones[name]
        answered = [src for src, seq in es.replies() if seq == probe.seq and src in probe.targets]
        if answered and self.checks[name].running:
            self._result(name, True, f"{answered[0]} answers")

    # -- operators' commands ----------------------------------------------------------

    def _start_command(self, name: str, cfg: CheckConfig) -> None:
        task = self.loop.create_task(self._command(name, cfg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _command(self, name: str, cfg: CheckConfig) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *cfg.command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed whole
            )
        except OSError as exc:
            self._result(name, False, f"cannot run {cfg.command[0]}: {exc.strerror}")
            return
        self._procs[name] = proc
        if self._closed:  # closed while it was starting
            _kill_group(proc)
        try:
            output = await _bounded_output(proc)
            code = await proc.wait()
        finally:
            if self._procs.get(name) is proc:  # the next run may have started already
                del self._procs[name]
        text = output.decode(errors="replace").strip()
        status = f"exit status {code}" if code >= 0 else f"killed by signal {-code}"
        first_line = text.splitlines()[0] if text else ""
        detail = f"{status}: {first_line}" if first_line else status
        if code != 0 and text:
            log.info("health: %s %s, output: %r", name, status, text)
        self._result(name, code == 0, detail[:DETAIL_LIMIT])

    def _kill(self, name: str) -> None:
        proc = self._procs.get(name)
        if proc is not None:
            log.warning("health: %s still running at its timeout: killed", name)
            _kill_group(proc)

    # -- views ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            name: {
                "health": check.health.value,
                "detail": check.detail,
                **({"kept_buckets": self._kept_buckets} if name in self._zones else {}),
                **dict(sorted(check.stats.items())),
            }
            for name, check in sorted(self.checks.items())
        }


async def _bounded_output(proc: asyncio.subprocess.Process) -> bytes:
    """Read to the end (a full pipe would stall the command), keep the start."""
    assert proc.stdout is not None
    kept = bytearray()
    while chunk := await proc.stdout.read(65536):
        kept += chunk[: OUTPUT_LIMIT - len(kept)]
    return bytes(kept)


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(proc.pid, signal.SIGKILL)  # the leader's pid is its group id
