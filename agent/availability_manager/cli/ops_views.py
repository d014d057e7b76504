"""How clusterctl shows the operator's conntrackd-style answers: listings
(`cache`, `kernel`), `stats`, `resync` and `flush-cache`.

Listings arrive as a stream of parts (control.Stream) and are written as they
come, so a table of any size costs clusterctl one part of memory; `--json`
writes one JSON document all the same (its `entries` array is streamed).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, TextIO

Mapping_ = dict[str, Any]  # one JSON object of an answer


def entry_line(e: Mapping_) -> str:
    """One entry, conntrack -L style, with the cluster's view at the end."""
    text = f"{e['proto']:<6} {e['state']:<11} {e['src']}:{e['sport']} > {e['dst']}:{e['dport']}"
    if (e["reply_src"], e["reply_dst"]) != (e["dst"], e["src"]) or (
        e["proto"] in ("tcp", "udp")
        and (e["reply_sport"], e["reply_dport"]) != (e["dport"], e["sport"])
    ):
        text += f" reply {e['reply_src']}:{e['reply_sport']} > {e['reply_dst']}:{e['reply_dport']}"
    bucket = "-" if e["bucket"] is None else e["bucket"]
    owner = ",".join(e["owner"]) or "none"
    flags = f" [{','.join(e['status'])}]" if e["status"] else ""
    return f"{text} bucket {bucket} owner {owner}{flags} ({e['table']})"


def print_listing(parts: Iterable[Mapping_], command: str, out: TextIO) -> None:
    end: Mapping_ = {}
    for part in parts:
        for e in part.get("entries", ()):
            out.write(entry_line(e) + "\n")
        if part.get("end"):
            end = part
    what = "cached entries" if command == "cache" else "kernel entries"
    summary = f"{end.get('shown', 0)} of {end.get('matched', 0)} matching {what} shown"
    summary += f" ({end.get('scanned', 0)} examined)"
    out.write(summary + "\n")
    if end.get("more"):
        out.write(f"{end['more']} more: raise --limit (0 for all) or narrow the filter\n")


def write_listing_json(parts: Iterable[Mapping_], out: TextIO) -> None:
    """{"entries": [...], "scanned", "matched", "shown", "more"}, written as
    the parts arrive."""
    out.write('{"entries": [')
    first = True
    end: Mapping_ = {}
    for part in parts:
        for e in part.get("entries", ()):
            out.write(("\n " if first else ",\n ") + json.dumps(e, sort_keys=True))
            first = False
        if part.get("end"):
            end = part
    tail = {k: end.get(k, 0) for k in ("scanned", "matched", "shown", "more")}
    out.write("\n], " + json.dumps(tail, sort_keys=True)[1:] + "\n")


def _counts(d: Mapping_) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "none"


def print_stats(st: Mapping_, out: TextIO) -> None:
    """conntrackd -s's sections: messages, the reliable broadcast, resyncs,
    caches and what the kernel took."""
    m, rb, rs, cache, k = st["messages"], st["broadcast"], st["resyncs"], st["cache"], st["kernel"]
    lines = [
        "sync messages:",
        f"  sent      {_counts(m['sent'])}",
        f"  received  {_counts(m['received'])}",
        f"  rejected  {_counts(m['rejected'])}",
        "reliable broadcast:",
        "  " + _counts(rb),
        "resyncs:",
        f"  rounds sent     {_counts(rs['rounds_sent'])}",
        f"  requests sent   {_counts(rs['requests_sent'])}",
        f"  digest mismatches {rs['digest_mismatches']}, stale entries dropped "
        f"{rs['stale_dropped']}",
        "cache:",
        f"  local (this node's announced entries) {cache['local_entries']}",
    ]
    for peer, info in sorted(cache["peers"].items()):
        alive = "" if info["alive"] else "  (down: kept for takeover)"
        lines.append(f"  {peer:<16} {info['entries']:>8}{alive}")
    lines += [
        "kernel:",
        f"  injected {k['injected']} of {k['injected_requested']} asked, deleted {k['deleted']} "
        f"of {k['deleted_requested']} asked, errors {k['errors']}, table re-reads {k['redumps']}",
        f"  refused   {_counts(k['refused'])}",
    ]
    out.write("\n".join(lines) + "\n")


def resync_text(result: Mapping_) -> str:
    asked = ", ".join(result["asked"]) or "no live peer"
    text = f"resync requested from {asked}"
    if result.get("kernel_reread"):
        text += "; this node's conntrack table is read again"
    return text


def flush_text(result: Mapping_) -> str:
    peers = ", ".join(result["flushed"]) or "no peer"
    return (
        f"flushed {result['entries_dropped']} cached entries of {peers}. Until a resync "
        "refills them this node cannot take over those connections; a live peer's next "
        "digest check asks for one by itself, or run `clusterctl resync` now."
    )
