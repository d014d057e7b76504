"""Paths and machine facts for the fwcluster benchmarks."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import threading
from pathlib import Path
from typing import Self

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
BASELINES = BENCH / "baselines"  # the keepalived + conntrackd configurations
DOCS = ROOT / "docs" / "benchmarks"
CACHE = ROOT / ".cache"

# Our own prefix and run root: never the operator's lab (fwl-), the tests'
# labs or the comparison benchmarks' (fwk-, fwm-).
PREFIX = "fwr-"
# More labs of ours at the same time (dataplane_cost); none starts with "fwr-".
PREFIX_BASELINE = "fwrb-"
PREFIX_FLOODED = "fwrf-"
RUN_ROOT = Path("/run/fwcluster-fwbench")
# The comparisons' labs (prefixes fwk-, fwm-), apart from the operator's
# `bin/lab` (/run/fwcluster-lab, prefix fwl-).
COMPARE_RUN_ROOT = Path("/run/fwcluster-compare")
TICK = os.sysconf("SC_CLK_TCK")


def loadavg() -> tuple[float, float, float]:
    parts = Path("/proc/loadavg").read_text().split()
    return float(parts[0]), float(parts[1]), float(parts[2])


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        return out + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts() -> dict[str, str]:
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(),
        "kernel": platform.release(),
        "cpus": str(os.cpu_count()),
        "cpu": cpu_model(),
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "python": platform.python_version(),
    }


class LoadSampler:
    """The 1-minute load average sampled every few seconds in a thread, so a
    result can say how busy the machine was while it was measured."""

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append(loadavg()[0])
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.samples.append(loadavg()[0])

    def text(self) -> str:
        if not self.samples:
            return "n/a"
        return (
            f"min {min(self.samples):.2f}, max {max(self.samples):.2f}, "
            f"mean {sum(self.samples) / len(self.samples):.2f} (1-minute load average, "
            f"{len(self.samples)} samples)"
        )


class Jiffies:
    """Machine-wide busy and total CPU time from the first line of /proc/stat."""

    def __init__(self) -> None:
        values = [
            int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        ]
        self.idle = values[3] + values[4]
        # time the hypervisor ran something else while this VM's vCPUs
        # wanted to run: a stall no process inside the VM can see or cause
        self.steal = values[7] if len(values) > 7 else 0
        self.total = sum(values[:8])

    def busy_s_since(self, earlier: Jiffies) -> float:
        busy = (self.total - self.idle) - (earlier.total - earlier.idle)
        return busy / TICK

    def steal_share_since(self, earlier: Jiffies) -> float:
        total = self.total - earlier.total
        return (self.steal - earlier.steal) / total if total else 0.0

    def busy_share_since(self, earlier: Jiffies) -> float:
        total = self.total - earlier.total
        return 1.0 - (self.idle - earlier.idle) / total if total else 0.0
