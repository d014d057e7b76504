"""What an idle node costs: CPU per node per second, and per datagram, at N nodes.

No namespaces, sockets or kernel: N in-memory `Node`s on a fake clock, every
datagram each one sends handed to every other (the sync network and, with
zone links, one zone link), the way the runtime would hand it over. What is
measured is the protocol's own idle path: heartbeat seal/open, range state
encode/decode, the Node's timers and glue. The clock advances in steps of
`--step` seconds (a node's timer never fires later than one step late), and
the process CPU time of the whole loop is divided among the nodes.

    .venv/bin/python bench/idle_cost.py               # N = 3, 8, 16, 32; docs/benchmarks/
    .venv/bin/python bench/idle_cost.py --quick       # N = 3, 16, 2 s of virtual time
    .venv/bin/python bench/idle_cost.py --nodes 16 --profile out.txt  # cProfile, top 25

The figure is a cost model, not the agent's CPU on a real machine (that adds
the event loop, the syscalls and the interpreter's own overhead: see the lab
figures in the section this writes).
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import os
import pstats
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "agent"))

from availability_manager.crypto import Keyring
from availability_manager.node import Destination, Node
from availability_manager.node_config import NodeConfig
from availability_manager.types import ClusterSettings, node_id_from_address

SECTION = ROOT / "docs" / "benchmarks" / "idle_cost.md"
WARMUP = 2.0  # virtual seconds before measuring: the cluster forms and settles


def build(count: int, zones: bool, seed: int = 1) -> list[Node]:
    settings = ClusterSettings(buckets=256, hash_seed=0x5EED, backend="sim")
    keyring = Keyring.single(hashlib.blake2b(b"idle-cost", digest_size=32).digest())
    nodes = []
    for index in range(count):
        config = NodeConfig(
            node_id=node_id_from_address(f"192.0.2.{index + 1}"),
            settings=settings,
            keyring=keyring,
            incarnation=1,
            initial_counter=1,
            zone_heartbeats=zones,
        )
        nodes.append(Node(config, random.Random(seed * 1000 + index), 0.0))
    return nodes


class IdleCluster:
    """N nodes and a lossless zero-latency network, advanced in fixed steps."""

    def __init__(self, count: int, zones: bool, step: float) -> None:
        self.nodes = build(count, zones)
        self.step = step
        self.now = 0.0
        self.sent = 0  # datagrams sealed
        self.opened = 0  # datagrams handed to a receiver

    def advance(self, duration: float) -> None:
        end = self.now + duration
        nodes = self.nodes
        outbox: list[tuple[int, bytes, Destination]] = []
        while self.now < end:
            self.now += self.step
            now = self.now
            for index, node in enumerate(nodes):
                deadline = node.next_timer()
                if deadline is not None and deadline <= now:
                    node.handle_timer(now)
                    self._pump(index, now, outbox)
            # as the runtime does: after every datagram in, pump (events,
            # datagrams out, the timer re-armed)
            while outbox:
                batch, outbox = outbox, []
                self.sent += len(batch)
                for sender, data, dest in batch:
                    for index, node in enumerate(nodes):
                        if index != sender:
                            node.receive_datagram(data, now, dest)
                            self.opened += 1
                            self._pump(index, now, outbox)

    def _pump(
        self, index: int, now: float, outbox: list[tuple[int, bytes, Destination]]
    ) -> None:
        node = self.nodes[index]
        while node.next_event() is not None:
            pass
        for data, dest in node.datagrams_to_send(now):
            outbox.append((index, data, dest))
        node.next_timer()

    def stable(self) -> bool:
        return all(n.stable for n in self.nodes)


def measure(count: int, zones: bool, seconds: float, step: float) -> dict[str, float]:
    cluster = IdleCluster(count, zones, step)
    cluster.advance(WARMUP)
    if not cluster.stable():
        raise SystemExit(f"idle_cost: {count} nodes not stable after {WARMUP} s")
    sent0, opened0 = cluster.sent, cluster.opened
    started = time.process_time()
    cluster.advance(seconds)
    cpu = time.process_time() - started
    sent = (cluster.sent - sent0) / count / seconds
    opened = (cluster.opened - opened0) / count / seconds
    per_node = cpu / count / seconds
    return {
        "nodes": count,
        "cpu_ms_per_node_s": per_node * 1000,
        "sent_per_node_s": sent,
        "received_per_node_s": opened,
        "us_per_datagram": per_node / (sent + opened) * 1e6,
    }


def table(rows: list[dict[str, float]]) -> list[str]:
    out = [
        "| N | CPU per node, ms per s (10 = 1 % of a core) | sent /node/s | received /node/s "
        + "| us per datagram (sent or received) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        out.append(
            f"| {r['nodes']:.0f} | {r['cpu_ms_per_node_s']:.2f} | {r['sent_per_node_s']:.0f} "
            f"| {r['received_per_node_s']:.0f} | {r['us_per_datagram']:.1f} |"
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="N = 3, 16; 2 s; no file written"
    )
    parser.add_argument(
        "--nodes", type=int, nargs="*", help="cluster sizes (default 3 8 16 32)"
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="virtual seconds measured"
    )
    parser.add_argument("--step", type=float, default=0.005, help="clock step (s)")
    parser.add_argument(
        "--no-zones", action="store_true", help="no zone heartbeat copies"
    )
    parser.add_argument(
        "--profile", help="write a cProfile summary of the first size here"
    )
    parser.add_argument("--out", help="write the markdown section here")
    args = parser.parse_args()
    sizes = args.nodes or ([3, 16] if args.quick else [3, 8, 16, 32])
    if any(not 2 <= n <= 200 for n in sizes):
        parser.error("--nodes must be 2..200")
    seconds = 2.0 if args.quick else args.seconds
    if not seconds > 0 or not 0 < args.step <= 0.05:
        parser.error("--seconds must be positive and --step 0 < step <= 0.05")
    zones = not args.no_zones
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        measure(sizes[0], zones, seconds, args.step)
        profiler.disable()
        with open(args.profile, "w") as fh:
            pstats.Stats(profiler, stream=fh).sort_stats("tottime").print_stats(25)
        print(f"idle_cost: profile of N={sizes[0]} in {args.profile}")
        return 0
    rows = [measure(n, zones, seconds, args.step) for n in sizes]
    load = (
        Path("/proc/loadavg").read_text().split()[:3]
        if os.path.exists("/proc/loadavg")
        else []
    )
    lines = table(rows)
    print("\n".join(lines))
    print(f"load average {' '.join(load)}")
    if args.out and not args.quick:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
