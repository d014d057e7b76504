"""The agent's state directory: one agent per directory, and the numbers
that must keep growing across restarts (incarnation, nonce counter).

Why persisted and not taken from the clock: the AEAD nonce is the node id
plus a 64-bit counter, and a nonce must never repeat under one key. A
counter started at the wall clock repeats an earlier life's nonces after the
clock steps back (NTP, a bad RTC at boot). Instead the agent reserves blocks
of counters on disk before using them: a new life starts at or above the
last reservation, whatever the clock says. The clock is still a floor, so a
lost state directory is no worse than before.

The lock: two agents with one state directory would share the incarnation
and the reservations (and the second would remove the first's control
socket). An advisory `flock` held for the life of the process refuses the
second one with a message naming the first.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

# Counters reserved per write: at 100,000 datagrams/s one block lasts about
# 3 minutes, so the disk sees a write every few minutes at most.
NONCE_BLOCK = 1 << 24
# Extend the reservation once less than this much of it is left, so a slow
# disk never lets the sender reach the reserved end.
NONCE_MARGIN = NONCE_BLOCK // 2
MAX_COUNTER = (1 << 64) - 1


class StateDirError(Exception):
    """The state directory cannot be used; the message names it and why."""


def _read_int(path: Path) -> int:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise StateDirError(f"{path}: cannot read: {exc.strerror}") from None
    if not text.isascii() or not text.isdigit():
        raise StateDirError(f"{path}: expected a decimal number, found {text[:20]!r}")
    return int(text)


def _write_int(path: Path, value: int) -> None:
    """Atomically and durably: a reservation that a crash could undo is none."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, f"{value}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise StateDirError(f"{path}: cannot write: {exc.strerror}") from None


class StateDir:
    """Holds the directory's lock from `acquire()` until `release()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_fd: int | None = None
        self._reserved = 0  # counters below this are reserved on disk

    # -- single instance ---------------------------------------------------------

    def acquire(self, node_label: str) -> None:
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateDirError(f"state_dir {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StateDirError(
                f"state_dir {self.path} is in use by {holder}: "
                "one agent per state directory (and per node id)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} node {node_label}\n".encode(), 0)
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    # -- numbers that only grow ----------------------------------------------------

    def next_incarnation(self) -> int:
        """Larger than any earlier life's: persisted, and never below the wall
        clock in milliseconds (so a lost state file still moves forward)."""
        path = self.path / "incarnation"
        incarnation = max(_read_int(path) + 1, time.time_ns() // 1_000_000)
        _write_int(path, incarnation)
        return incarnation

    def first_nonce_counter(self) -> int:
        """Where this life's nonce counter starts: above every counter an
        earlier life reserved, and never below the clock in microseconds. The
        first block is reserved before this returns."""
        start = max(_read_int(self.path / "nonce-reserved"), time.time_ns() // 1000)
        if start > MAX_COUNTER - NONCE_BLOCK:
            raise StateDirError(f"{self.path / 'nonce-reserved'}: nonce counter space exhausted")
        self._reserve(start + NONCE_BLOCK)
        return start

    def ensure_nonces(self, next_counter: int) -> None:
        """Extend the reservation when the sender comes within NONCE_MARGIN of
        its end. Cheap when nothing is due (one comparison)."""
        if next_counter + NONCE_MARGIN >= self._reserved:
            self._reserve(min(next_counter + NONCE_BLOCK, MAX_COUNTER))

    @property
    def nonces_reserved(self) -> int:
        return self._reserved

    def _reserve(self, upto: int) -> None:
        _write_int(self.path / "nonce-reserved", upto)
        self._reserved = upto
