"""Read, change and restore kernel sysctls (/proc/sys) for a data-plane backend.

The values are per network namespace for net.* keys: /proc/sys/net shows the
namespace of the process that opens it, so a backend must run in the node's
namespace. Every change remembers the value it replaced, and restore() puts
back only what this object changed, in reverse order.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

PROC_SYS = Path("/proc/sys")


class SysctlError(RuntimeError):
    """A sysctl could not be read or written (missing key, permission)."""


def _path(key: str, root: Path) -> Path:
    # "a.b.c", or "a/b/c" as sysctl(8) writes a key with a dotted part (an
    # interface such as eth0.100 in net/ipv4/conf/eth0.100/...)
    parts = key.split("/") if "/" in key else key.split(".")
    if any(part in ("", ".", "..") for part in parts):
        raise SysctlError(f"bad sysctl key {key!r}")
    return root.joinpath(*parts)


def interface_key(family: str, interface: str, name: str) -> str:
    """The key of a per-interface setting: net/<family>/conf/<interface>/<name>."""
    return f"net/{family}/conf/{interface}/{name}"


def read_sysctl(key: str, root: Path = PROC_SYS) -> str:
    try:
        return _path(key, root).read_text().strip()
    except OSError as e:
        raise SysctlError(f"cannot read sysctl {key}: {e.strerror}") from e


def write_sysctl(key: str, value: str, root: Path = PROC_SYS) -> None:
    try:
        _path(key, root).write_text(value + "\n")
    except OSError as e:
        raise SysctlError(f"cannot write sysctl {key}={value}: {e.strerror}") from e


class SysctlChanges:
    """Sysctls set by us, with the values they had before."""

    def __init__(self, root: Path = PROC_SYS) -> None:
        self.root = root
        self.saved: dict[str, str] = {}

    def set(self, key: str, value: str) -> None:
        old = read_sysctl(key, self.root)
        if key not in self.saved:
            self.saved[key] = old  # the value before our first change
        if old != value:
            write_sysctl(key, value, self.root)
            log.info("sysctl %s: %s -> %s", key, old, value)

    def restore(self) -> None:
        """Put back every saved value; keeps going past errors, raises the first."""
        first: SysctlError | None = None
        for key, old in reversed(list(self.saved.items())):
            try:
                if read_sysctl(key, self.root) != old:
                    write_sysctl(key, old, self.root)
                    log.info("sysctl %s restored to %s", key, old)
            except SysctlError as e:
                first = first or e
        self.saved.clear()
        if first is not None:
            raise first
