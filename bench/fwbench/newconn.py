"""The new-connection generator bench/gen/newconn.c (written for the
comparison benchmarks; see its header comment): built here with gcc into
.cache/fwbench/ (our own copy of the binary, so the two benchmark families
never race on one file) and run in a lab namespace with a time bound.
"""

from __future__ import annotations

from pathlib import Path

from compare import gen
from compare.gen import GeneratorError, Offer, parse
from fwcluster_lab.netns import LabError, ns_run

from . import env

__all__ = ["GeneratorError", "Offer", "build", "offer", "parse"]

SOURCE = env.BENCH / "gen" / "newconn.c"
BINARY = env.ROOT / ".cache" / "fwbench" / "newconn"


def build() -> Path:
    return gen.build(BINARY)


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
        r = ns_run(ns, argv, check=False, timeout=max_s + 30.0)
    except LabError as exc:
        raise GeneratorError(str(exc)) from exc
    if r.returncode != 0:
        raise GeneratorError(
            f"generator failed ({r.returncode}): {r.stderr.strip()[:300]}"
        )
    return parse(r.stdout)
