"""`bin/lab`: the command line of the lab. Each subcommand loads state.json,
does one thing, saves state.json. See docs/lab.md for the commands."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import agent, build, cluster, faults, traffic_control
from .link_faults import WHERE, set_link
from .netns import LabError, in_ns, link_state, list_namespaces, nft_json, ns_run
from .state import LabState, prefix_from_env, run_dir_from_env
from .traffic_stats import human_line


def _state(args: argparse.Namespace) -> LabState:
    state = LabState.load(args.run_dir)
    if state is None:
        raise LabError(f"no lab is up (no {args.run_dir / 'state.json'}): run `lab up`")
    return state


def _nodes(value: str) -> list[str]:
    return [n for n in value.split(",") if n]


def cmd_up(args: argparse.Namespace) -> int:
    state = build.up(
        args.run_dir,
        args.prefix,
        args.nodes,
        args.clients,
        args.servers,
        not args.no_agent,
        backend=args.backend,
        ipv6=args.ipv6,
        nat=args.nat,
        sync6=args.sync6,
    )
    topo = state.topology()
    mode = f"agents, {args.backend} backend" if state.agents else "no agent: fw1 forwards alone"
    print(
        f"lab up: {len(topo.nodes)} nodes, {len(topo.clients)} client(s), "
        f"{len(topo.servers)} server(s), {mode}"
    )
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    removed = build.down(args.run_dir, args.prefix, keep_logs=args.keep_logs)
    for line in removed:
        print(f"removed {line}")
    print("lab down" if removed else "lab down: nothing to remove")
    return 0


def status_data(state: LabState) -> dict[str, Any]:
    topo = state.topology()
    present = set(list_namespaces())
    hosts = {}
    for h in topo.hosts:
        links = {
            link.ifname: str(link_state(h.ns, link.ifname).get("operstate", "absent"))
            for link in h.links
        }
        hosts[h.name] = {"ns": h.ns, "present": h.ns in present, "links": links}
    procs = {name: {"pid": p.pid, "alive": p.alive()} for name, p in state.procs.items()}
    return {
        "prefix": state.prefix,
        "agents": state.agents,
        "switch": {"ns": topo.switch_ns, "present": topo.switch_ns in present},
        "hosts": hosts,
        "processes": procs,
        "dead_nodes": state.dead_nodes,
        "partitions": state.partitions,
        "sync_loss_percent": state.sync_loss_percent,
    }


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


def cmd_status(args: argparse.Namespace) -> int:
    state = _state(args)
    data = status_data(state)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"lab {state.prefix}* ({'agents' if state.agents else 'no agent'})")
    for name, h in data["hosts"].items():
        links = " ".join(f"{i}:{s}" for i, s in h["links"].items())
        mark = "" if h["present"] else "  (namespace missing)"
        print(f"  {name:8} {h['ns']:14} {links}{mark}")
    for name, p in data["processes"].items():
        print(f"  {name:24} pid {p['pid']:>7} {'running' if p['alive'] else 'gone'}")
        if not p["alive"] and name.startswith("agent:"):
            print(f"      last log line: {_last_line(agent.log_path(state.run_dir, name[6:]))}")
    print(
        f"  dead nodes: {', '.join(state.dead_nodes) or '-'}; partitions: "
        f"{state.partitions or '-'}; sync loss: {state.sync_loss_percent}%"
    )
    if state.agents:
        for node in state.topology().nodes:
            proc = state.procs.get(f"agent:{node.name}")
            if proc is None or not proc.alive():
                continue
            print(f"--- clusterctl status on {node.name}")
            argv = agent.clusterctl_argv(state.run_dir, node.name, "status")
            r = ns_run(node.ns, argv, check=False, timeout=10)
            print((r.stdout + r.stderr).rstrip() or f"(exit {r.returncode})")
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    state = _state(args)
    if not state.agents:
        raise LabError("wait: the lab runs without agents (up --no-agent)")
    try:
        statuses = cluster.wait_settled(state, timeout=args.timeout)
    except TimeoutError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1
    print(f"cluster settled: {', '.join(sorted(statuses))}")
    return 0


def cmd_kill(args: argparse.Namespace) -> int:
    state = _state(args)
    faults.kill(state, args.node)
    print(f"{args.node}: {'agent killed, ' if state.agents else ''}links down")
    return 0


def cmd_revive(args: argparse.Namespace) -> int:
    state = _state(args)
    faults.revive(state, args.node)
    print(f"{args.node}: links up" + (", agent started" if state.agents else ""))
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    faults.partition(_state(args), args.plane, _nodes(args.nodes))
    print(f"partition {args.plane}: {args.nodes} cut off from the rest")
    return 0


def cmd_heal(args: argparse.Namespace) -> int:
    faults.heal(_state(args))
    print("partitions healed")
    return 0


def cmd_link(args: argparse.Namespace) -> int:
    set_link(_state(args), args.node, args.bridge, args.updown == "up", args.at)
    print(f"{args.node}: {args.bridge} link {args.updown} at the {args.at}")
    return 0


def cmd_loss(args: argparse.Namespace) -> int:
    faults.loss(_state(args), args.plane, args.percent)
    print(f"loss on {args.plane}: {args.percent}%")
    return 0


def cmd_faults(args: argparse.Namespace) -> int:
    """The fault table as loaded (for checks and debugging)."""
    state = _state(args)
    print(json.dumps(nft_json(state.topology().switch_ns, "table", "bridge", faults.TABLE)))
    return 0


def _traffic_options(args: argparse.Namespace) -> list[str]:
    opts = ["--tcp", str(args.tcp), "--udp", str(args.udp), "--ping", str(args.ping)]
    if args.duration is not None:
        opts += ["--duration", str(args.duration)]
    opts += ["--interval-ms", str(args.interval_ms), "--drain", str(args.drain)]
    opts += ["--stream-timeout", str(args.stream_timeout)]
    if args.stall_threshold_ms is not None:
        opts += ["--stall-threshold-ms", str(args.stall_threshold_ms)]
    return opts


def cmd_traffic(args: argparse.Namespace) -> int:
    state = _state(args)
    kinds = traffic_control.targets(state)
    if args.to not in kinds:
        raise LabError(f"traffic --to {args.to}: this lab offers {', '.join(kinds)}")
    name, target = traffic_control.client_name(args.to), kinds[args.to]
    if args.action == "start":
        ready = traffic_control.start(state, _traffic_options(args), name=name, target=target)
        print(f"traffic run {ready['run']} started: {ready['established']} streams established")
        return 0
    if args.action == "stop":
        summary = traffic_control.stop_background(state, name=name)
    else:
        if args.duration is None:
            args.duration = 10.0
        options = _traffic_options(args)
        summary = traffic_control.run_foreground(state, options, args.json, target)
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(human_line(summary))
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    state = _state(args)
    host = state.topology().host(args.node)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise LabError("exec: give a command after --")
    return subprocess.run(in_ns(host.ns, command), check=False).returncode


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lab", description="fwcluster in network namespaces")
    p.add_argument("--run-dir", type=Path, default=run_dir_from_env(), help=argparse.SUPPRESS)
    p.add_argument("--prefix", default=prefix_from_env(), help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("up", help="create the lab")
    s.add_argument("--nodes", type=int, default=3)
    s.add_argument("--clients", type=int, default=1)
    s.add_argument("--servers", type=int, default=1)
    s.add_argument("--no-agent", action="store_true", help="no clustering: fw1 forwards alone")
    s.add_argument(
        "--backend",
        choices=["nftables", "clusterdev"],
        default="nftables",
        help="the agents' data plane (clusterdev needs the kernel module loaded)",
    )
    s.add_argument("--ipv6", action="store_true", help="dual-stack zones (IPv6 traffic: --to ipv6)")
    s.add_argument("--nat", action="store_true", help="NAT policy on every node (nat_policy.py)")
    s.add_argument("--sync6", action="store_true", help="the sync network over IPv6")
    s.set_defaults(func=cmd_up)

    s = sub.add_parser("down", help="remove everything the lab created")
    s.add_argument("--keep-logs", action="store_true")
    s.set_defaults(func=cmd_down)

    s = sub.add_parser("status", help="namespaces, links, processes, clusterctl status")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("wait", help="wait until the living nodes' agents agree and own all buckets")
    s.add_argument("--timeout", type=float, default=30.0)
    s.set_defaults(func=cmd_wait)

    s = sub.add_parser("kill", help="the node dies: agent SIGKILL, links down")
    s.add_argument("node")
    s.set_defaults(func=cmd_kill)

    s = sub.add_parser("revive", help="links up, agent restarted")
    s.add_argument("node")
    s.set_defaults(func=cmd_revive)

    s = sub.add_parser("partition", help="cut nodes off the sync or zone bridges")
    s.add_argument("plane", choices=sorted(faults.PLANES))
    s.add_argument("--nodes", required=True, help="comma-separated group, e.g. fw1,fw2")
    s.set_defaults(func=cmd_partition)

    s = sub.add_parser("heal", help="remove all partitions")
    s.set_defaults(func=cmd_heal)

    s = sub.add_parser("link", help="one link of a node down or up; the node stays up")
    s.add_argument("node")
    s.add_argument("bridge", choices=["outside", "inside", "sync"])
    s.add_argument("updown", choices=["down", "up"])
    s.add_argument(
        "--at", choices=WHERE, default="node", help="the node's interface or the switch port"
    )
    s.set_defaults(func=cmd_link)

    s = sub.add_parser("loss", help="random loss on the sync links (0 removes)")
    s.add_argument("plane", choices=["sync"])
    s.add_argument("percent", type=int)
    s.set_defaults(func=cmd_loss)

    s = sub.add_parser("faults", help="show the loaded fault table (nft JSON)")
    s.set_defaults(func=cmd_faults)

    s = sub.add_parser("traffic", help="run traffic; or start/stop it in the background")
    s.add_argument("action", nargs="?", choices=["run", "start", "stop"], default="run")
    s.add_argument("--tcp", type=int, default=100)
    s.add_argument("--udp", type=int, default=10)
    s.add_argument("--ping", type=int, default=2)
    s.add_argument("--duration", type=float, help="seconds (default 10; start: until stop)")
    s.add_argument("--interval-ms", type=float, default=20.0)
    s.add_argument("--drain", type=float, default=2.0)
    s.add_argument("--stream-timeout", type=float, default=10.0)
    s.add_argument("--stall-threshold-ms", type=float, help="default 3 intervals, at least 50")
    s.add_argument("--json", type=Path, help="also write the JSON summary here")
    s.add_argument(
        "--to",
        default="ipv4",
        choices=["ipv4", "ipv6", "snat", "masquerade", "dnat"],
        help="which traffic (ipv6: lab up --ipv6; snat/masquerade/dnat: lab up --nat)",
    )
    s.set_defaults(func=cmd_traffic)

    s = sub.add_parser(
        "exec", help="run a command in a lab namespace: exec fw1 -- nft list ruleset"
    )
    s.add_argument("node")
    s.add_argument("command", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_exec)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if os.geteuid() != 0:
        print("lab: needs root (network namespaces)", file=sys.stderr)
        return 2
    try:
        rc: int = args.func(args)
        return rc
    except (LabError, KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"lab: {message}", file=sys.stderr)
        return 1
