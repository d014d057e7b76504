"""Running commands and processes in network namespaces.

Everything goes through `ip`, `nft` and `sysctl` in subprocesses: the lab is a
test harness, and the commands it runs are the ones an operator would type,
so a failing step can be reproduced by hand. Processes the lab starts are
recorded as (pid, start time): a pid is only signalled while its start time
still matches, so a recycled pid is never hit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


class LabError(Exception):
    """A lab step failed; the message says which command and why."""


def run(
    argv: Sequence[str], *, check: bool = True, stdin: str | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout}s: {' '.join(argv)}") from exc
    except FileNotFoundError as exc:
        raise LabError(f"command not found: {argv[0]} (apt-get install iproute2 nftables)") from exc
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def in_ns(ns: str, argv: Sequence[str]) -> list[str]:
    """argv run in namespace ns (for Popen; `ns_run` runs it to the end)."""
    return ["ip", "netns", "exec", ns, *argv]


def ns_run(
    ns: str,
    argv: Sequence[str],
    *,
    check: bool = True,
    stdin: str | None = None,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Run argv in namespace ns to the end, output captured as text (see `run`)."""
    return run(in_ns(ns, argv), check=check, stdin=stdin, timeout=timeout)


def ip(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["ip", "-n", ns, *args], check=check)


def ip_batch(ns: str, lines: Sequence[str]) -> None:
    """Many `ip` commands in one process (one fork instead of dozens)."""
    if lines:
        run(["ip", "-n", ns, "-batch", "-"], stdin="\n".join(lines) + "\n")


def nft(ns: str, script: str) -> None:
    ns_run(ns, ["nft", "-f", "-"], stdin=script)


def nft_json(ns: str, *args: str) -> list[dict[str, Any]]:
    """`nft -j list ...` as the list of objects; [] when the object does not exist."""
    proc = ns_run(ns, ["nft", "-j", "list", *args], check=False)
    if proc.returncode != 0:
        return []
    items: list[dict[str, Any]] = json.loads(proc.stdout).get("nftables", [])
    return items


def sysctl(ns: str, settings: Mapping[str, str]) -> None:
    args = [f"{k}={v}" for k, v in settings.items()]
    ns_run(ns, ["sysctl", "-q", "-w", *args])


def list_namespaces() -> list[str]:
    proc = run(["ip", "netns", "list"], check=False)
    # Lines look like "fwl-fw1 (id: 3)" or just "fwl-fw1".
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def namespace_pids(ns: str) -> list[int]:
    proc = run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def link_state(ns: str, ifname: str) -> dict[str, Any]:
    """`ip -j link show` of one interface: operstate, flags, ..."""
    proc = run(["ip", "-n", ns, "-j", "link", "show", "dev", ifname], check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return {}
    items: list[dict[str, Any]] = json.loads(proc.stdout)
    return items[0] if items else {}


def process_start_time(pid: int) -> int | None:
    """Start time in clock ticks since boot (field 22 of /proc/PID/stat), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces or parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie is gone for our purposes
        return None
    return int(fields[19])


@dataclasses.dataclass(frozen=True)
class Proc:
    """A process the lab started: what to signal, and how to recognise it."""

    pid: int
    start_time: int
    ns: str
    what: str

    def alive(self) -> bool:
        return process_start_time(self.pid) == self.start_time

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> Proc:
        return Proc(int(d["pid"]), int(d["start_time"]), str(d["ns"]), str(d["what"]))


def spawn(
    ns: str, argv: Sequence[str], log_path: Path, what: str, env: Mapping[str, str] | None = None
) -> Proc:
    """Start argv in namespace ns, detached from the lab (own session), output to log_path.

    `ip netns exec` execs the command itself, so the pid is the command's pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            in_ns(ns, argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(env) if env is not None else None,
        )
    start = None
    for _ in range(100):  # /proc entry appears at once; be patient on a loaded machine
        start = process_start_time(popen.pid)
        if start is not None:
            break
        if popen.poll() is not None:
            raise LabError(f"{what} exited at once ({popen.returncode}); see {log_path}")
        time.sleep(0.01)
    if start is None:
        raise LabError(f"{what}: no /proc entry for pid {popen.pid}")
    return Proc(popen.pid, start, ns, what)


def _reap(pid: int) -> None:
    # The lab's own children must be waited for, or they stay zombies (alive-looking pids).
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop(proc: Proc, sig: int = signal.SIGTERM, timeout: float = 5.0) -> bool:
    """Signal proc (only if it is still the process we started) and wait for it to go.

    Escalates to SIGKILL after `timeout`. True if it is gone."""
    if not proc.alive():
        return True
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(proc.pid)
        if not proc.alive():
            return True
        time.sleep(0.02)
    if proc.alive():
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return True
        for _ in range(100):
            _reap(proc.pid)
            if not proc.alive():
                return True
            time.sleep(0.02)
    return not proc.alive()


def kill_pid(pid: int, timeout: float = 2.0) -> None:
    """SIGKILL a pid found inside one of the lab's own namespaces, and wait for it."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process_start_time(pid) is not None:
        _reap(pid)
        time.sleep(0.02)
