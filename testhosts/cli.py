"""Command line: `python -m testhosts up|down|status|poweroff|poweron|traffic`."""

from __future__ import annotations

import argparse
import json
import sys

from fwcluster_lab.netns import LabError

from . import demo, hosts, traffic
from .rootfs import RootfsError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="testhosts", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build (cached) root, boot N nodes, wait for SSH")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--boot-timeout", type=float, default=120.0)
    sub.add_parser("down", help="remove every container, mount, namespace and link")
    st = sub.add_parser("status", help="what is up")
    st.add_argument("--json", action="store_true")
    off = sub.add_parser("poweroff", help="pull the plug of one node")
    off.add_argument("node")
    on = sub.add_parser("poweron", help="boot a powered-off node again")
    on.add_argument("node")
    demo = sub.add_parser("demo", help="roll out with Ansible, pull a node's plug, verdict")
    demo.add_argument("--nodes", type=int, default=3)
    demo.add_argument("--victim", help="node to power off (default: the busiest)")
    demo.add_argument("--keep", action="store_true", help="leave the hosts up afterwards")
    demo.add_argument("--tcp", type=int, default=60)
    demo.add_argument("--udp", type=int, default=10)
    demo.add_argument("--ping", type=int, default=2)
    demo.add_argument("--interval-ms", type=int, default=50)
    tr = sub.add_parser("traffic", help="background traffic client -> server")
    tr.add_argument("action", choices=["start", "stop"])
    tr.add_argument("--tcp", type=int, default=50)
    tr.add_argument("--udp", type=int, default=10)
    tr.add_argument("--ping", type=int, default=0)
    tr.add_argument("--interval-ms", type=int, default=50)
    tr.add_argument("--json", help="stop: write the summary here too")
    tr.add_argument(
        "--to",
        choices=traffic.KINDS,
        default="ipv4",
        help="ipv4: client -> server; dnat: client -> the outside port forward; "
        "masquerade: server -> client (see testhosts/traffic.py)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "up":
            state = hosts.up(args.nodes, boot_timeout=args.boot_timeout)
            print(f"testhosts up: {state.nodes} nodes reachable over SSH")
        elif args.cmd == "down":
            removed = hosts.down()
            for line in removed:
                print(f"removed {line}")
            print("testhosts down" if removed else "testhosts down: nothing to remove")
        elif args.cmd == "status":
            data = hosts.status()
            if args.json:
                print(json.dumps(data, indent=2))
            else:
                for name, n in data["nodes"].items():
                    run = "running" if n["running"] else "stopped"
                    print(f"{name}: {run} mgmt {n['mgmt_address']} ns {n['namespace']}")
        elif args.cmd == "poweroff":
            hosts.poweroff(args.node)
            print(f"{args.node}: powered off")
        elif args.cmd == "poweron":
            hosts.poweron(args.node)
            print(f"{args.node}: booted")
        elif args.cmd == "demo":
            return demo.run(
                args.nodes, args.victim, args.keep, args.tcp, args.udp, args.ping, args.interval_ms
            )
        elif args.cmd == "traffic":
            if args.action == "start":
                traffic.start(args.tcp, args.udp, args.ping, args.interval_ms, kind=args.to)
                print("traffic started" if args.to == "ipv4" else f"traffic started ({args.to})")
            else:
                summary = traffic.stop(args.json, kind=args.to)
                print(traffic.counts_line(summary))
    except (LabError, RootfsError, OSError) as exc:
        print(f"testhosts: {exc}", file=sys.stderr)
        return 1
    return 0
