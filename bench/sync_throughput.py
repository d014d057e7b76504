"""Sync throughput of the real agent: the highest rate of new connections
per second at which every connection reaches every peer's cache within 1 s.

Per rate step, a fresh 3-node lab; bench/gen/newconn.c offers COUNT new UDP
connections (one datagram each, a new 5-tuple each) from the client to the
server at the rate; the server drops them before anything answers. Each
connection is created in the kernel conntrack table of the one node that
owns its bucket, and that node's agent must replicate it to both others.
*Created* is read from the kernels (sum of `conntrack -C` increases), and
*replicated* from the agents (`status`: sync.cache_entries, their peer
caches), polled while the generator runs and read at exactly 1 s after its
last send. A step passes when all created x 2 copies are there by then.
Agent CPU (utime+stime from /proc/<pid>/stat) and RSS growth are reported
per 100,000 connections. Goal (issue 3): >= 20,000/s on this 2-core machine.

    .venv/bin/python bench/sync_throughput.py           # rate ladder, docs/benchmarks/
    .venv/bin/python bench/sync_throughput.py --quick   # two small steps, temp dir
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fwbench import env, gen, labrun, measure, profile, report
from fwbench.measure import CountSampler, conntrack_count
from fwcluster_lab.netns import nft
from fwcluster_lab.state import LabState

GOAL = 20_000
DPORT = 20000
BOUND_S = 1.0


def install_sink(state: LabState) -> None:
    """Drop the offered datagrams at the server in prerouting, before anything
    could answer them (no ICMP port-unreachable storm back through the nodes)."""
    server = state.topology().servers[0]
    nft(
        server.ns,
        f"""table ip fwbench_sink {{
  chain pre {{
    type filter hook prerouting priority -300; policy accept;
    udp dport {DPORT}-{DPORT + 99} drop
  }}
}}
""",
    )


def cached(state: LabState, nodes: list[str]) -> int:
    """The agents' peer-cache entries, summed."""
    return sum(
        int(labrun.sync_counters(state, n).get("cache_entries", 0)) for n in nodes
    )


def one_step(
    rate: float, seconds: float, index: int, profile_dir: Path | None = None
) -> dict[str, Any]:
    """One rate step on a fresh lab; with profile_dir, py-spy samples every
    agent while the generator runs (folded stacks <node>.txt there)."""
    count = max(1, int(rate * seconds))
    with labrun.lab(f"sync-{index}") as state:
        install_sink(state)
        topo = state.topology()
        nodes = [n.name for n in topo.nodes]
        ns = {n.name: n.ns for n in topo.nodes}
        pids = {n: labrun.agent_pid(state, n) for n in nodes}
        time.sleep(1.0)  # start-up bulk syncs and ARP out of the way
        kernel0 = sum(conntrack_count(ns[n]) for n in nodes)
        cpu0 = {n: measure.process_cpu_s(p) or 0.0 for n, p in pids.items() if p}
        rss0 = {n: measure.process_rss_kib(p) or 0 for n, p in pids.items() if p}
        load0 = env.loadavg()[0]
        poll = CountSampler(lambda: cached(state, nodes), 0.1)
        cached0 = poll.count()
        spies = []
        if profile_dir is not None:
            profile_dir.mkdir(parents=True, exist_ok=True)
            spies = [
                profile.start(pid, seconds + BOUND_S, profile_dir / f"{n}.txt")
                for n, pid in pids.items()
                if pid
            ]
        with poll:
            client, server = topo.clients[0], topo.servers[0]
            offer = gen.offer(
                client.ns,
                str(client.links[0].address.ip),
                str(server.links[0].address.ip),
                DPORT,
                count,
                rate,
            )
            time.sleep(max(0.0, offer.end + BOUND_S - time.time()))
            at_bound = poll.count() - cached0
            cpu1 = {n: measure.process_cpu_s(p) or 0.0 for n, p in pids.items() if p}
            created = sum(conntrack_count(ns[n]) for n in nodes) - kernel0
            # Keep polling a little: do the missing ones arrive late, or never?
            time.sleep(3.0)
        for spy in spies:
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
        final = poll.count() - cached0
        rss1 = {n: measure.process_rss_kib(p) or 0 for n, p in pids.items() if p}
        alive = all(labrun.agent_pid(state, n) for n in nodes)
        counters = {n: labrun.sync_counters(state, n) for n in nodes}
    expected = created * (len(nodes) - 1)
    cpu_s = sum(cpu1[n] - cpu0[n] for n in cpu1)
    per100k = 100_000 / created if created else 0.0
    return {
        "rate_offered": rate,
        "rate_achieved": offer.rate,
        "sent": offer.sent,
        "send_errors": offer.errors,
        "created": created,
        "expected_copies": expected,
        "copies_at_1s": at_bound,
        "missing_at_1s": max(0, expected - at_bound),
        "copies_at_4s": final,
        "passed": created > 0 and at_bound >= expected and alive,
        "agents_alive": alive,
        "agent_cpu_s": cpu_s,
        "agent_cpu_s_per_100k": cpu_s * per100k,
        "agent_cpu_share_of_cores": cpu_s
        / max(1e-9, offer.end - offer.start + BOUND_S)
        / 2,
        "rss_growth_mib_per_100k_cached": (
            sum(rss1[n] - rss0[n] for n in rss1) / 1024 / final * 100_000
            if final
            else None
        ),
        "rss_mib_end": {n: rss1[n] / 1024 for n in rss1},
        "resyncs": {n: c.get("resyncs") for n, c in counters.items()},
        "samples": [(t - offer.start, k - cached0) for t, k in poll.samples],
        "loadavg_1m": load0,
    }


def ladder(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rates in increasing order until two steps in a row fail (or the offer
    saturates twice in a row); then one step halfway between the best pass and
    the first failure above it."""
    steps: list[dict[str, Any]] = []
    fails = 0
    for i, rate in enumerate(args.rates):
        step = one_step(rate, args.seconds, i)
        steps.append(step)
        print(
            f"rate {rate:>7.0f}/s achieved {step['rate_achieved']:>7.0f}/s created "
            f"{step['created']} copies@1s {step['copies_at_1s']}/{step['expected_copies']} "
            f"cpu {step['agent_cpu_s']:.1f}s pass={step['passed']} load {step['loadavg_1m']}",
            flush=True,
        )
        fails = 0 if step["passed"] else fails + 1
        if fails >= 2:
            break
        # The offer itself saturated twice in a row (the machine, not the sync, is
        # the limit): higher rates would only repeat the same step.
        if len(steps) >= 2 and all(
            s["rate_achieved"] < 0.8 * s["rate_offered"] for s in steps[-2:]
        ):
            print("offered rate saturated: stopping the ladder", flush=True)
            break
    passed = [s["rate_offered"] for s in steps if s["passed"]]
    failed = [s["rate_offered"] for s in steps if not s["passed"]]
    if passed and failed and not args.quick:
        best = max(passed)
        above = [f for f in failed if f > best]
        if above and min(above) - best > 1000:
            steps.append(one_step((best + min(above)) / 2, args.seconds, len(steps)))
    return steps


def plot(steps: list[dict[str, Any]], path: Path) -> None:
    plt = report.pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for s in sorted(steps, key=lambda s: s["rate_offered"]):
        xs = [t for t, _ in s["samples"]]
        ys = [k / max(1, s["expected_copies"]) * 100 for _, k in s["samples"]]
        a.plot(xs, ys, label=f"{s['rate_offered']:.0f}/s")
    a.set_xlabel("seconds since the first offered connection")
    a.set_ylabel("copies in peer caches (% of created x 2)")
    a.set_title("replication progress per rate step")
    a.legend(fontsize=7)
    steps_sorted = sorted(steps, key=lambda s: s["rate_offered"])
    xs = [s["rate_achieved"] for s in steps_sorted]
    b.plot(
        xs,
        [s["copies_at_1s"] / max(1, s["expected_copies"]) * 100 for s in steps_sorted],
        "o-",
    )
    b.axvline(GOAL, color="k", linestyle="--", label=f"goal {GOAL}/s")
    b.set_xlabel("new connections per second (achieved)")
    b.set_ylabel("copies on peers 1 s after the last (%)")
    b.set_ylim(0, 105)
    b.set_title("replicated within 1 s")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_section(
    args: argparse.Namespace,
    steps: list[dict[str, Any]],
    facts: dict[str, str],
    load: str,
    profiled: tuple[dict[str, Any], list[Path]] | None = None,
) -> None:
    d = report.out_dir(args, "sync_throughput")
    plot(steps, d / "sync_throughput.png")
    ok = [s for s in steps if s["passed"]]
    best = max(ok, key=lambda s: s["rate_achieved"]) if ok else None
    losing = sorted(
        (
            s
            for s in steps
            if not s["passed"]
            and (best is None or s["rate_achieved"] > best["rate_achieved"])
        ),
        key=lambda s: s["rate_achieved"],
    )
    big = max(steps, key=lambda s: s["created"])
    lines = report.header("Sync throughput (real agent, 3-node lab)", facts, load)
    lines += [
        (
            f"Per step a fresh 3-node lab; {args.seconds:g} s of new UDP connections "
            "(bench/gen/newconn.c, one datagram = one new 5-tuple, 2 sender processes) from "
            "the client through the cluster to a server that drops them. Each lands in the "
            "kernel table of its bucket's owner; its agent must get it into both peers' "
            "caches. *Created*: sum of `conntrack -C` increases on the nodes. *Copies*: sum "
            "of the agents' `sync.cache_entries` (their peer caches), read 1 s after the "
            "generator's last send. A step passes when copies = created x 2 by then."
        ),
        "",
    ]
    if best is not None:
        verdict = "met" if best["rate_achieved"] >= GOAL else "NOT met"
        lines.append(
            f"**Highest passing rate: {best['rate_achieved']:,.0f} new connections/s "
            f"(offered {best['rate_offered']:,.0f}/s). Goal >= {GOAL:,}/s: {verdict}.**"
        )
    else:
        lines.append(f"**No rate passed. Goal >= {GOAL:,}/s: NOT met.**")
    fastest = max(steps, key=lambda s: s["rate_achieved"])
    if fastest["rate_achieved"] < 0.9 * max(s["rate_offered"] for s in steps):
        lines.append(
            f"The offered rate topped out at {fastest['rate_achieved']:,.0f}/s whatever was "
            "asked: the generator and the kernel's forwarding got what CPU the agents "
            "(SCHED_RR, above every normal process) and the machine's other work left "
            "them (see cores busy and load below). So this ladder did not find the point "
            "where the sync starts losing; the agents' CPU cost per connection says where "
            "it would be."
        )
    if losing:
        first = losing[0]
        lines.append(
            f"It starts losing at {first['rate_achieved']:,.0f}/s: {first['missing_at_1s']:,} "
            f"of {first['expected_copies']:,} copies missing 1 s after the last send "
            f"({first['copies_at_4s']:,} there 3 s later)."
        )
    lines += [
        "",
        (
            f"Agent cost, from the largest step ({big['created']:,} connections at "
            f"{big['rate_achieved']:,.0f}/s): all three agents together "
            f"{big['agent_cpu_s_per_100k']:.1f} CPU-seconds per 100,000 new connections "
            "(the owner reads the conntrack event and broadcasts it, the two peers decode "
            "and cache it): with both cores given to the agents and nothing else, at most "
            f"about {200_000 / big['agent_cpu_s_per_100k']:,.0f} new connections/s. "
            "Memory growth "
            + (
                f"{big['rss_growth_mib_per_100k_cached']:.1f} MiB RSS per 100,000 cached "
                "connections (summed over agents, divided by copies in caches)."
                if big["rss_growth_mib_per_100k_cached"] is not None
                else "n/a."
            )
        ),
        "",
    ]
    lines += report.table(
        ["offered /s", "achieved /s", "sent", "created", "copies at 1 s", "missing at 1 s",
         "copies at 4 s", "pass", "agent CPU s", "CPU s / 100k", "cores busy (of 2)",
         "RSS MiB / 100k cached", "load 1m"],
        [
            [f"{s['rate_offered']:,.0f}", f"{s['rate_achieved']:,.0f}", f"{s['sent']:,}",
             f"{s['created']:,}",
             f"{s['copies_at_1s']:,}", f"{s['missing_at_1s']:,}", f"{s['copies_at_4s']:,}",
             "yes" if s["passed"] else "no", f"{s['agent_cpu_s']:.1f}",
             f"{s['agent_cpu_s_per_100k']:.1f}", f"{s['agent_cpu_share_of_cores'] * 2:.2f}",
             "n/a" if s["rss_growth_mib_per_100k_cached"] is None
             else f"{s['rss_growth_mib_per_100k_cached']:.1f}",
             f"{s['loadavg_1m']:.2f}"]
            for s in sorted(steps, key=lambda s: s["rate_offered"])
        ],
    )  # fmt: skip
    if profiled is not None:
        step, folded = profiled
        lines += [""]
        lines += profile.markdown(
            folded,
            f"a separate step at {step['rate_offered']:,.0f}/s offered, "
            f"{step['rate_achieved']:,.0f}/s achieved, copies at 1 s "
            f"{step['copies_at_1s']:,} of {step['expected_copies']:,}",
        )
    lines += ["", "![sync throughput](sync_throughput.png)", ""]
    report.write(d, "sync_throughput", lines, {"steps": steps, "facts": facts})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    report.add_common_options(p)
    p.add_argument(
        "--rates",
        type=lambda s: [float(x) for x in s.split(",")],
        default=[2000, 5000, 10000, 15000, 20000, 25000, 30000, 40000],
        help="comma-separated new connections per second, ascending",
    )
    p.add_argument("--seconds", type=float, default=5.0, help="offer duration per step")
    p.add_argument(
        "--profile-rate",
        type=float,
        default=20000.0,
        help="after the ladder, one more step at this rate with py-spy on the agents "
        "(0: none; needs `.venv/bin/pip install py-spy`)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.rates, args.seconds = [1000.0, 3000.0], 1.0
    if os.geteuid() != 0:
        print("sync_throughput: needs root (network namespaces)", file=sys.stderr)
        return 2
    facts = env.machine_facts()
    profiled = None
    with env.LoadSampler() as sampler:
        steps = ladder(args)
        if args.profile_rate > 0 and not args.quick and profile.available():
            where = env.RUN_ROOT / "sync-profile"
            step = one_step(args.profile_rate, args.seconds, len(steps), where)
            profiled = (step, sorted(where.glob("fw*.txt")))
    write_section(args, steps, facts, sampler.text(), profiled)
    return 0


if __name__ == "__main__":
    sys.exit(main())
