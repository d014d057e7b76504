"""clusterctl: talk to the local availability-manager over its control socket.

Read commands (`status`, `ranges`, `connections`) print for people, or JSON
with `--json` (what the Ansible modules parse). Change commands (`drain`,
`join`, `leave`) ask the agent, then wait until the cluster confirms or the
timeout passes. Exit codes: 0 done, 1 the agent refused or the cluster did
not confirm in time, 2 usage, 3 agent unreachable.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

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


def request(path: Path, cmd: str, timeout: float = 5.0, **args: Any) -> Any:
    """One request/answer round trip; Unreachable or Refused on failure."""
    payload = json.dumps({"cmd": cmd, **args}).encode() + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(payload)
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except FileNotFoundError:
        raise Unreachable(f"no agent socket at {path} (is availability-manager running?)") from None
    except PermissionError:
        raise Unreachable(f"permission denied on {path} (clusterctl must run as root)") from None
    except OSError as exc:
        raise Unreachable(f"cannot talk to the agent at {path}: {exc}") from None
    try:
        answer = json.loads(data)
    except json.JSONDecodeError:
        raise Unreachable(f"the agent at {path} sent an answer that is not JSON") from None
    if not isinstance(answer, dict) or "ok" not in answer:
        raise Unreachable(f"the agent at {path} sent a malformed answer")
    if not answer["ok"]:
        raise Refused(str(answer.get("error", "refused")))
    return answer.get("result")


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
        ("drain", "hand this node's buckets to the others; keep forwarding its connections"),
        ("join", "take this node's share of buckets again (undo a drain)"),
        ("leave", "drain, then stop the agent"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
        sp.add_argument("--no-wait", action="store_true", help="do not wait for confirmation")
        sp.add_argument("--json", action="store_true", help="print the final status as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path: Path = args.socket
    try:
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


if __name__ == "__main__":
    sys.exit(main())
