"""Building and running bench/gen/newconn.c, the new-connection generator.

Built with gcc into .cache/fwcompare/ on first use and whenever the source
is newer than the binary. Run inside a namespace with a time bound; the
result is parsed from its machine-readable lines (see the C file's header).
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

from fwcluster_lab.netns import LabError, in_ns, ns_run

from .env import BENCH, CACHE

SOURCE = BENCH / "gen" / "newconn.c"
BINARY = CACHE / "fwcompare" / "newconn"
PORTS = 64000  # source ports per destination port, as in the C file


class GeneratorError(Exception):
    pass


def build(binary: Path = BINARY) -> Path:
    """Compile newconn.c into `binary` unless it is up to date (each benchmark
    family keeps its own copy, so two runs never race on one file)."""
    if binary.exists() and binary.stat().st_mtime >= SOURCE.stat().st_mtime:
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_suffix(".tmp")
    r = subprocess.run(
        ["gcc", "-O2", "-Wall", "-Wextra", "-o", str(tmp), str(SOURCE)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if r.returncode != 0:
        raise GeneratorError(f"gcc failed: {r.stderr.strip()}")
    tmp.replace(binary)
    return binary


@dataclasses.dataclass(frozen=True)
class Offer:
    sent: int
    errors: int
    start: float  # wall clock of the first send
    end: float  # wall clock after the last send

    @property
    def rate(self) -> float:
        return self.sent / (self.end - self.start) if self.end > self.start else 0.0


def parse(output: str) -> Offer:
    """Sum the `sender ...` lines; earliest start, latest end."""
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


def argv(
    src: str, dst: str, dport: int, count: int, rate: float, first: int = 0,
    procs: int = 1, max_s: float = 120.0, flows: int = 0,
) -> list[str]:  # fmt: skip
    """The command line; flows > 0 cycles over that many tuples (packets of
    established flows) instead of a new tuple per datagram."""
    if count < 1 or rate <= 0 or not 1 <= procs <= 16 or flows < 0:
        raise ValueError("count >= 1, rate > 0, procs 1..16, flows >= 0")
    if dport + ((flows or count) + first) // PORTS > 65535:
        raise ValueError("too many connections for the destination port range")
    return [str(build()), src, dst, str(dport), str(count), f"{rate:g}", str(first),
            str(procs), f"{max_s:g}", str(flows)]  # fmt: skip


def run(ns: str, args: list[str], timeout: float) -> Offer:
    """Run the generator in namespace `ns`; bounded by `timeout` seconds."""
    try:
        r = ns_run(ns, args, check=False, timeout=timeout)
    except LabError as exc:
        raise GeneratorError(str(exc)) from exc
    if r.returncode != 0:
        raise GeneratorError(
            f"generator failed ({r.returncode}): {r.stderr.strip()[:300]}"
        )
    return parse(r.stdout)


def start(ns: str, args: list[str]) -> subprocess.Popen[str]:
    """Start it in the background (for churn under other measurements)."""
    return subprocess.Popen(
        in_ns(ns, args),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def offer(
    ns: str, src: str, dst: str, dport: int, count: int, rate: float,
    first: int = 0, procs: int = 2,
) -> Offer:  # fmt: skip
    """Offer `count` new UDP connections at `rate`/s from namespace `ns`;
    bounded in time by the generator itself (max_s) and by a timeout here."""
    max_s = max(10.0, 3.0 * count / rate)
    args = argv(src, dst, dport, count, rate, first, procs, max_s)
    return run(ns, args, timeout=max_s + 30.0)
