"""Data-plane cost: iperf3 through one cluster node (nftables backend, real
agents running, 3 nodes, so every frame is also flooded to the two nodes
that drop it) against the same namespace path through one node with only a
plain stateful nft ruleset (`ct state established,related accept; ct state
new accept`; the lab's `--no-agent` plumbing for the cluster IP and MAC, the
other two nodes' links down).

Both labs are up at once (prefixes fwr- and fwrb-) and the runs alternate
between them, so a change in the machine's background load hits both alike.
Per run: one iperf3 TCP stream for a few seconds from the client to the
server; throughput as the receiver counted it, and the machine's busy CPU
(/proc/stat) per gigabyte moved. Goal (issue 3): cluster >= 95 % of plain.

    .venv/bin/python bench/dataplane_cost.py           # 7 runs each, docs/benchmarks/
    .venv/bin/python bench/dataplane_cost.py --quick   # 1 short run each, temp dir
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from fwbench import env, labrun, report
from fwcluster_lab.build import set_links
from fwcluster_lab.netns import nft, ns_run, spawn, stop
from fwcluster_lab.state import LabState

GOAL = 0.95
PORT = 5201

PLAIN_RULESET = """
table inet fwbench_plain {
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    ct state new accept
  }
}
"""


def start_server(state: LabState) -> None:
    server = state.topology().servers[0]
    argv = ["iperf3", "-s", "-B", str(server.links[0].address.ip), "-p", str(PORT)]
    proc = spawn(server.ns, argv, state.run_dir / "iperf3-server.log", "fwbench-iperf3")
    state.procs[proc.what] = proc  # recorded: `down` ends it if we die first
    state.save()
    time.sleep(0.5)


def one_run(state: LabState, seconds: float) -> dict[str, Any]:
    topo = state.topology()
    client, server = topo.clients[0], topo.servers[0]
    argv = ["iperf3", "-c", str(server.links[0].address.ip), "-p", str(PORT)]
    argv += ["-t", f"{seconds:g}", "-J"]
    j0, load = env.Jiffies(), env.loadavg()[0]
    out = ns_run(client.ns, argv, check=False, timeout=seconds + 30)
    busy = env.Jiffies().busy_s_since(j0)
    data = json.loads(out.stdout) if out.stdout.strip() else {}
    if out.returncode != 0 or "end" not in data:
        raise RuntimeError(f"iperf3 failed: {data.get('error', out.stderr.strip())}")
    end = data["end"]
    received = end["sum_received"]
    gbytes = received["bytes"] / 1e9
    return {
        "gbit_s": received["bits_per_second"] / 1e9,
        "retransmits": end["sum_sent"].get("retransmits", 0),
        "machine_busy_cpu_s": busy,
        "cpu_s_per_gb": busy / gbytes if gbytes else None,
        "iperf_client_cpu_pct": end["cpu_utilization_percent"]["host_total"],
        "iperf_server_cpu_pct": end["cpu_utilization_percent"]["remote_total"],
        "loadavg_1m": load,
    }


@contextlib.contextmanager
def cluster_lab() -> Any:
    with labrun.lab("dataplane-cluster") as state:
        start_server(state)
        yield state


DROP_RULESET = """
table inet fwbench_drop {
  chain forward {
    type filter hook forward priority 0; policy drop;
  }
}
"""


@contextlib.contextmanager
def plain_lab(flooded: bool) -> Any:
    """One forwarding node with the plain ruleset. `flooded`: the other two
    nodes' links are up too, forwarding nothing (policy drop), so the bridges
    flood every frame to them as in the cluster: the design's flooding cost
    without any of the agent's rules."""
    name, prefix = (
        ("dataplane-flooded", env.PREFIX_FLOODED)
        if flooded
        else ("dataplane-plain", env.PREFIX_BASELINE)
    )
    with labrun.lab(name, agents=False, prefix=prefix) as state:
        nodes = state.topology().nodes
        nft(nodes[0].ns, PLAIN_RULESET)
        if flooded:
            for node in nodes[1:]:
                nft(node.ns, DROP_RULESET)
                set_links(node, True)
        start_server(state)
        yield state


def forwarding_node(state: LabState) -> str:
    """Which cluster node carried the iperf3 stream (its accepted_new counter)."""
    best, most = "?", -1
    for n in state.topology().nodes:
        st = labrun.status(state, n.name)
        c = int(st.get("dataplane", {}).get("counters", {}).get("accepted_new", 0))
        if c > most:
            best, most = n.name, c
    return best


def plot(runs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    plt = report.pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for i, (name, rs) in enumerate(runs.items()):
        a.scatter([i] * len(rs), [r["gbit_s"] for r in rs], label=name)
        if rs:
            a.hlines(
                statistics.median(r["gbit_s"] for r in rs), i - 0.2, i + 0.2, color="k"
            )
        b.scatter([i] * len(rs), [r["cpu_s_per_gb"] or 0 for r in rs], label=name)
    for ax, ylabel in ((a, "iperf3 Gbit/s (receiver)"), (b, "machine CPU-s per GB")):
        ax.set_xticks(range(len(runs)), list(runs))
        ax.set_ylabel(ylabel)
    a.set_title("throughput per run (line: median)")
    b.set_title("CPU per gigabyte moved")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_section(
    args: argparse.Namespace,
    runs: dict[str, list[dict[str, Any]]],
    carriers: list[str],
    facts: dict[str, str],
    load: str,
) -> None:
    d = report.out_dir(args, "dataplane_cost")
    plot(runs, d / "dataplane_cost.png")
    med = {k: statistics.median(r["gbit_s"] for r in v) for k, v in runs.items()}
    cpu = {
        k: statistics.median(r["cpu_s_per_gb"] for r in v if r["cpu_s_per_gb"])
        for k, v in runs.items()
    }
    ratio = med["cluster"] / med["plain"] if med["plain"] else 0.0
    flood_ratio = med["plain+flood"] / med["plain"] if med["plain"] else 0.0
    lines = report.header("Data-plane cost (iperf3 through one node)", facts, load)
    lines += [
        (
            f"{args.runs} runs each of one iperf3 TCP stream for {args.seconds:g} s, client "
            "to server through the cluster IP, rotating between three labs that are up at "
            "the same time: *cluster*, 3 nodes with the real agents and the nftables data "
            "plane (the stream's bucket owner forwards it, the other two see every frame "
            "and drop it); *plain*, one node with the lab's `--no-agent` cluster-IP plumbing "
            "and only `ct state established,related accept; ct state new accept` in its "
            "forward chain, the other nodes' links down; *plain+flood*, see below. CPU is "
            "the whole machine's busy "
            "time (/proc/stat) during the run per gigabyte received: softirq work in "
            "namespaces cannot be attributed to one of them. Nodes that carried the "
            f"cluster's streams: {', '.join(sorted(set(carriers)))}."
        ),
        "",
        (
            f"**Median throughput: cluster {med['cluster']:.2f} Gbit/s, plain "
            f"{med['plain']:.2f} Gbit/s: {ratio:.1%} of plain. Goal >= 95 %: "
            f"{'met' if ratio >= GOAL else 'NOT met'}.** Median CPU per GB: cluster "
            f"{cpu['cluster']:.2f} s, plain {cpu['plain']:.2f} s "
            f"({cpu['cluster'] / cpu['plain']:.0%} of plain)."
        ),
        "",
        (
            f"Where the difference goes: *plain+flood* (the plain node, with the two other "
            "nodes cabled and up but forwarding nothing, so every frame is flooded to them "
            f"as in the cluster) reaches {med['plain+flood']:.2f} Gbit/s, {flood_ratio:.1%} "
            f"of plain, at {cpu['plain+flood']:.2f} CPU-s per GB: what plain+flood loses "
            "against plain is the cost of the multicast-MAC design itself (every node "
            "receives every frame, on a machine where all namespaces share 2 cores); what "
            "the cluster loses beyond plain+flood is the agent's ruleset (the bucket check "
            "on established packets, conntrack marks) and the agents."
        ),
        "",
        (
            "Spread (min-max of the runs): "
            + "; ".join(
                f"{k} {min(r['gbit_s'] for r in v):.2f}-{max(r['gbit_s'] for r in v):.2f} Gbit/s"
                for k, v in runs.items()
            )
            + ". A difference smaller than this spread is not a measured difference."
        ),
        "",
    ]
    busy = statistics.median(
        r["machine_busy_cpu_s"] / args.seconds / (os.cpu_count() or 1)
        for rs in runs.values()
        for r in rs
    )
    if busy > 0.95:
        lines += [
            (
                f"The machine was {busy:.0%} busy during the runs (other work as well as "
                "iperf3): CPU per GB then only mirrors throughput, and throughput is what "
                "the stream got of a saturated machine. Re-run on an idle machine for the "
                "cost proper."
            ),
            "",
        ]
    rows = []
    for name, rs in runs.items():
        for i, r in enumerate(rs, 1):
            rows.append([
                f"{name} {i}", f"{r['gbit_s']:.2f}", r["retransmits"],
                f"{r['machine_busy_cpu_s']:.1f}", f"{r['cpu_s_per_gb'] or 0:.2f}",
                f"{r['iperf_client_cpu_pct']:.0f}", f"{r['iperf_server_cpu_pct']:.0f}",
                f"{r['loadavg_1m']:.2f}",
            ])  # fmt: skip
    lines += report.table(
        ["run", "Gbit/s", "retransmits", "machine busy CPU s", "CPU s / GB",
         "iperf3 client CPU %", "iperf3 server CPU %", "load 1m"],
        rows,
    )  # fmt: skip
    lines += ["", "![data-plane cost](dataplane_cost.png)", ""]
    report.write(d, "dataplane_cost", lines, {"runs": runs, "facts": facts})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    report.add_common_options(p)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.seconds = 1, 1.0
    if os.geteuid() != 0:
        print("dataplane_cost: needs root (network namespaces)", file=sys.stderr)
        return 2
    facts = env.machine_facts()
    runs: dict[str, list[dict[str, Any]]] = {
        "cluster": [],
        "plain": [],
        "plain+flood": [],
    }
    carriers: list[str] = []
    with (
        env.LoadSampler() as sampler,
        cluster_lab() as cl,
        plain_lab(False) as pl,
        plain_lab(True) as fl,
    ):
        for i in range(args.runs):
            # Rotate the order, so that none always follows another.
            order = [("cluster", cl), ("plain", pl), ("plain+flood", fl)]
            for name, state in order[i % 3 :] + order[: i % 3]:
                r = one_run(state, args.seconds)
                runs[name].append(r)
                print(f"{name} {i + 1}: {r['gbit_s']:.2f} Gbit/s", flush=True)
        carriers.append(forwarding_node(cl))
        for state in (cl, pl, fl):
            proc = state.procs.pop("fwbench-iperf3", None)
            if proc is not None:
                stop(proc)
    write_section(args, runs, carriers, facts, sampler.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
