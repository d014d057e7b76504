"""Loss on the sync network: connections missing after a failover.

Per run, a fresh 2-node cluster, the sync bridge dropping N % of frames
(`lab loss sync N`), new UDP connections from bench/gen/newconn.c for a few
seconds, 1 s of grace, then the node holding them is killed. Reported per
system and loss rate, median (min-max) over the runs: connections of the
victim missing from the survivor's kernel table after the takeover, the
sync traffic sent per connection (bytes on every node's sync interface,
heartbeats and VRRP included), the takeover time, and how often failure
detection fired before the planned kill (flaps caused by the loss itself).

    .venv/bin/python bench/compare_syncloss.py            # 5 runs per loss rate
    .venv/bin/python bench/compare_syncloss.py --quick    # one small run, temp dir
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Any

from fwbench import agent_settings, report, runloop, syncloss
from fwbench.baseline_cluster import BaselineCluster
from fwbench.cluster import Cluster
from fwbench.select import available_clusters

LOSSES = [0, 10, 20, 30]


def clusters(args: argparse.Namespace) -> list[Cluster]:
    return available_clusters(
        args.systems, lambda: [BaselineCluster(args.variant, args.nodes)], args.nodes
    )


def render(results: list[dict[str, Any]], args: argparse.Namespace, runs: int,
           rate: float, seconds: float) -> list[str]:  # fmt: skip
    lines = report.runs_header("Loss on the sync network: fwcluster vs conntrackd FTFW", results)  # fmt: skip
    lines += [
        (
            f"{args.nodes} nodes each (keepalived variant: {args.variant}; fwcluster's agents: "
            f"{agent_settings.describe(args.heartbeat)}). Per run a fresh "
            f"cluster, sync loss set, {rate:,.0f} new UDP connections/s for {seconds:g} s, 1 s "
            "of grace, then the node holding them is killed. *Missing*: the victim's generator "
            "connections absent from every survivor's kernel table after the takeover. *Sync "
            "bytes/conn*: bytes sent on all sync interfaces during the offer and the grace "
            "second, per connection offered (includes heartbeats/VRRP). *Flaps*: failure "
            "detections before the kill, caused by the loss alone (for keepalived a flap is a "
            f"second master: both nodes forward). Cells: median (min-max) of {runs} runs."
        ),
        "",
    ]
    head = [
        "system",
        "sync loss %",
        "runs",
        "on victim",
        "missing after failover",
        "takeover s",
        "sync bytes/conn",
        "flaps",
        "load 1m",
    ]
    rows = []
    for key, rs, ok in report.groups(results, "cluster", "loss_percent"):
        rows.append([
            key[0], str(key[1]), f"{len(ok)}/{len(rs)}",
            report.fmt_mmm([r["on_victim"] for r in ok]),
            report.fmt_mmm([r["missing_after_failover"] for r in ok]),
            report.fmt_mmm([r["takeover_s"] for r in ok], 2),
            report.fmt_mmm([r["sync_bytes_per_conn"] for r in ok], 1),
            report.fmt_mmm([r["flaps_before_kill"] for r in ok]),
            report.fmt_mmm([r["loadavg_1m"] for r in ok], 1),
        ])  # fmt: skip
    lines += report.table(head, rows)
    lines += report.failed_runs(
        results, lambda r: f"{r['cluster']} {r['loss_percent']} %"
    )
    lines += ["", "![sync loss](compare_syncloss.png)", ""]
    return lines


def plot(results: list[dict[str, Any]], path: Path) -> None:
    plt = report.pyplot()

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for kind in dict.fromkeys(r["cluster"] for r in results):
        ok = [r for r in results if r["cluster"] == kind and "error" not in r]
        losses = sorted({r["loss_percent"] for r in ok})
        med_missing, med_bytes = [], []
        for p in losses:
            m = report.mmm(
                [r["missing_after_failover"] for r in ok if r["loss_percent"] == p]
            )
            b = report.mmm(
                [r["sync_bytes_per_conn"] for r in ok if r["loss_percent"] == p]
            )
            med_missing.append(m[0] if m else 0.0)
            med_bytes.append(b[0] if b else 0.0)
        a1.plot(losses, med_missing, marker="o", label=kind)
        a2.plot(losses, med_bytes, marker="o", label=kind)
    a1.set_ylabel("connections missing after failover (median)")
    a2.set_ylabel("sync bytes sent per connection (median)")
    for a in (a1, a2):
        a.set_xlabel("loss on the sync network (%)")
        a.grid(True, alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = report.parser(__doc__ or "", runs=5)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--variant", default="default", choices=("default", "tuned"))
    p.add_argument("--losses", default=",".join(str(x) for x in LOSSES))
    p.add_argument("--rate", type=float, default=2000.0, help="new connections / s")
    p.add_argument("--seconds", type=float, default=5.0)
    agent_settings.add_options(p)  # fwcluster's side only (keepalived keeps its own)
    args = p.parse_args()
    args.heartbeat = agent_settings.apply(args)
    losses = [20] if args.quick else [int(x) for x in args.losses.split(",")]
    rate, seconds = (1000.0, 1.0) if args.quick else (args.rate, args.seconds)
    settings = [
        runloop.Setting(
            f"loss {loss} %",
            {"loss_percent": loss},
            partial(syncloss.one_run, loss_percent=loss, rate=rate, seconds=seconds),
        )
        for loss in losses
    ]
    return runloop.compare(
        args,
        "syncloss",
        partial(clusters, args),
        settings,
        lambda r: (
            f"on victim {r['on_victim']}, missing "
            f"{r['missing_after_failover']}, flaps {r['flaps_before_kill']}"
        ),
        lambda res, n: render(res, args, n, rate, seconds),
        plot,
    )


if __name__ == "__main__":
    sys.exit(main())
