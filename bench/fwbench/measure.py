"""Reading what the machine and processes did: CPU, memory, load, counters.

Only /proc and /sys reads plus a few `ip`/`nft`/`conntrack` calls inside the
lab's own namespaces. Times here are wall-clock (time.time()) because they
are compared with timestamps that other processes wrote (notify scripts,
agent logs).
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

from fwcluster_lab.netns import ns_run

from .env import TICK, loadavg


def loadavg_text() -> str:
    a, b, c = loadavg()
    return f"{a:.2f} {b:.2f} {c:.2f}"


def process_cpu_s(pid: int) -> float | None:
    """utime + stime of one process (not its children), seconds; None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _status_number(pid: int, field: str) -> int | None:
    """The first number of a field of /proc/<pid>/status; None if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def process_wakeups(pid: int) -> int | None:
    """Times the process's main thread went to sleep and was woken (its
    voluntary context switches); None if gone."""
    return _status_number(pid, "voluntary_ctxt_switches")


def process_rss_kib(pid: int) -> int | None:
    return _status_number(pid, "VmRSS")


def children_cpu_s() -> float:
    """CPU seconds of this process's reaped children (user + system)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def softirq_threads_cpu_s() -> float:
    """CPU seconds of the ksoftirqd kernel threads: packet processing the
    kernel deferred out of the sending process's context."""
    total = 0.0
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().startswith("ksoftirqd/"):
                total += process_cpu_s(int(comm.parent.name)) or 0.0
        except (OSError, ValueError):
            continue
    return total


@dataclasses.dataclass(frozen=True)
class SystemCpu:
    """Machine-wide jiffies from /proc/stat: busy (all but idle and iowait), total."""

    busy: int
    total: int

    @staticmethod
    def read() -> SystemCpu:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
        values = [int(v) for v in first[1:]]
        idle = values[3] + values[4]
        total = sum(values[:8])  # guest times are already inside user/nice
        return SystemCpu(total - idle, total)

    def busy_s_since(self, earlier: SystemCpu) -> float:
        return (self.busy - earlier.busy) / TICK


def ns_exec(ns: str, argv: list[str], timeout: float = 30.0) -> str:
    return ns_run(ns, argv, check=False, timeout=timeout).stdout


def conntrack_count(ns: str) -> int:
    """Entries in the namespace's kernel conntrack table."""
    out = ns_exec(ns, ["conntrack", "-C"]).strip()
    return int(out) if out.isdigit() else 0


def conntrack_count_matching(ns: str, proto: str, dport: int) -> int:
    """Entries of one protocol and original destination port (the generator's)."""
    out = ns_exec(ns, ["conntrack", "-L", "-p", proto, "--dport", str(dport)], 60.0)
    return sum(1 for line in out.splitlines() if line.startswith(proto))


_IF_LINE = re.compile(r"^\s*(\S+):\s+(.*)$")


def iface_counters(ns: str, ifname: str) -> tuple[int, int, int, int]:
    """(rx_bytes, rx_packets, tx_bytes, tx_packets) of an interface in a namespace."""
    text = ns_exec(ns, ["cat", "/proc/net/dev"])
    for line in text.splitlines():
        m = _IF_LINE.match(line)
        if m and m.group(1) == ifname:
            v = [int(x) for x in m.group(2).split()]
            return v[0], v[1], v[8], v[9]
    return 0, 0, 0, 0


class CountSampler:
    """(wall time, count()) every `interval` seconds in a thread, while in a
    `with` block: how a replicated count grows during a sync benchmark."""

    def __init__(self, count: Callable[[], int], interval: float) -> None:
        self.count, self.interval = count, interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), self.count()))
            self._stop.wait(self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
