"""`make demo`: the failover story on a real 3-node lab, told to a person.

A cluster of three firewall namespaces comes up with the real agent and the
nftables data plane; clients open long-lived TCP streams, UDP flows and pings
through it; the node carrying the most connections is killed (agent kill -9
and its links down); the survivors take over its buckets and connections.
The last screen is the verdict, and its last line is machine-readable:

    verdict: connections=<n> lost=<n> duplicates=<n> longest_stall_ms=<n>

Exit status 0 only when nothing was lost and nothing delivered twice.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import agent, build, cluster, faults, traffic_control
from .state import LabState

PREFIX = os.environ.get("FWCLUSTER_DEMO_PREFIX", "fwd-")
RUN_DIR = Path(os.environ.get("FWCLUSTER_DEMO_RUN", "/run/fwcluster-demo"))


def say(text: str = "") -> None:
    print(text, flush=True)


def step(n: int, text: str) -> None:
    say()
    say(f"== {n}. {text}")


def clusterctl(state: LabState, node: str, *args: str) -> str:
    argv = agent.clusterctl_argv(state.run_dir, node, *args)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)
    return (out.stdout + out.stderr).rstrip()


def local_connections(state: LabState, node: str) -> int:
    status = cluster.agent_status(state, node)
    if not status:
        return -1
    return int(status.get("sync", {}).get("local_entries", 0))


# What a survivor's agent logs about a takeover (also read by the Ansible demo).
TAKEOVER_WORDS = ("down (", "inject", "claimed", "stable", "ready")


def takeover_lines(state: LabState, node: str, since: float) -> list[str]:
    """The survivor's log lines about the takeover, after the kill."""
    wanted = TAKEOVER_WORDS
    lines = []
    for line in agent.log_path(state.run_dir, node).read_text().splitlines():
        stamp = line[:23]
        try:
            t = time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) + float(
                "0." + stamp[20:23]
            )
        except ValueError:
            continue
        if t >= since - 0.5 and any(w in line for w in wanted):
            text = line[24:].replace("INFO ", "")
            lines.append(text if len(text) < 110 else text[:107] + "...")
    return lines


def verdict(summary: dict[str, Any], before: int) -> tuple[str, bool]:
    lost = int(summary["lost"])
    dups = int(summary["duplicates"])
    stall = round(float(summary["longest_stall_ms"]))
    ok = lost == 0 and dups == 0
    return (
        f"verdict: connections={before} lost={lost} duplicates={dups} longest_stall_ms={stall}",
        ok,
    )


def run(tcp: int, udp: int, ping: int, interval_ms: int) -> int:
    step(1, "Three firewall nodes, one client network, one server network")
    with build.running(RUN_DIR, PREFIX, settle_timeout=None, keep_logs=True) as state:
        say("namespaces: client -- [outside bridge] -- fw1 fw2 fw3 -- [inside bridge] -- server")
        say("every node holds the cluster IPs 192.0.2.1 / 203.0.113.1 behind a multicast MAC;")
        say("the agents talk over a separate sync network (198.51.100.0/24)")
        cluster.wait_settled(state, timeout=60)
        say("cluster formed: all three agents agree on the bucket distribution")

        step(2, "Who owns which buckets (one character per bucket: A=fw1 B=fw2 C=fw3)")
        say(clusterctl(state, "fw1", "ranges"))

        step(
            3, f"Traffic: {tcp} TCP streams, {udp} UDP flows, {ping} pings, every {interval_ms} ms"
        )
        opts = ["--tcp", str(tcp), "--udp", str(udp), "--ping", str(ping)]
        opts += ["--interval-ms", str(interval_ms), "--drain", "3"]
        started = traffic_control.start(state, opts)
        say(f"traffic running: {started.get('established', tcp)} TCP streams established")
        time.sleep(3.0)
        counts = {n: local_connections(state, n) for n in ("fw1", "fw2", "fw3")}
        for node, count in counts.items():
            say(f"  {node} handles {count} connections (its conntrack table, synced to the others)")
        victim = max(counts, key=lambda n: counts[n])
        before = tcp + udp + ping

        step(4, f"Kill {victim}, the node with the most connections (agent kill -9, links down)")
        killed_at = time.time()
        faults.kill(state, victim)
        say(f"{victim} is dead at {time.strftime('%H:%M:%S', time.localtime(killed_at))}")
        survivors = [n for n in ("fw1", "fw2", "fw3") if n != victim]
        cluster.wait_settled(state, timeout=30)
        time.sleep(3.0)
        for node in survivors:
            say(f"-- what {node} did:")
            for line in takeover_lines(state, node, killed_at)[:8]:
                say(f"   {line}")

        step(5, "Buckets after the takeover")
        say(clusterctl(state, survivors[0], "ranges"))

        summary = traffic_control.stop_background(state)

    ok = verdict_screen(6, summary, before, dead_share(counts, victim))
    return 0 if ok else 1


def dead_share(counts: dict[str, int], dead: str) -> float | None:
    """The dead node's share of the connections, from each node's count just
    before the kill; None when a count is unknown (negative)."""
    if any(c < 0 for c in counts.values()) or not sum(counts.values()):
        return None
    return counts[dead] / sum(counts.values())


def verdict_screen(n: int, summary: dict[str, Any], before: int, dead: float | None = None) -> bool:
    """Step `n`: the one-screen verdict, ending with the machine-readable line;
    True when nothing was lost and nothing delivered twice. `dead`: the dead
    node's share of the connections, shown beside the share of streams that
    stalled (ideally the same: only its streams wait for the takeover)."""
    line, ok = verdict(summary, before)
    step(n, "Verdict")
    tcp_s, udp_s, ping_s = summary["tcp"], summary["udp"], summary["ping"]
    say(f"connections before the kill   {before}")
    say(f"TCP streams intact            {tcp_s['ok']} of {tcp_s['streams']}")
    for label, kind in (("UDP requests answered", udp_s), ("pings answered", ping_s)):
        say(f"{label:<30}{kind['replied']} of {kind['sent']} ({kind['flows']} flows)")
    say(f"connections lost              {summary['lost']}")
    say(f"duplicate deliveries          {summary['duplicates']}")
    say(f"longest stall                 {round(summary['longest_stall_ms'])} ms")
    stalled = f"streams stalled > {summary['stall_threshold_ms']:g} ms"
    expected = "unknown" if dead is None else f"{dead:.0%}"
    say(
        f"{stalled:<30}{summary['stalled_share']:.0%} of streams "
        f"(the dead node's share: {expected})"
    )
    say("PASS: no connection lost, nothing delivered twice" if ok else "FAIL")
    say(line)
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--tcp", type=int, default=150)
    p.add_argument("--udp", type=int, default=20)
    p.add_argument("--ping", type=int, default=3)
    p.add_argument("--interval-ms", type=int, default=20)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("demo: needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    return run(args.tcp, args.udp, args.ping, args.interval_ms)


if __name__ == "__main__":
    sys.exit(main())
