"""clusterctl: talk to the local availability-manager over its control socket.

Read commands (`status`, `ranges`, `connections`, and conntrackd's: `cache`,
`kernel`, `stats`) print for people, or JSON with `--json` (what the Ansible
modules parse). `resync` and `flush-cache` act on the sync caches at once. Change commands (`drain`,
`join`, `leave`) ask the agent, then wait until the cluster confirms or the
timeout passes. Exit codes: 0 done, 1 the agent refused or the cluster did
not confirm in time, 2 usage, 3 agent unreachable.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..conn_filter import FIELDS, ConnFilter, FilterError
from . import ops_views

DEFAULT_SOCKET = Path("/run/availability-manager/control.sock")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
BAR_WIDTH = 64
# the sync counters `status` shows a person (--json has them all)
SYNC_SUMMARY = (
    "local_entries",
    "cache_entries",
    "naks",
    "out_of_sync",
    "resyncs",
    "digest_mismatches",
    "injected_requested",
    "kernel_injected",
    "deleted_requested",
    "kernel_deleted",
)


class Unreachable(Exception):
    pass


class Refused(Exception):
    pass


@contextlib.contextmanager
def connected(
    path: Path, timeout: float, cmd: str, args: dict[str, Any]
) -> Iterator[socket.socket]:
    """A socket to the agent with the request sent; OSErrors become Unreachable."""
    payload = json.dumps({"cmd": cmd, **args}).encode() + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(payload)
            yield s
    except FileNotFoundError:
        raise Unreachable(f"no agent socket at {path} (is availability-manager running?)") from None
    except PermissionError:
        raise Unreachable(f"permission denied on {path} (clusterctl must run as root)") from None
    except OSError as exc:
        raise Unreachable(f"cannot talk to the agent at {path}: {exc}") from None


def answer_object(path: Path, line: bytes) -> dict[str, Any]:
    """One answer line as an object; Refused when it says `"ok": false`."""
    try:
        answer = json.loads(line)
    except json.JSONDecodeError:
        raise Unreachable(f"the agent at {path} sent an answer that is not JSON") from None
    if not isinstance(answer, dict):
        raise Unreachable(f"the agent at {path} sent a malformed answer")
    if answer.get("ok") is False:
        raise Refused(str(answer.get("error", "refused")))
    return answer


def request(path: Path, cmd: str, timeout: float = 5.0, **args: Any) -> Any:
    """One request/answer round trip; Unreachable or Refused on failure."""
    with connected(path, timeout, cmd, args) as s:
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    answer = answer_object(path, data)
    if "ok" not in answer:
        raise Unreachable(f"the agent at {path} sent a malformed answer")
    return answer.get("result")


def request_stream(path: Path, cmd: str, timeout: float = 30.0, **args: Any) -> Iterator[Any]:
    """A request whose answer is streamed (control.Stream): yields its parts up
    to and including the one with `"end"`. `timeout` bounds each wait for a
    line (the agent sends one per chunk it examined, matches or not)."""
    with connected(path, timeout, cmd, args) as s, s.makefile("rb") as lines:
        header = answer_object(path, lines.readline() or b"{}")
        if not header.get("stream"):
            raise Unreachable(f"the agent at {path} did not stream its answer to {cmd}")
        for line in lines:
            part = answer_object(path, line)
            yield part
            if part.get("end"):
                return
    raise Unreachable(f"the agent at {path} closed the connection mid-answer")


# -- presentation ----------------------------------------------------------------


def member_letters(status: dict[str, Any]) -> dict[str, str]:
    names = [m["node"] for m in status["members"]]
    return {n: chr(ord("A") + i) if i < 26 else "#" for i, n in enumerate(sorted(names))}


def bucket_char(owners: list[str], letters: dict[str, str]) -> str:
    """One bucket: its owner's letter, '+' when two nodes own it (in transit),
    '.' when nobody does (a hole)."""
    if not owners:
        return "."
    if len(owners) > 1:
        return "+"
    return letters.get(owners[0], "?")


def ranges_rows(status: dict[str, Any], width: int = BAR_WIDTH) -> list[str]:
    """The seed's visual tester: one character per bucket, `width` per row,
    each row prefixed with its first bucket number."""
    owners: list[list[str]] = status["owners"]
    letters = member_letters(status)
    chars = "".join(bucket_char(o, letters) for o in owners)
    return [f"{i:>5} {chars[i : i + width]}" for i in range(0, len(chars), width)]


def print_status(st: dict[str, Any]) -> None:
    print(f"node      {st['node_id']}  state {st['state']}  backend {st['backend']}")
    ready = "stable" if st["stable"] else "converging"
    print(f"cluster   {len(st['members'])} members, {st['buckets']} buckets, {ready}")
    print(f"owned     {len(st['owned'])} buckets")
    for watcher, fault in st.get("faults", {}).items():  # why this node stepped back
        print(f"fault     {watcher}: {fault}")
    sync = st.get("sync", {})
    shown = [k for k in SYNC_SUMMARY if k in sync]
    print("sync      " + ", ".join(f"{k.replace('_', ' ')} {sync[k]}" for k in shown))
    letters = member_letters(st)
    print("members:")
    for m in sorted(st["members"], key=lambda m: m["node"]):
        me = " (this node)" if m.get("self") else ""
        print(
            f"  {letters[m['node']]} {m['node']:<16} {m['state']:<9} "
            f"weight {m['weight']:<4} owns {m['owned']:>4}{me}"
        )


def print_ranges(st: dict[str, Any]) -> None:
    letters = member_letters(st)
    print(f"buckets 0..{st['buckets'] - 1}, one character each ('+' two owners, '.' none)")
    for row in ranges_rows(st):
        print(row)
    for node, letter in sorted(letters.items(), key=lambda x: x[1]):
        count = sum(1 for o in st["owners"] if node in o)
        print(f"  {letter} = {node} ({count} buckets)")
    holes = sum(1 for o in st["owners"] if not o)
    doubles = sum(1 for o in st["owners"] if len(o) > 1)
    print(f"holes {holes}, in transit {doubles}")


def print_connections(result: dict[str, Any]) -> None:
    print(f"local connections (this node's conntrack table): {result['local']}")
    peers = result.get("peers", {})
    if peers:
        print("cached from peers (what this node injects if it takes over their buckets):")
    for peer, info in sorted(peers.items()):
        alive = "" if info.get("alive", True) else "  (down: kept for takeover)"
        print(f"  {peer:<16} {info['entries']:>7}{alive}")


# -- waiting for the cluster -----------------------------------------------------


def wait_for(path: Path, done: Any, timeout: float, what: str) -> int:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        try:
            last = request(path, "status")
        except Unreachable:
            if what == "leave":
                print("agent stopped: leave complete")
                return EXIT_OK
            raise
        if done(last):
            return EXIT_OK
        time.sleep(0.1)
    detail = f" (owns {len(last['owned'])} buckets, stable={last['stable']})" if last else ""
    print(f"clusterctl: {what} not confirmed within {timeout:g} s{detail}", file=sys.stderr)
    return EXIT_FAILED


def drained(st: dict[str, Any]) -> bool:
    others_cover = all(any(o != st["node_id"] for o in owners) for owners in st["owners"])
    return st["state"] == "draining" and not st["owned"] and others_cover


def joined(st: dict[str, Any]) -> bool:
    return st["state"] == "member" and st["stable"] and bool(st["owned"])


# -- main -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clusterctl", description=__doc__.split("\n\n")[0])
    p.add_argument("--socket", type=Path, default=DEFAULT_SOCKET, help="agent control socket")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (
        ("status", "members, their state, this node's buckets, sync health"),
        ("ranges", "who owns which buckets, as a bar"),
        ("connections", "connection counts per owner"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--json", action="store_true", help="machine-readable output")
    for name, text in (
        ("cache", "entries this node announced and the peers' it holds (conntrackd -i/-e)"),
        ("kernel", "this node's conntrack table with bucket and owner (conntrack -L)"),
    ):
        sp = sub.add_parser(name, help=text)
        if name == "cache":
            sp.add_argument(
                "--source",
                default="all",
                help="all (default), local (this node's own), peers, or one peer's node id",
            )
        for field in FIELDS:
            sp.add_argument(
                f"--{field}", action="append", metavar=FILTER_METAVARS[field],
                help=FILTER_HELP[field],
            )  # fmt: skip
        sp.add_argument(
            "--limit", type=int, default=1000,
            help="entries to show (default 1000; 0 shows all, streamed); the rest are counted",
        )  # fmt: skip
        sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp = sub.add_parser("stats", help="sync counters (conntrackd -s)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    for name, text in (
        ("resync", "ask the peers to send their tables again (conntrackd -n)"),
        ("flush-cache", "empty the peers' caches (conntrackd -f): no takeover until a resync"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument(
            "--peer", action="append", default=[], help="only this peer (node id); repeatable"
        )
        if name == "resync":
            sp.add_argument(
                "--kernel", action="store_true", help="also re-read this node's conntrack table"
            )
        sp.add_argument("--json", action="store_true", help="machine-readable output")
    for name, text in (
        ("drain", "hand this node's buckets to the others; keep forwarding its connections"),
        ("join", "take this node's share of buckets again (undo a drain)"),
        ("leave", "drain, then stop the agent"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
        sp.add_argument("--no-wait", action="store_true", help="do not wait for confirmation")
        sp.add_argument("--json", action="store_true", help="print the final status as JSON")
    return p


FILTER_METAVARS = {
    "src": "CIDR", "dst": "CIDR", "addr": "CIDR", "port": "N[-M]", "sport": "N[-M]",
    "dport": "N[-M]", "proto": "NAME", "state": "STATE", "bucket": "N[-M]", "owner": "NODE",
}  # fmt: skip
FILTER_HELP = {
    "src": "original source address or network; repeatable (any matches)",
    "dst": "original destination address or network",
    "addr": "any address of the connection, either direction (NAT included)",
    "port": "source or destination port, or a range",
    "sport": "original source port",
    "dport": "original destination port",
    "proto": "tcp, udp, icmp, icmpv6 or a number",
    "state": "TCP state (established, syn_sent, time_wait, ...)",
    "bucket": "bucket or range of buckets",
    "owner": "node id owning the entry's bucket now ('none': nobody)",
}


def listing_request(args: argparse.Namespace) -> dict[str, Any]:
    """The request's arguments, checked here first so a typo is a usage error."""
    raw = {f: getattr(args, f) for f in FIELDS if getattr(args, f)}
    ConnFilter.from_request(raw)  # FilterError: the caller reports it
    if args.limit < 0:
        raise FilterError("--limit must be 0 (all) or more")
    req: dict[str, Any] = {"filter": raw, "limit": args.limit}
    if args.command == "cache":
        req["source"] = args.source
    return req


def run_listing(path: Path, args: argparse.Namespace) -> int:
    try:
        req = listing_request(args)
    except FilterError as exc:
        print(f"clusterctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    parts = request_stream(path, args.command, **req)
    if args.json:
        ops_views.write_listing_json(parts, sys.stdout)
    else:
        ops_views.print_listing(parts, args.command, sys.stdout)
    return EXIT_OK


def run_cache_command(path: Path, args: argparse.Namespace) -> int:
    extra = {"kernel": True} if getattr(args, "kernel", False) else {}
    result = request(path, args.command, peers=args.peer, **extra)
    if args.json:
        print(json.dumps(result, indent=1, sort_keys=True))
    elif args.command == "resync":
        print(ops_views.resync_text(result))
    else:
        print(ops_views.flush_text(result))
    return EXIT_OK


def run_command(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path: Path = args.socket
    try:
        if args.command in ("cache", "kernel"):
            return run_listing(path, args)
        if args.command in ("resync", "flush-cache"):
            return run_cache_command(path, args)
        if args.command == "stats":
            result = request(path, "stats")
            print(json.dumps(result, indent=1, sort_keys=True) if args.json else "", end="")
            if not args.json:
                ops_views.print_stats(result, sys.stdout)
            return EXIT_OK
        if args.command in ("status", "ranges"):
            st = request(path, "status")
            if args.json:
                print(json.dumps(st, indent=1, sort_keys=True))
            elif args.command == "status":
                print_status(st)
            else:
                print_ranges(st)
            return EXIT_OK
        if args.command == "connections":
            result = request(path, "connections")
            print(json.dumps(result, indent=1) if args.json else "", end="")
            if not args.json:
                print_connections(result)
            return EXIT_OK
        if args.timeout <= 0:
            print("clusterctl: --timeout must be positive", file=sys.stderr)
            return EXIT_USAGE
        request(path, args.command)
        if args.no_wait:
            return EXIT_OK
        check = {"drain": drained, "join": joined, "leave": lambda st: False}[args.command]
        rc = wait_for(path, check, args.timeout, args.command)
        if args.json and rc == EXIT_OK and args.command != "leave":
            print(json.dumps(request(path, "status"), sort_keys=True))
        elif rc == EXIT_OK:
            print(f"{args.command}: confirmed by the cluster")
        return rc
    except Unreachable as exc:
        print(f"clusterctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except Refused as exc:
        print(f"clusterctl: the agent refused: {exc}", file=sys.stderr)
        return EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    """The console entry point: `run_command`, quiet when the reader of a
    long listing goes away (`clusterctl kernel | head`)."""
    try:
        return run_command(argv)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's exit flush must not fail again
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
