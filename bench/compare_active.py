"""Active-active gain: a 3-node fwcluster against one active keepalived node.

Two workloads, each offered by bench/gen/newconn.c from the client through
a fresh cluster: *packets* (1,000 established UDP flows, datagrams at a
fixed rate) and *newconn* (a new UDP connection per datagram). On this one
2-core machine all nodes share the same cores, so more nodes cannot add
capacity; the comparable figure is the cost: CPU time attributed to the
offer (generator, ksoftirqd, sync daemons; see fwbench/active.py) per
forwarded packet and per new connection. Also reported: the forwarded and
created rates the run achieved, and the machine-wide figure (busy time minus
the idle rate just before), which is only meaningful on an idle machine.
Cells: median (min-max) over the runs.

    .venv/bin/python bench/compare_active.py            # 5 runs each
    .venv/bin/python bench/compare_active.py --quick    # one small run, temp dir
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Any

from fwbench import active, report, runloop
from fwbench.baseline_cluster import BaselineCluster
from fwbench.cluster import Cluster
from fwbench.select import available_clusters

WORKLOADS = {"packets": 100_000.0, "newconn": 20_000.0}  # offered per second


def clusters(args: argparse.Namespace) -> list[Cluster]:
    return available_clusters(
        args.systems,
        lambda: [BaselineCluster("tuned", args.baseline_nodes)],
        args.fwcluster_nodes,
    )


def render(results: list[dict[str, Any]], args: argparse.Namespace, runs: int,
           seconds: float) -> list[str]:  # fmt: skip
    lines = report.runs_header("Active-active: CPU cost per packet and per connection", results)  # fmt: skip
    lines += [
        (
            f"fwcluster on {args.fwcluster_nodes} nodes (all active) against keepalived + "
            f"conntrackd on {args.baseline_nodes} nodes (one active). {seconds:g} s per run, "
            "fresh cluster each run. *CPU µs*: CPU time attributed to the offer, divided by "
            "packets forwarded (counted on the nodes' inside interfaces) or connections "
            "created (conntrack tables). Attributed = the generator process (a veth transmit "
            "runs the bridges' and the nodes' receive and forwarding path in the sender's "
            "context) + the ksoftirqd threads (deferred packet work) + the sync daemons "
            "(conntrackd; availability-manager), the last two minus their rate at rest "
            "measured for 2 s just before. The generator's own share is the same for "
            "both systems; the difference between the rows is the firewall's. *Machine µs*: "
            "machine-wide busy time minus the idle rate of the 2 s before, per packet; only "
            "meaningful when nothing else runs (check the load column). On one machine the "
            "nodes share 2 cores: this measures cost, not the capacity separate machines "
            f"would add. Cells: median (min-max) of {runs} runs."
        ),
        "",
    ]
    head = [
        "system",
        "workload",
        "offered /s",
        "achieved /s",
        "forwarded pkt/s",
        "new conn/s",
        "CPU µs / packet",
        "CPU µs / new conn",
        "machine µs / packet",
        "daemon CPU s",
        "load 1m",
    ]
    rows = []
    for key, rs, ok in report.groups(results, "cluster", "workload"):
        rows.append([
            key[0], key[1], f"{rs[0]['rate_offered']:,.0f}",
            report.fmt_mmm([r["rate_achieved"] for r in ok]),
            report.fmt_mmm([r["forwarded_per_s"] for r in ok]),
            report.fmt_mmm([r["created_per_s"] for r in ok]),
            report.fmt_mmm([r["cpu_us_per_packet"] for r in ok], 2),
            report.fmt_mmm([r["cpu_us_per_conn"] for r in ok], 2),
            report.fmt_mmm([r.get("machine_us_per_packet") for r in ok], 2),
            report.fmt_mmm([r["daemon_cpu_s"] for r in ok], 2),
            report.fmt_mmm([r["loadavg_1m"] for r in ok], 1),
        ])  # fmt: skip
    lines += report.table(head, rows)
    lines += report.failed_runs(results, lambda r: f"{r['cluster']} {r['workload']}")
    lines += ["", "![active](compare_active.png)", ""]
    return lines


def plot(results: list[dict[str, Any]], path: Path) -> None:
    plt = report.pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    metrics = (("packets", "cpu_us_per_packet", "CPU µs per forwarded packet"),
               ("newconn", "cpu_us_per_conn", "CPU µs per new connection"))  # fmt: skip
    for ax, (workload, key, label) in zip(axes, metrics, strict=True):
        kinds = list(dict.fromkeys(r["cluster"] for r in results))
        for i, kind in enumerate(kinds, start=1):
            vs = [
                r[key]
                for r in results
                if r["cluster"] == kind
                and r["workload"] == workload
                and "error" not in r
                and r[key] is not None
            ]
            ax.scatter([i] * len(vs), vs, alpha=0.7)
            m = report.mmm(vs)
            if m:
                ax.hlines(m[0], i - 0.25, i + 0.25, color="black")
        ax.set_xticks(range(1, len(kinds) + 1), kinds, fontsize=8)
        ax.set_ylabel(label)
        ax.set_title(f"{workload} (bar = median)")
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = report.parser(__doc__ or "", runs=5)
    p.add_argument("--baseline-nodes", type=int, default=2)
    p.add_argument("--fwcluster-nodes", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args()
    seconds = 1.0 if args.quick else args.seconds
    scale = 0.1 if args.quick else 1.0
    settings = [
        runloop.Setting(
            workload,
            {"workload": workload, "rate_offered": rate * scale},
            partial(
                active.one_run, workload=workload, rate=rate * scale, seconds=seconds
            ),
        )
        for workload, rate in WORKLOADS.items()
    ]
    return runloop.compare(
        args,
        "active",
        partial(clusters, args),
        settings,
        lambda r: f"{r['forwarded_per_s']:,.0f} pkt/s, {r['cpu_us_per_packet']} µs/pkt",
        lambda res, n: render(res, args, n, seconds),
        plot,
    )


if __name__ == "__main__":
    sys.exit(main())
