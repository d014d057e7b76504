"""What watching the agent's nftables tables costs, and how fast a flushed
ruleset comes back (issue 14, kernelfaults).

One network namespace (`kfw-<pid>`, two veth pairs as zone interfaces) with
the nftables backend installed (256 buckets, a third owned), as the agent has
it. Measured, CPU as user+system of this process and its `nft` children:
  * check(): the comparison of both tables with what install() left, which the
    agent runs after every notification naming its table and every 10 s;
  * install(): the restore;
  * flush to restored: `nft flush ruleset`, then what the agent does (the
    notification on the NFNLGRP_NFTABLES socket, check, install) until the
    tables are complete again, wall time, `--rounds` times.
Waiting on the notification socket costs nothing while nobody touches nft.

    flock /work/lab.lock .venv/bin/python bench/ruleset_watch_cost.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "agent"))

from availability_manager.dataplane.base import DataPlaneConfig, Zone
from availability_manager.dataplane.nft_monitor import RulesetMonitor
from availability_manager.dataplane.nft_ruleset import TABLE
from availability_manager.dataplane.nftables import NftablesDataPlane
from availability_manager.types import ClusterSettings
from fwcluster_lab.nslab import inside


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def namespace() -> Iterator[str]:
    ns = f"kfw-{os.getpid()}"
    sh("ip", "netns", "add", ns)
    try:
        for ifname in ("in0", "out0"):
            sh(
                "ip",
                "-n",
                ns,
                "link",
                "add",
                ifname,
                "type",
                "veth",
                "peer",
                f"{ifname}p",
            )
            sh("ip", "-n", ns, "link", "set", ifname, "up")
            sh("ip", "-n", ns, "link", "set", f"{ifname}p", "up")
        sh("ip", "-n", ns, "addr", "add", "192.0.2.2/24", "dev", "in0")
        sh("ip", "-n", ns, "addr", "add", "198.51.100.2/24", "dev", "out0")
        yield ns
    finally:
        sh("ip", "netns", "del", ns)


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def per_call(fn: Callable[[], object], n: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per call."""
    c0, w0 = cpu_s(), time.monotonic()
    for _ in range(n):
        fn()
    return (cpu_s() - c0) * 1000 / n, (time.monotonic() - w0) * 1000 / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 rounds")
    args = ap.parse_args()
    if args.quick:
        args.rounds = 3
    ip = ipaddress.ip_interface
    config = DataPlaneConfig(
        node_id=1,
        settings=ClusterSettings(buckets=256, hash_seed=0x5EEDF17E),
        zones=(
            Zone("inside", "in0", (ip("192.0.2.1/24"),), "03:fc:00:00:00:01"),
            Zone("outside", "out0", (ip("198.51.100.1/24"),), "03:fc:00:00:00:02"),
        ),
    )
    with namespace() as ns, inside(ns):
        dp = NftablesDataPlane(config)
        monitor = RulesetMonitor(TABLE)
        dp.install()
        dp.set_owned_buckets(frozenset(range(0, 256, 3)))
        monitor.changed()
        check_cpu, check_wall = per_call(dp.check, args.rounds)
        install_cpu, install_wall = per_call(dp.install, args.rounds)
        monitor.changed()
        restored: list[float] = []
        for _ in range(args.rounds):
            t0 = time.monotonic()
            sh("nft", "flush", "ruleset")
            select.select([monitor.fileno()], [], [], 5.0)
            assert monitor.changed()
            time.sleep(0.02)  # the runtime's RULESET_CHECK_DELAY_S
            assert dp.check() is not None
            dp.install()
            restored.append((time.monotonic() - t0) * 1000)
            monitor.changed()  # the restore's own notifications
        assert dp.check() is None
        dp.uninstall()
        monitor.close()
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"loadavg {' '.join(load)}")
    print(f"check():   {check_cpu:.1f} ms CPU, {check_wall:.1f} ms wall per call")
    print(
        f"  every 10 s (the backstop): {check_cpu / 10:.2f} ms CPU per second "
        f"= {check_cpu / 100:.3f} % of a core"
    )
    print(f"install(): {install_cpu:.1f} ms CPU, {install_wall:.1f} ms wall per call")
    print(
        f"flush -> restored: median {statistics.median(restored):.0f} ms, "
        f"max {max(restored):.0f} ms over {len(restored)} rounds"
    )


if __name__ == "__main__":
    main()
