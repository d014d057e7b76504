"""Notify hooks: the operator's commands run when this node's state changes.

keepalived's `notify` scripts, for fwcluster: a hook is a command from the
config (`notify:`), run with the event as its arguments and in its
environment. What fires:

    ready        the first stable configuration    args: owned-count
    owner        the buckets this node forwards changed (after the kernel did it)
                                                   args: count added removed
    draining, member, leaving, left   the node's phase changed    args: none
    fault        a watcher raised or cleared a fault (Runtime.set_fault)
                                                   args: raised|cleared watcher reason
    peer_up, peer_down   a peer joined or was declared down   args: peer reason
    out_of_sync  the sync stream with a peer broke; a full resync follows  args: peer

Every call also sets FWCLUSTER_EVENT, FWCLUSTER_NODE and one FWCLUSTER_<NAME>
per argument. Hooks never block the event loop: each hook has a queue and a
task that runs its calls one after another, in order, each bounded by its
`timeout_s` (then its process group is killed). A full queue drops the call,
counted and logged: a hook that hangs must not hold the agent's memory.

Which call an event makes is decided by pure functions (`call_for_event`,
`call_for_phase`, `call_for_fault`); `HookRunner` is the adapter that runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import stat
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from .. import node_events as ev
from ..node_events import format_buckets
from ..types import format_node_id

log = logging.getLogger("availability-manager")

HOOK_EVENTS = (
    "ready", "owner", "draining", "member", "leaving", "left", "fault", "peer_up", "peer_down",
    "out_of_sync",
)  # fmt: skip
PHASE_EVENTS = ("draining", "member", "leaving", "left")
MAX_QUEUED = 64  # calls waiting per hook
OUTPUT_LOGGED = 2000  # characters of a failing hook's output in the log
CLOSE_WAIT_S = 2.0  # how long a stop waits for the cancelled hook runs to end


@dataclasses.dataclass(frozen=True)
class NotifyHook:
    command: tuple[str, ...]  # an absolute path, then fixed arguments
    events: frozenset[str] = frozenset(HOOK_EVENTS)
    timeout_s: float = 10.0


@dataclasses.dataclass(frozen=True)
class HookCall:
    event: str
    args: tuple[tuple[str, str], ...]  # (name, value), in order: positional and env

    def argv(self) -> list[str]:
        return [self.event, *(v for _, v in self.args)]

    def env(self, node: str) -> dict[str, str]:
        env = {"FWCLUSTER_EVENT": self.event, "FWCLUSTER_NODE": node}
        env.update({f"FWCLUSTER_{k.upper()}": v for k, v in self.args})
        return env


def executable_problem(path: Path) -> str | None:
    """Why `path` may not be run as a hook (as root), or None. Like keepalived's
    script security: a file that someone else could rewrite would run their
    code as root, so it and its directory must be writable by the owner only."""
    try:
        st = path.stat()
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    if not os.access(path, os.X_OK):
        return f"{path} is not executable"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by group or others"
    if st.st_uid not in (0, os.geteuid()):
        return f"{path} is owned by uid {st.st_uid}, neither root nor this user"
    parent = path.parent.stat()
    if parent.st_mode & stat.S_IWOTH and not parent.st_mode & stat.S_ISVTX:
        return f"{path.parent} is writable by others (the hook could be replaced)"
    return None


# -- which call each change makes (pure) ---------------------------------------------


def call_for_event(event: ev.NodeEvent) -> HookCall | None:
    """The hook call a Node event makes, once the runtime carried it out."""
    match event:
        case ev.Ready():
            return HookCall("ready", (("owned", str(len(event.owned))),))
        case ev.ActiveBucketsChanged():
            return HookCall(
                "owner",
                (
                    ("owned", str(len(event.active))),
                    ("added", format_buckets(event.added)),
                    ("removed", format_buckets(event.removed)),
                ),
            )
        case ev.NodeUp():
            return HookCall("peer_up", (("peer", format_node_id(event.node)), ("reason", "joined")))
        case ev.NodeDown():
            return HookCall(
                "peer_down", (("peer", format_node_id(event.node)), ("reason", event.reason))
            )
        case ev.OutOfSync():
            return HookCall("out_of_sync", (("peer", format_node_id(event.peer)),))
    return None


def call_for_phase(before: str, after: str) -> HookCall | None:
    """The node's phase (Node.phase()) went from `before` to `after`."""
    if before == after or after not in PHASE_EVENTS:
        return None
    return HookCall(after, ())


def call_for_fault(watcher: str, before: str | None, after: str | None) -> HookCall | None:
    """A watcher's verdict changed (Runtime.set_fault); a new reason while
    already raised is a new call too (the operator sees what it is now)."""
    if before == after:
        return None
    if after is None:
        return HookCall("fault", (("fault", "cleared"), ("watcher", watcher), ("reason", "")))
    return HookCall("fault", (("fault", "raised"), ("watcher", watcher), ("reason", after)))


# -- the adapter --------------------------------------------------------------------


class HookRunner:
    def __init__(self, hooks: tuple[NotifyHook, ...], node: str) -> None:
        self.node = node
        self.counters: Counter[str] = Counter()
        self._hooks: tuple[NotifyHook, ...] = ()
        self._queues: dict[NotifyHook, asyncio.Queue[HookCall]] = {}
        self._tasks: dict[NotifyHook, asyncio.Task[None]] = {}
        self.set_hooks(hooks)

    def set_hooks(self, hooks: tuple[NotifyHook, ...]) -> None:
        """A reload: new hooks get the next calls; removed ones finish their queue."""
        self._hooks = tuple(hooks)

    def fire(self, call: HookCall | None) -> None:
        """Queue `call` for every hook that wants its event. Event loop only."""
        if call is None:
            return
        for hook in self._hooks:
            if call.event not in hook.events:
                continue
            queue = self._queues.get(hook)
            if queue is None:
                queue = self._queues[hook] = asyncio.Queue(MAX_QUEUED)
                self._tasks[hook] = asyncio.get_running_loop().create_task(
                    self._run(hook, queue), name=f"notify {hook.command[0]}"
                )
            try:
                queue.put_nowait(call)
            except asyncio.QueueFull:
                self.counters["notify_dropped"] += 1
                log.warning(
                    "notify %s: %d calls waiting, dropping %s",
                    hook.command[0],
                    MAX_QUEUED,
                    call.event,
                )

    async def _run(self, hook: NotifyHook, queue: asyncio.Queue[HookCall]) -> None:
        while True:
            call = await queue.get()
            try:
                await self._call(hook, call)
            finally:
                queue.task_done()

    async def _call(self, hook: NotifyHook, call: HookCall) -> None:
        argv = [*hook.command, *call.argv()]
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        env.update(call.env(self.node))
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group, killed whole on timeout
            )
        except OSError as exc:
            self.counters["notify_failed"] += 1
            log.error("notify %s %s: cannot start: %s", hook.command[0], call.event, exc)
            return
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), hook.timeout_s)
        except asyncio.CancelledError:  # the agent stops: leave no hook behind
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(asyncio.CancelledError):
                await proc.wait()  # reaped while the loop still runs
            raise
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            self.counters["notify_timeouts"] += 1
            log.error("notify %s %s: killed after %gs", hook.command[0], call.event, hook.timeout_s)
            return
        if proc.returncode != 0:
            self.counters["notify_failed"] += 1
            text = out.decode(errors="replace")[:OUTPUT_LOGGED].strip()
            log.warning(
                "notify %s %s: exit %s: %s", hook.command[0], call.event, proc.returncode, text
            )
        else:
            self.counters["notify_run"] += 1

    async def close(self, grace: float) -> None:
        """Let queued calls finish for at most `grace` seconds (a leave's `left`
        should reach the operator), then stop."""
        waits = [q.join() for q in self._queues.values()]
        if waits:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), grace)
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        # bounded: the agent stops even if a killed hook is never reaped
        done, pending = await asyncio.wait(tasks, timeout=CLOSE_WAIT_S)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("notify: %s", task.exception())
        if pending:
            log.warning(
                "notify: %d hook runs still not ended %gs after the stop",
                len(pending),
                CLOSE_WAIT_S,
            )

    def stats(self) -> Mapping[str, int]:
        return dict(self.counters)
