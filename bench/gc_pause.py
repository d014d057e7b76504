"""Garbage-collector pauses while an agent caches its peers' connections.

A peer cache holds three tracked Python objects per connection (the
Connection and its two Tuples). CPython's cyclic collector walks every
tracked object of the generations it collects, so once the cache is large a
full collection stops the agent's event loop for as long as the walk takes:
no heartbeat leaves meanwhile, and a long pause looks like a dead node to the
others. The runtime therefore freezes the heap once a second (gc.freeze(),
daemon/runtime.py GC_FREEZE_EVERY_S): objects alive by then are left out of
later collections (reference counting still frees them).

Per variant, a fresh interpreter builds N connections into a dict keyed by
Connection.key (the shape of the cache) and records every collection's
duration through gc.callbacks: without freezing, and freezing every K
connections (K = one second of new connections at the rates the sync
throughput benchmark offers).

    .venv/bin/python bench/gc_pause.py            # 300,000 connections, docs/benchmarks/
    .venv/bin/python bench/gc_pause.py --quick    # 30,000, temp dir
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from fwbench import env, report

HEARTBEAT_DEADLINE_MS = 150  # 3 missed heartbeats of 50 ms: the default dead time

_CHILD = r"""
import gc, json, sys, time
from availability_manager.connection import Connection, Tuple
n, freeze_every = int(sys.argv[1]), int(sys.argv[2])
pauses = []
started = [0.0]
def timer(phase, info):
    if phase == "start":
        started[0] = time.perf_counter()
    else:
        pauses.append(((time.perf_counter() - started[0]) * 1000, info["generation"]))
gc.callbacks.append(timer)
cache = {}
t0 = time.perf_counter()
for k in range(n):
    orig = Tuple(bytes((198, 18, k >> 16 & 0xFF, k >> 8 & 0xFF)), bytes((203, 0, 113, 10)),
                 1024 + k % 60000, 443)
    conn = Connection(6, orig, orig.inverse(), 3, 0x18E, 1 + k % 256, k % 256)
    cache[conn.key] = conn
    if freeze_every and k % freeze_every == freeze_every - 1:
        gc.freeze()
wall = time.perf_counter() - t0
print(json.dumps({"wall_s": wall, "pauses": pauses}))
"""


def one(n: int, freeze_every: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(n), str(freeze_every)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
        cwd=env.ROOT / "agent",
    )
    data: dict[str, Any] = json.loads(proc.stdout)
    pauses = [p for p, _gen in data["pauses"]]
    return {
        "connections": n,
        "freeze_every": freeze_every,
        "wall_s": data["wall_s"],
        "collections": len(pauses),
        "full_collections": sum(1 for _p, gen in data["pauses"] if gen == 2),
        "longest_pause_ms": max(pauses, default=0.0),
        "gc_total_ms": sum(pauses),
        "over_deadline": sum(1 for p in pauses if p > HEARTBEAT_DEADLINE_MS),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run into a temp dir")
    args = ap.parse_args()
    n = 30_000 if args.quick else 300_000
    out = Path(tempfile.mkdtemp()) if args.quick else env.ROOT / "docs" / "benchmarks"
    facts = env.machine_facts()
    sampler = env.LoadSampler()
    with sampler:
        results = [one(n, k) for k in (0, 2_000, 10_000, 20_000)]
    rows = [
        [
            "never" if r["freeze_every"] == 0 else f"every {r['freeze_every']:,}",
            f"{r['wall_s']:.2f}",
            r["collections"],
            r["full_collections"],
            f"{r['gc_total_ms']:.0f}",
            f"{r['longest_pause_ms']:.1f}",
            r["over_deadline"],
        ]
        for r in results
    ]
    never, frozen = results[0], results[2]
    lines = report.header(
        "Garbage-collector pauses of a growing cache", facts, sampler.text()
    )
    lines += [
        (
            f"{n:,} connections cached (a dict keyed by `Connection.key`, three tracked objects "
            "each), one fresh interpreter per row; every collection timed with `gc.callbacks`. "
            "*Freeze*: `gc.freeze()` after every K new connections (the agent freezes once a "
            "second, so K is a second's worth of new connections at 2,000, 10,000 and 20,000/s)."
        ),
        "",
        *report.table(
            [
                "freeze",
                "wall s",
                "collections",
                "full collections",
                "GC total ms",
                "longest pause ms",
                f"pauses > {HEARTBEAT_DEADLINE_MS} ms",
            ],
            rows,
        ),
        "",
        (
            f"**Longest pause: {never['longest_pause_ms']:.0f} ms without freezing, "
            f"{frozen['longest_pause_ms']:.0f} ms freezing every 10,000.** A pause longer "
            f"than {HEARTBEAT_DEADLINE_MS} ms (3 heartbeats of 50 ms) gets a living node "
            "declared dead; the agent freezes once a second (daemon/runtime.py)."
        ),
        "",
    ]
    report.write(out, "gc_pause", lines, results)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
