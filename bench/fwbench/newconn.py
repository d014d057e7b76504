"""The new-connection generator bench/gen/newconn.c (written for the
comparison benchmarks; see its header comment): built here with gcc into
.cache/fwbench/ (our own copy of the binary, so the two benchmark families
never race on one file) and run in a lab namespace with a time bound.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

from . import env

SOURCE = env.BENCH / "gen" / "newconn.c"
BINARY = env.ROOT / ".cache" / "fwbench" / "newconn"


class GeneratorError(Exception):
    pass


def build() -> Path:
    if BINARY.exists() and BINARY.stat().st_mtime >= SOURCE.stat().st_mtime:
        return BINARY
    BINARY.parent.mkdir(parents=True, exist_ok=True)
    tmp = BINARY.with_suffix(".tmp")
    r = subprocess.run(
        ["gcc", "-O2", "-Wall", "-o", str(tmp), str(SOURCE)],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        raise GeneratorError(f"gcc failed: {r.stderr.strip()}")
    tmp.replace(BINARY)
    return BINARY


@dataclasses.dataclass(frozen=True)
class Offer:
    sent: int
    errors: int
    start: float  # wall clock (CLOCK_REALTIME) of the first send
    end: float  # wall clock after the last send

    @property
    def rate(self) -> float:
        return self.sent / (self.end - self.start) if self.end > self.start else 0.0


def parse(output: str) -> Offer:
    """Sum the `sender K sent N errors E start S end T` lines."""
    sent = errors = 0
    starts, ends = [], []
    for line in output.splitlines():
        f = line.split()
        if len(f) == 10 and f[0] == "sender":
            try:
                sent += int(f[3])
                errors += int(f[5])
                starts.append(float(f[7]))
                ends.append(float(f[9]))
            except ValueError as exc:
                raise GeneratorError(f"unreadable generator line: {line!r}") from exc
    if not starts:
        raise GeneratorError(f"generator printed no result: {output.strip()[:200]!r}")
    return Offer(sent, errors, min(starts), max(ends))


def offer(
    ns: str,
    src: str,
    dst: str,
    dport: int,
    count: int,
    rate: float,
    first: int = 0,
    procs: int = 2,
) -> Offer:
    """Offer `count` new UDP connections at `rate`/s from namespace `ns`;
    bounded in time by the generator itself (max_s) and by a timeout here."""
    max_s = max(10.0, 3.0 * count / rate)
    argv = [str(build()), src, dst, str(dport), str(count), f"{rate:g}", str(first)]
    argv += [str(procs), f"{max_s:g}"]
    try:
        r = subprocess.run(
            ["ip", "netns", "exec", ns, *argv],
            capture_output=True,
            text=True,
            timeout=max_s + 30.0,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise GeneratorError(f"generator exceeded {max_s + 30.0:g} s") from exc
    if r.returncode != 0:
        raise GeneratorError(
            f"generator failed ({r.returncode}): {r.stderr.strip()[:300]}"
        )
    return parse(r.stdout)
