"""What `clusterctl cache` costs the agent on a large cache.

The listing walks a snapshot of the cache's keys in chunks
(daemon/ops_commands.py LISTING_CHUNK) and gives the event loop back between
chunks, so the loop is never held longer than one chunk, and each chunk is one
JSON line of the control socket's stream, so no answer is larger than one
chunk's entries. This measures both on one agent process's objects: a
ConntrackSync holding N entries of one peer (fed as CT_NEW messages, as the
sync path does), the real command, every part encoded as the control server
encodes it, and a ticker task that sleeps 5 ms at a time and records how late
it wakes (the longest delay a heartbeat timer would see).

    .venv/bin/python bench/listing_cost.py            # 1,000,000 entries, docs/benchmarks/
    .venv/bin/python bench/listing_cost.py --quick    # 20,000, temp dir
    flock /work/lab.lock .venv/bin/python bench/listing_cost.py --kernel-entries 200000

With --kernel-entries N the `kernel` listing is measured too: a child process
in a network namespace of its own (`unshare -n`, gone when it exits) injects N
entries into that namespace's conntrack table and lists them through the real
command (its own netlink socket, read and filtered on the listing thread).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from availability_manager.connection import Connection, Tuple
from availability_manager.conntrack_sync import ConntrackSync
from availability_manager.ct_messages import CtNew
from availability_manager.daemon.ops_commands import LISTING_CHUNK, OperatorCommands
from availability_manager.types import NodeId
from fwbench import env, report

BUCKETS = 256
ME, PEER = NodeId(0xC6336401), NodeId(0xC6336402)  # 198.51.100.1 and .2
TICK_S = 0.005


class CacheOnly:
    """The two things the listing asks of a Node."""

    def __init__(self, sync: ConntrackSync) -> None:
        self.conntrack_sync = sync

    def bucket_owners(self) -> tuple[frozenset[NodeId], ...]:
        return tuple(frozenset({PEER}) for _ in range(BUCKETS))


def filled_cache(n: int) -> ConntrackSync:
    sync = ConntrackSync(ME, BUCKETS, rng=random.Random(1), now=0.0)
    for k in range(n):
        orig = Tuple(bytes((198, 18, k >> 16 & 0xFF, k >> 8 & 0xFF)), bytes((203, 0, 113, 10)),
                     1024 + k % 60000, 443)  # fmt: skip
        conn = Connection(6, orig, orig.inverse(), 3, 0x6, 1 + k % BUCKETS, k % BUCKETS)
        sync.receive(CtNew.from_connection(conn), PEER, 0.0)
    return sync


def no_kernel() -> Iterator[Connection]:
    return iter(())


def one(
    ops: OperatorCommands, request: dict[str, Any] | None, command: str = "cache"
) -> dict[str, Any]:
    """Consume one listing as the control server would, with the ticker running."""
    late: list[float] = []
    sizes: list[int] = []
    end: dict[str, Any] = {}

    async def ticker(stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            due = loop.time() + TICK_S
            await asyncio.sleep(TICK_S)
            late.append(loop.time() - due)

    async def listing() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(ticker(stop))
        await asyncio.sleep(0)
        if request is None:
            await asyncio.sleep(1.0)
            end.update({"scanned": 0, "shown": 0, "more": 0})
            sizes.append(0)
        else:
            async for part in ops.handlers()[command](request).parts:
                sizes.append(len(json.dumps(part, separators=(",", ":"))) + 1)
                if part.get("end"):
                    end.update(part)
        stop.set()
        await task

    cpu0, wall0 = time.process_time(), time.perf_counter()
    asyncio.run(listing())
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {
        "request": request,
        "scanned": end["scanned"],
        "shown": end["shown"],
        "more": end["more"],
        "cpu_s": cpu,
        "wall_s": wall,
        "parts": len(sizes),
        "largest_part_bytes": max(sizes),
        "total_bytes": sum(sizes),
        "longest_loop_delay_ms": max(late, default=0.0) * 1000,
        "p99_loop_delay_ms": sorted(late)[int(len(late) * 0.99)] * 1000
        if late
        else 0.0,
        "cpu_ms_per_part": cpu / len(sizes) * 1000,
    }


CASES: list[tuple[str, dict[str, Any] | None]] = [
    ("nothing (the ticker alone for 1 s: the machine's own delays)", None),
    ("default (--limit 1000, no filter)", {}),
    ("everything (--limit 0)", {"limit": 0}),
    (
        "a filter that matches nothing (--src 192.0.2.0/24)",
        {"filter": {"src": ["192.0.2.0/24"]}},
    ),
    (
        "one bucket of 256 (--bucket 7 --limit 0)",
        {"filter": {"bucket": ["7"]}, "limit": 0},
    ),
]


KERNEL_CASES: list[tuple[str, dict[str, Any] | None]] = [
    ("kernel: everything (--limit 0)", {"limit": 0}),
    ("kernel: a filter that matches nothing (--src 192.0.2.0/24)",
     {"filter": {"src": ["192.0.2.0/24"]}}),
]  # fmt: skip


def kernel_child(n: int) -> int:
    """In a fresh network namespace: fill its conntrack table, list it."""
    from availability_manager.daemon.ops_commands import kernel_listing
    from availability_manager.dataplane.bucket import mark_of_bucket
    from availability_manager.dataplane.conntrack_netlink import ConntrackSocket

    nft = "add table inet t\nadd chain inet t c { type filter hook prerouting priority 0; }\n"
    nft += "add rule inet t c ct state established accept\n"  # conntrack on in this namespace
    subprocess.run(["nft", "-f", "-"], input=nft, text=True, check=True)
    t0 = time.process_time()
    with ConntrackSocket(0xFFFF, events=False) as table:
        for start in range(0, n, 10_000):
            batch = []
            for k in range(start, min(n, start + 10_000)):
                orig = Tuple(bytes((198, 18, k >> 16 & 0xFF, k >> 8 & 0xFF)),
                             bytes((203, 0, 113, 10)), 1024 + k % 60000, 443)  # fmt: skip
                batch.append(Connection(6, orig, orig.inverse(), 3, 0x6,
                                        mark_of_bucket(k % BUCKETS, 0xFFFF), k % BUCKETS))  # fmt: skip
            table.inject(batch)
    fill_cpu = time.process_time() - t0
    ops = OperatorCommands(
        CacheOnly(filled_cache(0)),  # type: ignore[arg-type]
        BUCKETS,
        0xFFFF,
        now=time.monotonic,
        pump=lambda: None,
        reread_kernel=lambda: None,
        kernel_dump=lambda: kernel_listing(0xFFFF),
        stats=dict,
        kernel_refusals=dict,
    )
    results = [one(ops, req, "kernel") for _name, req in KERNEL_CASES]
    ops.close()
    print(json.dumps({"fill_cpu_s": fill_cpu, "results": results}))
    return 0


def kernel_cases(n: int) -> tuple[float, list[dict[str, Any]]]:
    proc = subprocess.run(
        [
            "unshare",
            "-n",
            sys.executable,
            str(Path(__file__).resolve()),
            "--kernel-child",
            str(n),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    data = json.loads(proc.stdout)
    return data["fill_cpu_s"], data["results"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    report.add_common_options(ap)
    ap.add_argument(
        "--entries", type=int, default=1_000_000, help="cache size (default 1M)"
    )
    ap.add_argument(
        "--kernel-entries", type=int, default=0,
        help="also list a conntrack table of this size (root, own netns; default: not)",
    )  # fmt: skip
    ap.add_argument("--kernel-child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.kernel_child:
        return kernel_child(args.kernel_child)
    n = 20_000 if args.quick else args.entries
    out = report.out_dir(args, "listing_cost")
    facts = env.machine_facts()
    sampler = env.LoadSampler()
    with sampler:
        t0 = time.process_time()
        sync = filled_cache(n)
        fill_cpu = time.process_time() - t0
        ops = OperatorCommands(
            CacheOnly(sync),  # type: ignore[arg-type]
            BUCKETS,
            0xFFFF,
            now=time.monotonic,
            pump=lambda: None,
            reread_kernel=lambda: None,
            kernel_dump=no_kernel,
            stats=dict,
            kernel_refusals=dict,
        )
        results = [one(ops, req) for _name, req in CASES]
        ops.close()
        kernel_fill, kernel_results = (
            kernel_cases(args.kernel_entries) if args.kernel_entries else (0.0, [])
        )
    rows = [
        [
            name,
            f"{r['scanned']:,}",
            f"{r['shown']:,}",
            f"{r['cpu_s']:.2f}",
            f"{r['cpu_s'] / r['scanned'] * 1e6:.2f}" if r["scanned"] else "-",
            f"{r['largest_part_bytes'] / 1024:.0f}",
            f"{r['total_bytes'] / 2**20:.1f}",
            f"{r['cpu_ms_per_part']:.1f}" if r["request"] is not None else "-",
            f"{r['p99_loop_delay_ms']:.1f}",
            f"{r['longest_loop_delay_ms']:.1f}",
        ]
        for (name, _req), r in zip(
            [*CASES, *KERNEL_CASES[: len(kernel_results)]],
            [*results, *kernel_results],
            strict=True,
        )
    ]
    everything, alone = results[2], results[0]
    lines = report.header("Operator's listings on a large cache", facts, sampler.text())
    lines += [
        (
            f"{n:,} entries of one peer in a ConntrackSync (filled from CT_NEW messages in "
            f"{fill_cpu:.1f} CPU-s), listed by the real `cache` command in chunks of "
            f"{LISTING_CHUNK:,}; every part JSON-encoded as the control socket sends it; a "
            f"ticker sleeping {TICK_S * 1000:.0f} ms at a time measures how late the event "
            "loop wakes it (what a heartbeat timer would suffer)."
        ),
        "",
        *report.table(
            [
                "listing",
                "entries examined",
                "entries sent",
                "CPU s",
                "CPU us per examined entry",
                "largest line KiB",
                "stream MiB",
                "CPU ms per line",
                "loop delay p99 ms",
                "longest loop delay ms",
            ],
            rows,
        ),
        "",
        (
            f"**The whole table goes out as {everything['parts']:,} lines of at most "
            f"{everything['largest_part_bytes'] / 1024:.0f} KiB "
            f"({everything['total_bytes'] / 2**20:.0f} MiB in all, never in memory at once), "
            f"and each line costs at most {max(r['cpu_ms_per_part'] for r in results[1:]):.0f} "
            "CPU-ms of the event loop before it gets its turn again.** The longest delays "
            f"follow the machine's load (the ticker alone saw {alone['longest_loop_delay_ms']:.0f} "
            "ms): compare the rows, not the absolute figures."
        ),
        "",
        (
            f"The kernel rows: {args.kernel_entries:,} entries injected into the conntrack "
            f"table of a namespace of its own ({kernel_fill:.1f} CPU-s), read by the real "
            "`kernel` command on its netlink socket and listing thread while the ticker runs "
            "in the event loop."
            if kernel_results
            else "The kernel listing (its own netlink socket and thread) is measured with "
            "`--kernel-entries N` only (root, a network namespace of its own)."
        ),
        "",
    ]
    report.write(out, "listing_cost", lines, [*results, *kernel_results])
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
