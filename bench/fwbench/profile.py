"""Where an agent's time goes: py-spy (a dev dependency in agent/pyproject.toml)
samples the agents' Python stacks while a benchmark loads them, and the
folded stacks are summed into the functions that take the most time.

py-spy pauses the agent briefly for each sample (100 per second), a small
disturbance; it runs at a realtime priority above the agents' so that it can
sample them while they are busy.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
from pathlib import Path

from . import env

PY_SPY = env.ROOT / ".venv" / "bin" / "py-spy"
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")


def available() -> bool:
    return PY_SPY.exists() or shutil.which("py-spy") is not None


def start(
    pid: int, seconds: float, out: Path, rate: int = 100
) -> subprocess.Popen[bytes]:
    """py-spy on `pid` at realtime priority 30: the agents run SCHED_RR 20, and
    a normal-priority sampler only gets the CPU when they are idle, which
    makes nearly every sample say `select` (seen here first)."""
    exe = str(PY_SPY) if PY_SPY.exists() else "py-spy"
    # --gil: only the thread holding the GIL is sampled, so waiting in
    # epoll or in the kernel worker's queue does not count as work
    argv = ["chrt", "-r", "30", exe, "record", "--gil", "-p", str(pid)]
    argv += [
        "-d",
        f"{max(1, round(seconds))}",
        "-r",
        str(rate),
        "-f",
        "raw",
        "-o",
        str(out),
    ]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def frame_name(frame: str) -> str:
    """'handle (availability_manager/node.py:120)' -> 'node.py:handle'."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    return f"{Path(m.group('file')).name}:{m.group('func')}"


def fold(
    paths: list[Path],
) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    """(self samples, inclusive samples, total samples) per function over
    the folded-stack files (`frame;frame;...;leaf count` per line)."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [frame_name(f) for f in stack.split(";") if f]
            if not frames:
                continue
            total += count
            own[frames[-1]] += count
            for name in set(frames):
                incl[name] += count
    return own, incl, total


def markdown(paths: list[Path], what: str, top: int = 12) -> list[str]:
    own, incl, total = fold(paths)
    if not total:
        return [f"(py-spy recorded no samples of {what}.)"]
    lines = [
        (
            f"Where the agents' time goes ({what}; py-spy, {total} samples summed over the "
            "agents; *self*: the function itself was running, *total*: it was on the stack):"
        ),
        "",
        "| function | self | total |",
        "| --- | ---: | ---: |",
    ]
    for name, n in own.most_common(top):
        lines.append(f"| `{name}` | {n / total:.0%} | {incl[name] / total:.0%} |")
    lines += ["", "Biggest by total (callers included):", ""]
    skip = {"<module>"}
    shown = [
        (k, v) for k, v in incl.most_common(top * 3) if k.split(":")[-1] not in skip
    ]
    lines += [f"- `{k}`: {v / total:.0%}" for k, v in shown[:top]]
    return lines
