"""d: what a node pays for a packet it does not own, against one it forwards.

One firewall namespace running the nftables data plane in-process, between a
client and a server (client - fw - server, veth pairs, no agent: the owned
set is set directly). The same flood (bench/gen/newconn.c: UDP packets of
1000 fixed flows at a fixed rate, sent to the cluster MAC) goes through the
fw in each case, with the early chain off (today's ruleset) and on:

* forward: the fw owns every bucket and forwards the flows (the server
  drops them at its netdev ingress hook, the cheapest sink);
* foreign, unknown: the fw owns no bucket and has no entry (a non-owner);
* foreign, known: the fw owns no bucket but holds the flows' entries (the
  forward case just made them: a node that got them by sync, or gave the
  bucket away);
and two references, the same with either mode:
* sender only: the fw's end of the client's veth is down, so the packets
  are dropped as they leave the client (the generator's cost, no node's);
* ingress drop: the fw drops them at netdev ingress on its zone interface
  (the cheapest drop the nftables backend could do without XDP);
* prerouting drop: one rule at prerouting -300 drops them (the floor of any
  chain at the early chain's hook: the IP receive path up to it).

Cost = CPU of the generator process (a veth transmit runs the receiving
namespaces' whole path in the sender's context) plus the ksoftirqd threads'
(what the kernel deferred), per packet sent. The node's share of a case is
its cost minus the sender-only cost; d = node's share of a foreign packet /
node's share of a forwarded one, in the same mode and round. The cases
rotate within each round so that load changes hit all alike.

    .venv/bin/python bench/early_drop_cost.py           # 5 rounds, docs/benchmarks/
    .venv/bin/python bench/early_drop_cost.py --quick   # 1 short round, temp dir
    .venv/bin/python bench/early_drop_cost.py --backend clusterdev   # in a guest

With `--backend clusterdev` the same cases run with the kernel module's
backend (ClusterdevDataPlane; the early decision is its receive handler's,
clusterdev_early.c) inside a virtme-ng guest (TCG; the host cannot load
modules), whose CPU figures are emulated: only the ratios, measured alike
in the same guest, mean anything.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from availability_manager.dataplane.base import DataPlane, DataPlaneConfig, Zone
from availability_manager.dataplane.clusterdev import ClusterdevDataPlane
from availability_manager.dataplane.early_drop import EarlyDrop
from availability_manager.dataplane.nftables import NftablesDataPlane
from availability_manager.types import ClusterSettings
from fwbench import env, gen, guest, report
from fwbench.foreign_cost import MODES, analyse, gain
from fwbench.measure import children_cpu_s, iface_counters, softirq_threads_cpu_s
from fwcluster_lab.nslab import NsLab, inside, sh

CLIENT, SERVER = "198.18.1.10", "198.18.2.10"
CLUSTER_IN, CLUSTER_OUT = "198.18.1.1", "198.18.2.1"
DPORT = 5000
FLOWS = 1000
SETTINGS = ClusterSettings(buckets=256)
CASES = ("forward", "foreign_unknown", "foreign_known")
REFERENCES = ("sender_only", "ingress_drop", "prerouting_drop")
GOAL_D = 0.10

SINK = f"""table netdev fwbench_sink {{
  chain in {{ type filter hook ingress device "eth0" priority 0; udp dport {DPORT} drop; }}
}}"""
PREROUTING_DROP = f"""table inet fwbench_prerouting {{
  chain pre {{ type filter hook prerouting priority -300; udp dport {DPORT} drop; }}
}}"""
INGRESS_DROP = f"""table netdev fwbench_ingress {{
  chain in {{ type filter hook ingress device "in0" priority 0; udp dport {DPORT} drop; }}
}}"""


def nft_in(ns: str, script: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, text=True,
                   check=True)  # fmt: skip


def config(early: bool, backend: str = "nftables") -> DataPlaneConfig:
    ip = ipaddress.ip_interface
    return DataPlaneConfig(
        node_id=1,
        settings=dataclasses.replace(SETTINGS, backend=backend),
        zones=(
            Zone("inside", "in0", (ip(f"{CLUSTER_IN}/24"),), "03:fc:00:00:0e:01"),
            Zone("outside", "out0", (ip(f"{CLUSTER_OUT}/24"),), "03:fc:00:00:0e:02"),
        ),
        early_drop=EarlyDrop(enabled=early),
    )


@dataclasses.dataclass
class Bench:
    lab: NsLab
    client: str
    fw: str
    server: str
    backend: str = "nftables"
    dp: DataPlane | None = None
    early: bool | None = None

    def data_plane(self, early: bool, owned: frozenset[int]) -> None:
        with inside(self.fw):
            if self.dp is None or self.early != early:
                if self.dp is not None:
                    self.dp.uninstall()
                cfg = config(early, self.backend)
                self.dp = (
                    ClusterdevDataPlane(cfg)
                    if self.backend == "clusterdev"
                    else NftablesDataPlane(cfg)
                )
                self.dp.install()
                self.early = early
            self.dp.set_owned_buckets(owned)

    def forwarded(self) -> int:
        return iface_counters(self.fw, "out0")[3]  # packets transmitted


@contextlib.contextmanager
def bench_lab(backend: str = "nftables") -> Iterator[Bench]:
    lab = NsLab(f"fwed-{os.getpid()}-")
    b: Bench | None = None
    try:
        b = Bench(lab, lab.ns("c"), lab.ns("f"), lab.ns("s"), backend)
        lab.veth(b.client, "eth0", b.fw, "in0")
        lab.veth(b.fw, "out0", b.server, "eth0")
        lab.addr(b.client, "eth0", f"{CLIENT}/24")
        lab.addr(b.fw, "in0", "198.18.1.2/24")
        lab.addr(b.fw, "out0", "198.18.2.2/24")
        lab.addr(b.server, "eth0", f"{SERVER}/24")
        lab.route(b.client, "198.18.2.0/24", CLUSTER_IN)
        lab.route(b.server, "198.18.1.0/24", CLUSTER_OUT)
        nft_in(b.server, SINK)
        b.data_plane(False, frozenset(range(SETTINGS.buckets)))
        # neighbours resolved before anything is measured
        sh("ping", "-c", "1", "-W", "2", SERVER, ns=b.client, check=False)
        yield b
    finally:
        if b is not None and b.dp is not None:
            with inside(b.fw), contextlib.suppress(Exception):
                b.dp.uninstall()
        lab.destroy()


def flood(b: Bench, rate: float, seconds: float) -> dict[str, float]:
    count = int(rate * seconds)
    args = gen.argv(CLIENT, SERVER, DPORT, count, rate, procs=1, max_s=4 * seconds + 10,
                    flows=FLOWS)  # fmt: skip
    fwd0, k0, g0 = b.forwarded(), softirq_threads_cpu_s(), children_cpu_s()
    offer = gen.run(b.client, args, timeout=6 * seconds + 30)
    gen_s = children_cpu_s() - g0
    softirq_s = softirq_threads_cpu_s() - k0
    return {
        "sent": offer.sent,
        "rate": offer.rate,
        "forwarded": b.forwarded() - fwd0,
        "generator_cpu_s": gen_s,
        "softirq_cpu_s": softirq_s,
        "us_per_packet": (gen_s + softirq_s) / offer.sent * 1e6 if offer.sent else 0.0,
        "loadavg_1m": env.loadavg()[0],
    }


def run_case(
    b: Bench, mode: str, case: str, rate: float, seconds: float
) -> dict[str, float]:
    every, nothing = frozenset(range(SETTINGS.buckets)), frozenset[int]()
    early = mode == "early"
    if case == "forward":
        b.data_plane(early, every)
    elif case == "foreign_unknown":
        b.data_plane(early, nothing)
        sh("conntrack", "-F", ns=b.fw, check=False)
    elif case == "foreign_known":
        b.data_plane(early, every)  # the flows' entries exist (and are fresh)
        flood(b, min(rate, 20000.0), min(seconds, 0.5))
        b.data_plane(early, nothing)
    elif case == "sender_only":
        # the fw's end of the veth down: veth_xmit drops at once (an nft drop
        # in the client's output hook would fail the generator's sendmmsg)
        sh("ip", "-n", b.fw, "link", "set", "in0", "down")
    elif case == "ingress_drop":
        nft_in(b.fw, INGRESS_DROP)
    elif case == "prerouting_drop":
        nft_in(b.fw, PREROUTING_DROP)
    try:
        return flood(b, rate, seconds)
    finally:
        if case == "sender_only":
            sh("ip", "-n", b.fw, "link", "set", "in0", "up")
        elif case == "ingress_drop":
            sh("nft", "delete", "table", "netdev", "fwbench_ingress", ns=b.fw)
        elif case == "prerouting_drop":
            sh("nft", "delete", "table", "inet", "fwbench_prerouting", ns=b.fw)


def write_section(args: argparse.Namespace, rounds: list[dict[str, Any]], load: str,
                  facts: dict[str, str]) -> None:  # fmt: skip
    name = "early_drop_cost" + (
        "" if args.backend == "nftables" else f"_{args.backend}"
    )
    out = report.out_dir(args, name)
    a = analyse(rounds)
    cost, d = a["cost_us"], a["d"]
    early_name = (
        "early chain" if args.backend == "nftables" else "early drop (rx_handler)"
    )
    lines = report.header(
        f"Early drop: d, the cost of a foreign packet ({args.backend})", facts, load
    )
    where = (
        "on the host"
        if args.backend == "nftables"
        else (
            f"in a TCG guest (virtme-ng --disable-kvm, kernel {args.guest_kernel}; emulated "
            "CPU: only the ratios, measured alike in one guest, mean anything"
            + (
                f"; QEMU `{guest.ICOUNT}`: guest time counts instructions, so CPU per "
                "packet is an instruction count the host's load does not inflate)"
                if args.icount
                else "; plain TCG: the host's load inflates guest CPU time at random)"
            )
        )
    )
    lines += [
        (
            f"Measured {where}. "
            f"{args.rounds} round(s); per case one flood of {args.rate:,.0f} UDP packets/s for "
            f"{args.seconds:g} s over {FLOWS} fixed flows (bench/gen/newconn.c, one sender) "
            f"through one fw namespace (client - fw - server, veth, {args.backend} data plane "
            "in-process, owned set set directly), cases rotated within each round. CPU = "
            "generator process + ksoftirqd threads, per packet sent. The node's share = "
            "case minus *sender only*; **d = node's share of a foreign packet / node's share "
            "of a forwarded packet**, median of the rounds."
        ),
        "",
    ]
    rows = []
    for key in [f"{m}/{c}" for m in MODES for c in CASES] + list(REFERENCES):
        rs = [r[key] for r in rounds]
        rows.append([
            key, f"{cost[key]:.2f}",
            f"{statistics.median(r['forwarded'] / r['sent'] for r in rs):.0%}",
            f"{statistics.median(r['rate'] for r in rs):,.0f}",
        ])  # fmt: skip
    lines += report.table(
        ["case", "CPU us / packet", "forwarded", "achieved pkt/s"], rows
    )
    lines += [""]
    rows = []
    for mode in MODES:
        rows.append([
            "today (off)" if mode == "off" else early_name,
            f"{d[f'{mode}/foreign_unknown']:.3f}", f"{d[f'{mode}/foreign_known']:.3f}",
            f"{d[f'{mode}/prerouting_floor']:.3f}", f"{d[f'{mode}/ingress_floor']:.3f}",
        ])  # fmt: skip
    lines += report.table(
        ["forwarding cost of", "d, unknown connection", "d, known connection (not owned)",
         "one-rule drop at prerouting -300", "netdev ingress drop"],
        rows,
    )  # fmt: skip
    d_off, d_on = d["off/foreign_unknown"], d["early/foreign_unknown"]
    d_cross = d["early/foreign_unknown_vs_off_forward"]
    lines += [
        "",
        (
            f"The {early_name} also costs the owner: its share of a forwarded packet is "
            f"{a['forward_early_vs_off']:.2f}x today's. Measured against today's forwarding "
            f"cost (one node alone would run without it), a foreign packet "
            f"with it costs d' = {d_cross:.3f}; the gain of N nodes over one "
            f"node with today's ruleset is then N / (f + d' (N-1)) with f = "
            f"{a['forward_early_vs_off']:.2f} (row *{early_name}, against today's node*)."
        ),
        "",
        (
            f"Goal d <= {GOAL_D}: {'met' if d_on <= GOAL_D else 'NOT met'} with the "
            f"{early_name} (unknown connections d = {d_on:.3f}; today {d_off:.3f}). Expected gain of "
            "N nodes over one, 1 / (1/N + d (N-1)/N), from the measured d of unknown "
            "connections (every node but the owner has no entry):"
        ),
        "",
    ]
    ns = list(range(2, 17))
    lines += report.table(
        ["N", *[str(n) for n in ns]],
        [
            ["today", *[f"{gain(d_off, n):.2f}" for n in ns]],
            [early_name, *[f"{gain(d_on, n):.2f}" for n in ns]],
            [
                f"{early_name}, against today's node",
                *[
                    f"{n / (a['forward_early_vs_off'] + d_cross * (n - 1)):.2f}"
                    for n in ns
                ],
            ],
            [
                "ingress floor",
                *[f"{gain(d['early/ingress_floor'], n):.2f}" for n in ns],
            ],
        ],
    )
    lines += [""]
    report.write(out, name, lines, {"rounds": rounds, "analysis": a})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    report.add_common_options(p)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rate", type=float, default=40000.0)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--backend", choices=("nftables", "clusterdev"), default="nftables")
    p.add_argument("--in-guest", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--icount",
        action="store_true",
        help="clusterdev: QEMU instruction counting in the guest (CPU time = instructions)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.rate, args.seconds = 1, 10000.0, 0.5
    if os.geteuid() != 0:
        print("early_drop_cost: needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.in_guest:
        print("RESULT " + json.dumps(measure(args)), flush=True)
        return 0
    facts = env.machine_facts()
    with env.LoadSampler() as sampler:
        if args.backend == "clusterdev":
            target = guest.target()
            if isinstance(target, str):
                print(f"early_drop_cost: skipped: {target}")
                return 0
            args.guest_kernel, ko = target
            gen.build()  # the guest sees the host's files read-only
            run = ["--backend", "clusterdev", "--rounds", str(args.rounds),
                   "--rate", f"{args.rate:g}", "--seconds", f"{args.seconds:g}"]  # fmt: skip
            rounds = guest.run(args.guest_kernel, ko, Path(__file__), run, args.icount)[
                "rounds"
            ]
        else:
            rounds = measure(args)["rounds"]
    write_section(args, rounds, sampler.text(), facts)
    return 0


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every case of every round, in this kernel."""
    keys = [(m, c) for m in MODES for c in CASES] + [("", r) for r in REFERENCES]
    rounds: list[dict[str, Any]] = []
    with bench_lab(args.backend) as b:
        for i in range(args.rounds):
            result: dict[str, Any] = {}
            order = keys[i % len(keys) :] + keys[: i % len(keys)]
            for mode, case in order:
                r = run_case(b, mode or "off", case, args.rate, args.seconds)
                result[f"{mode}/{case}" if mode else case] = r
                print(f"round {i + 1} {mode or '-'} {case}: {r['us_per_packet']:.2f} us/packet, "
                      f"forwarded {r['forwarded']}/{r['sent']}", flush=True)  # fmt: skip
            rounds.append(result)
    return {"rounds": rounds, "kernel": os.uname().release}


if __name__ == "__main__":
    sys.exit(main())
