"""Failover: fwcluster against keepalived + conntrackd (default and tuned).

Per run, a fresh cluster carries 1,000 long-lived TCP streams, 100 UDP
request/response flows and 50 ping flows (one record per flow every 100 ms);
then the active node (keepalived: the VRRP master; fwcluster: the node with
the most connections) is killed (daemons SIGKILLed, links down), or moved
away gracefully (keepalived: its VRRP priority lowered through a track file;
fwcluster: `clusterctl drain`). Reported per system and mode, median (min-max)
over the runs: time to detection, time to the last flow moving again, TCP
streams lost, UDP/ping packets lost, duplicates, and the share of flows that
stalled over 200 ms.

    .venv/bin/python bench/compare_failover.py            # 5 runs each, docs/benchmarks/
    .venv/bin/python bench/compare_failover.py --quick    # 1 small run each, temp dir
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Any

from fwbench import report, runloop
from fwbench.baseline_cluster import BaselineCluster
from fwbench.cluster import Cluster
from fwbench.failover import Load, one_run
from fwbench.select import available_clusters

FULL = Load(tcp=1000, udp=100, ping=50, interval_ms=100, settle_s=3.0, after_s=12.0)
QUICK = Load(tcp=50, udp=10, ping=5, interval_ms=100, settle_s=1.0, after_s=6.0)


def clusters(args: argparse.Namespace) -> list[Cluster]:
    def baselines() -> list[BaselineCluster]:
        out = []
        if "default" in args.variants:
            out.append(BaselineCluster("default", args.baseline_nodes))
        if "tuned" in args.variants:
            out.append(
                BaselineCluster(
                    "tuned", args.baseline_nodes, advert_s=args.tuned_advert
                )
            )
        return out

    return available_clusters(args.systems, baselines, args.fwcluster_nodes)


def render(
    results: list[dict[str, Any]], args: argparse.Namespace, load: Load, runs: int
) -> list[str]:
    lines = report.runs_header("Failover: fwcluster vs keepalived + conntrackd", results)  # fmt: skip
    lines += [
        (
            f"Load: {load.tcp} TCP streams, {load.udp} UDP flows, {load.ping} ping flows, "
            f"one record per flow every {load.interval_ms:g} ms; fault after {load.settle_s:g} s, "
            f"traffic stopped {load.after_s:g} s later. keepalived+conntrackd on "
            f"{args.baseline_nodes} nodes, fwcluster on {args.fwcluster_nodes}. Each cell: median "
            f"(min-max) of {runs} runs, each on a freshly built lab. *Detection*: from the "
            "kill to the first reaction of a survivor (notify script entering primary; agent "
            "log line). *Last flow moving*: the longest gap between two answers of any flow, "
            "which spans the fault (it includes up to one interval of the generator). "
            f"*Streams stalled*: share of TCP streams whose longest gap exceeded "
            f"{2.5 * load.interval_ms:g} ms (2.5 intervals). *Packets lost*: UDP requests and "
            "pings never answered (the generator does not resend them). *Flaps*: failure "
            "detections before the fault (spurious takeovers under this load). *Client late "
            "slots*: sends the traffic generator made late because it lacked CPU (docs/lab.md); "
            "in the thousands, every flow's gaps include the generator's own lateness and the "
            "stall figures are upper bounds, not the firewall's alone."
        ),
        "",
    ]
    head = [
        "system",
        "fault",
        "runs",
        "detection ms",
        "last flow moving ms",
        "TCP lost",
        "packets lost",
        "duplicates",
        "streams stalled %",
        "flaps",
        "client late slots",
        "load 1m",
    ]
    rows = []
    for kind in dict.fromkeys(r["cluster"] for r in results):
        for mode in ("kill", "graceful"):
            rs = [r for r in results if r["cluster"] == kind and r["mode"] == mode]
            ok = [r for r in rs if "error" not in r]
            if not rs:
                continue
            share = [None if r.get("share_stalled") is None
                     else 100 * r["share_stalled"] for r in ok]  # fmt: skip
            rows.append([
                kind, mode, f"{len(ok)}/{len(rs)}",
                report.fmt_mmm([r["detection_ms"] for r in ok]),
                report.fmt_mmm([r["longest_stall_ms"] for r in ok]),
                report.fmt_mmm([r["tcp_lost"] for r in ok]),
                report.fmt_mmm([r["lost_packets"] for r in ok]),
                report.fmt_mmm([r["duplicates"] for r in ok]),
                report.fmt_mmm(share, 1),
                report.fmt_mmm([r.get("flaps_before_fault") for r in ok]),
                report.fmt_mmm([r.get("client_late_slots") for r in ok]),
                report.fmt_mmm([r["loadavg_1m"] for r in ok], 1),
            ])  # fmt: skip
    lines += report.table(head, rows)
    lines += report.failed_runs(results, lambda r: f"{r['cluster']} {r['mode']}")
    lines += ["", "![failover](compare_failover.png)", ""]
    return lines


def plot(results: list[dict[str, Any]], path: Path) -> None:
    plt = report.pyplot()
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    kinds = list(dict.fromkeys(r["cluster"] for r in results))
    colors = {k: f"C{i}" for i, k in enumerate(kinds)}  # one colour per system
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, mode in zip(axes, ("kill", "graceful"), strict=True):
        for i, kind in enumerate(kinds, start=1):
            vs = [
                r["longest_stall_ms"]
                for r in results
                if r["cluster"] == kind and r["mode"] == mode and "error" not in r
            ]
            ax.scatter([i] * len(vs), vs, alpha=0.7, color=colors[kind])
            m = report.mmm(vs)
            if m:
                ax.hlines(m[0], i - 0.25, i + 0.25, color="black")
        ax.set_xticks(range(1, len(kinds) + 1), kinds, rotation=12, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylim(50, 20000)
        ax.set_yticks([50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000])
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("last flow moving again (ms, log)")
        ax.set_title(f"{mode}: outage per run (bar = median)")
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = report.parser(__doc__ or "", runs=5)
    p.add_argument("--baseline-nodes", type=int, default=2)
    p.add_argument("--fwcluster-nodes", type=int, default=3)
    p.add_argument("--tuned-advert", type=float, default=0.1, help="seconds (VRRPv3)")
    p.add_argument("--modes", default="kill,graceful")
    p.add_argument("--variants", default="default,tuned", help="keepalived variants")
    args = p.parse_args()
    load = QUICK if args.quick else FULL
    settings = [
        runloop.Setting(mode, {"mode": mode}, partial(one_run, mode=mode, load=load))
        for mode in args.modes.split(",")
    ]
    return runloop.compare(
        args,
        "failover",
        partial(clusters, args),
        settings,
        lambda r: (
            f"detection {r['detection_ms']} ms, stall "
            f"{r['longest_stall_ms']} ms, lost {r['lost']}"
        ),
        lambda res, n: render(res, args, load, n),
        plot,
    )


if __name__ == "__main__":
    sys.exit(main())
