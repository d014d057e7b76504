"""Sync throughput: new connections per second replicated to the peers.

For each offered rate (a ladder), a fresh 2-node cluster gets N new UDP
connections from bench/gen/newconn.c (one datagram each, all distinct
5-tuples) and the peers' caches are counted 1 s after the last send.
Reported per system and rate, median (min-max) over the runs: the rate the
generator achieved, connections missing on the peers at the 1 s bound, and
the sync daemons' CPU seconds and resident-memory growth per 100,000
connections. The highest achieved rate with nothing missing in every run is
the system's sync throughput here; the first rate with anything missing is
its point of loss.

    .venv/bin/python bench/compare_sync.py            # 5 runs per rate, docs/benchmarks/
    .venv/bin/python bench/compare_sync.py --quick    # one small run, temp dir
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Any

from fwbench import report, runloop, sync
from fwbench.baseline_cluster import BaselineCluster
from fwbench.cluster import Cluster
from fwbench.select import available_clusters

RATES = [5_000, 10_000, 20_000, 40_000, 80_000]
SECONDS = 3.0  # of offering per run
MAX_COUNT = 200_000  # kernel tables hold 262,144 per namespace here


def clusters(args: argparse.Namespace) -> list[Cluster]:
    return available_clusters(
        args.systems, lambda: [BaselineCluster("default", args.nodes)], args.nodes
    )


def throughput(
    results: list[dict[str, Any]], kind: str
) -> tuple[float | None, float | None]:
    """(highest median achieved rate with 0 missing in every run, first offered rate
    with any missing) for one system."""
    best, loss = None, None
    for rate in sorted({r["rate_offered"] for r in results if r["cluster"] == kind}):
        rs = [r for r in results if r["cluster"] == kind and r["rate_offered"] == rate]
        ok = [r for r in rs if "error" not in r]
        if ok and len(ok) == len(rs) and all(r["missing_at_1s"] == 0 for r in ok):
            m = report.mmm([r["rate_achieved"] for r in ok])
            if m is not None and (best is None or m[0] > best):
                best = m[0]
        elif loss is None and any(r["missing_at_1s"] > 0 for r in ok):
            loss = rate
    return best, loss


def render(
    results: list[dict[str, Any]], args: argparse.Namespace, runs: int
) -> list[str]:
    lines = report.runs_header("Sync throughput: fwcluster vs conntrackd FTFW", results)  # fmt: skip
    lines += [
        (
            f"{args.nodes} nodes each. Per run a fresh cluster, {SECONDS:g} s of new UDP "
            "connections at the offered rate from `bench/gen/newconn.c` (raw socket, 2 sender "
            "processes), every connection a new 5-tuple. *Missing at 1 s*: connections not in "
            "the peers' caches 1 s after the last send (conntrackd: external cache; fwcluster: "
            "the agent's peer cache), out of created x (nodes - 1). CPU and memory are the sync "
            "daemons' own (conntrackd; availability-manager), summed over the nodes, per "
            "100,000 connections created; CPU is counted from the first send to the 1 s "
            "bound, minus the daemons' rate at rest measured for 1 s just before "
            "(heartbeats, answering the count polls). *Flaps*: failure detections during the "
            "run (none is a fault: a false takeover moves entries from a peer cache into its "
            "kernel table and spoils that run's counts; n/a where not recorded). "
            "Cells: median (min-max) of "
            f"{runs} runs. Caveat: the whole data path (generator, veth, bridge, forwarding, "
            "conntrack) shares the same 2 cores, so the achieved rate is the machine's, and "
            "whatever the sync daemon uses is taken from the data path."
        ),
        "",
    ]
    head = [
        "system",
        "offered /s",
        "achieved /s",
        "created",
        "missing at 1 s",
        "sync CPU s /100k",
        "RSS growth MiB /100k",
        "flaps",
        "load 1m",
    ]
    rows = []
    for key, _, ok in report.groups(results, "cluster", "rate_offered"):
        rows.append([
            key[0], f"{key[1]:,.0f}",
            report.fmt_mmm([r["rate_achieved"] for r in ok]),
            report.fmt_mmm([r["created"] for r in ok]),
            report.fmt_mmm([r["missing_at_1s"] for r in ok]),
            report.fmt_mmm([r["sync_cpu_s_per_100k"] for r in ok], 2),
            report.fmt_mmm([r["sync_rss_growth_mib_per_100k"] for r in ok], 1),
            report.fmt_mmm([r.get("flaps") for r in ok]),
            report.fmt_mmm([r["loadavg_1m"] for r in ok], 1),
        ])  # fmt: skip
    lines += report.table(head, rows)
    lines += ["", ("Summary (highest achieved rate with nothing missing at 1 s in every run; "
              "first offered rate with any loss):"), ""]  # fmt: skip
    kinds = list(dict.fromkeys(r["cluster"] for r in results))
    best = {k: throughput(results, k) for k in kinds}
    for k in kinds:
        b, loss = best[k]
        lines.append(
            f"- {k}: {'n/a' if b is None else f'{b:,.0f}/s'}; first loss at "
            f"{'none offered' if loss is None else f'{loss:,.0f}/s offered'}"
        )
    fw, base = (
        best.get("fwcluster", (None, None))[0],
        best.get("keepalived default", (None, None))[0],
    )
    if fw is not None and base:
        lines.append(f"- ratio fwcluster / conntrackd: {fw / base:.2f} (goal >= 1.0)")
        if all(best[k][1] is None for k in kinds):
            lines.append(
                "- neither side lost a connection at any offered rate: both kept up "
                "with everything this machine could push through its data path, so "
                "the ratio compares data-path rates, not the sync daemons' limits"
            )
    else:
        lines.append("- ratio fwcluster / conntrackd: not measured (a side is missing)")
    lines += report.failed_runs(
        results, lambda r: f"{r['cluster']} {r['rate_offered']:,.0f}/s"
    )
    lines += ["", "![sync](compare_sync.png)", ""]
    return lines


def plot(results: list[dict[str, Any]], path: Path) -> None:
    plt = report.pyplot()

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for kind in dict.fromkeys(r["cluster"] for r in results):
        ok = [r for r in results if r["cluster"] == kind and "error" not in r]
        a1.scatter([r["rate_achieved"] for r in ok],
                   [100 * r["missing_at_1s"] / max(1, r["expected_on_peers"]) for r in ok],
                   label=kind, alpha=0.7)  # fmt: skip
        # The replication curve of the fastest run: peers' count over time.
        if ok:
            top = max(ok, key=lambda r: r["rate_achieved"])
            xs = [t for t, _ in top["samples"]]
            ys = [k for _, k in top["samples"]]
            a2.plot(xs, ys, label=f"{kind}, {top['rate_achieved']:,.0f}/s")
            a2.axvline(top["offer_end"] - top["offer_start"], ls=":", alpha=0.5)
    a1.set_xlabel("achieved new connections / s")
    a1.set_ylabel("missing on peers at 1 s (%)")
    a1.set_title("loss at the 1 s bound")
    a2.set_xlabel("seconds since the first send (dotted: last send)")
    a2.set_ylabel("connections on the peers")
    a2.set_title("replication of the fastest run")
    for a in (a1, a2):
        a.grid(True, alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = report.parser(__doc__ or "", runs=5)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--rates", default=",".join(str(r) for r in RATES))
    p.add_argument("--seconds", type=float, default=SECONDS)
    p.add_argument("--procs", type=int, default=2, help="generator sender processes")
    args = p.parse_args()
    rates = [2_000.0] if args.quick else [float(r) for r in args.rates.split(",")]
    seconds = 1.0 if args.quick else args.seconds
    settings = [
        runloop.Setting(
            f"{rate:,.0f}/s x {count:,}",
            {"rate_offered": rate},
            partial(sync.one_run, rate=rate, count=count, procs=args.procs),
        )
        for rate, count in ((r, min(MAX_COUNT, int(r * seconds))) for r in rates)
    ]
    return runloop.compare(
        args,
        "sync",
        partial(clusters, args),
        settings,
        lambda r: (
            f"achieved {r['rate_achieved']:,.0f}/s, created "
            f"{r['created']:,}, missing {r['missing_at_1s']:,}"
        ),
        lambda res, n: render(res, args, n),
        plot,
    )


if __name__ == "__main__":
    sys.exit(main())
