"""The operator's conntrackd-style commands on the control socket.

`cache` (this node's announced entries and every peer's cached ones, like
`conntrackd -i` and `-e`), `kernel` (this node's conntrack table as the agent
reads it, `conntrack -L` with the cluster's bucket and owner), `resync`
(`conntrackd -n`), `flush-cache` (`conntrackd -f`) and `stats` (`-s`).

Listings are streams (control.Stream): they walk a snapshot of keys in chunks
of LISTING_CHUNK and give the event loop back between chunks, so heartbeats
keep their time whatever the table's size; the kernel's table is read and
filtered on a thread of its own (never the kernel worker, whose queue carries
the takeover's injections). At most `limit` entries are sent; the rest are
only counted ("N more"). Every argument is validated before anything runs.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..conn_filter import ConnFilter, FilterError, entry_row
from ..connection import Connection
from ..dataplane.bucket import bucket_of_mark
from ..dataplane.conntrack_netlink import ConntrackSocket
from ..node import Node
from ..types import NodeId, format_node_id
from .control import ControlError, Handler, Stream

# A cache listing gives the event loop its turn after LISTING_CHUNK entries or
# LISTING_SLICE_S of work, whichever comes first (about 10 CPU-ms for 500 entries
# sent: decoded, formatted, JSON-encoded; bench/listing_cost.py), well inside a
# heartbeat interval; a line of the stream carries at most LISTING_CHUNK entries.
LISTING_CHUNK = 500
LISTING_SLICE_S = 0.005
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000_000


def kernel_listing(mark_mask: int) -> Iterator[Connection]:
    """This node's conntrack table, read on a socket of its own: the agent's
    request socket belongs to the kernel worker thread."""
    with ConntrackSocket(mark_mask, events=False) as table:
        yield from table.iter_dump()


def parse_limit(req: Mapping[str, Any]) -> int:
    """`limit`: entries to send (0: all of them, streamed)."""
    limit = req.get("limit", DEFAULT_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_LIMIT:
        raise ControlError(f"limit: expected an integer from 0 (no limit) to {MAX_LIMIT}")
    return limit


def parse_filter(req: Mapping[str, Any], buckets: int) -> ConnFilter:
    try:
        return ConnFilter.from_request(req.get("filter"), buckets)
    except FilterError as exc:
        raise ControlError(str(exc)) from None


def parse_peers(req: Mapping[str, Any], known: Iterable[NodeId], what: str) -> list[NodeId]:
    """`peers`: node ids (as clusterctl prints them); absent or empty: all `known`."""
    known = sorted(known)
    raw = req.get("peers") or []
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        raise ControlError(f"{what}: peers must be a list of node ids")
    out = []
    for p in raw:
        try:
            node = NodeId(int(ipaddress.IPv4Address(p)))
        except ValueError:
            raise ControlError(f"{what}: {p!r} is not a node id (an IPv4 address)") from None
        if node not in known:
            names = ", ".join(format_node_id(n) for n in known) or "none"
            raise ControlError(f"{what}: {p} is not a peer this node has a cache of ({names})")
        out.append(node)
    return out or known


class OperatorCommands:
    def __init__(
        self,
        node: Node,
        buckets: int,
        mark_mask: int,
        now: Callable[[], float],
        pump: Callable[[], None],
        reread_kernel: Callable[[], object],
        kernel_dump: Callable[[], Iterator[Connection]],
        stats: Callable[[], dict[str, Any]],
        kernel_refusals: Callable[[], Mapping[str, int]],
    ) -> None:
        self.node = node
        self.buckets = buckets
        self.mark_mask = mark_mask
        self.now = now
        self.pump = pump
        self.reread_kernel = reread_kernel
        self.kernel_dump = kernel_dump
        self.stats = stats
        self.kernel_refusals = kernel_refusals
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ops-listing")

    def handlers(self) -> dict[str, Handler]:
        return {
            "cache": self.cache,
            "kernel": self.kernel,
            "resync": self.resync,
            "flush-cache": self.flush_cache,
            "stats": self.sync_stats,
        }

    def close(self) -> None:
        self._reader.shutdown(wait=False, cancel_futures=True)

    def _owner_names(self) -> list[list[str]]:
        return [sorted(format_node_id(n) for n in o) for o in self.node.bucket_owners()]

    # -- listings -------------------------------------------------------------------

    def cache(self, req: Mapping[str, Any]) -> Stream:
        flt = parse_filter(req, self.buckets)
        limit = parse_limit(req)
        tables: list[NodeId | None] = []
        source = req.get("source", "all")
        if not isinstance(source, str):
            raise ControlError("cache: source must be all, local, peers or a node id")
        peers = self.node.conntrack_sync.peers()
        if source in ("all", "local"):
            tables.append(None)
        if source in ("all", "peers"):
            tables.extend(peers)
        if not tables:
            tables = [*parse_peers({"peers": [source]}, peers, "source")]
        return Stream(self._cache_parts(flt, limit, tables))

    async def _cache_parts(
        self, flt: ConnFilter, limit: int, tables: list[NodeId | None]
    ) -> AsyncIterator[dict[str, Any]]:
        sync = self.node.conntrack_sync
        owners = self._owner_names()
        buckets = [b for b in range(self.buckets) if flt.matches_bucket(b)]
        scanned = matched = shown = 0
        rows: list[dict[str, Any]] = []
        examined = 0  # since the loop last had its turn
        turn_ends = self.now() + LISTING_SLICE_S
        for table in tables:
            label = "local" if table is None else format_node_id(table)
            # One bucket's keys at a time: a snapshot of the whole table (a
            # million keys) would hold the loop for hundreds of milliseconds.
            for bucket in buckets:
                if limit and shown >= limit and flt.empty:
                    count = sync.listing_count(table, (bucket,))
                    matched += count  # only counting is left, and every entry matches
                    scanned += count
                    continue
                keys = sync.listing_keys(table, (bucket,))
                for key in keys:
                    conn = sync.listing_get(table, key)
                    if conn is None:
                        continue  # gone since the snapshot
                    scanned += 1
                    examined += 1
                    own = owners[conn.bucket] if conn.bucket < len(owners) else []
                    if flt.matches(conn, conn.bucket, own):
                        matched += 1
                        if not limit or shown < limit:
                            rows.append(entry_row(conn, label, conn.bucket, own))
                            shown += 1
                    if examined >= LISTING_CHUNK or (
                        examined % 64 == 0 and self.now() >= turn_ends
                    ):
                        yield {"entries": rows, "scanned": scanned}
                        rows, examined = [], 0
                        await asyncio.sleep(0)  # the loop's turn: heartbeats first
                        turn_ends = self.now() + LISTING_SLICE_S
        if rows:
            yield {"entries": rows, "scanned": scanned}
        yield {"end": True, "scanned": scanned, "matched": matched, "shown": shown,
               "more": matched - shown}  # fmt: skip

    def kernel(self, req: Mapping[str, Any]) -> Stream:
        flt = parse_filter(req, self.buckets)
        limit = parse_limit(req)
        return Stream(self._kernel_parts(flt, limit))

    async def _kernel_parts(self, flt: ConnFilter, limit: int) -> AsyncIterator[dict[str, Any]]:
        owners = self._owner_names()
        mask = self.mark_mask
        loop = asyncio.get_running_loop()
        entries = self.kernel_dump()
        counts = {"scanned": 0, "matched": 0, "shown": 0}

        def next_chunk() -> tuple[list[dict[str, Any]], bool]:
            """On the listing thread: read, filter and format one chunk."""
            rows = []
            for n, conn in enumerate(entries, 1):
                counts["scanned"] += 1
                bucket = bucket_of_mark(conn.mark, mask)
                own = owners[bucket] if bucket is not None and bucket < len(owners) else []
                if flt.matches(conn, bucket, own):
                    counts["matched"] += 1
                    if not limit or counts["shown"] < limit:
                        rows.append(entry_row(conn, "kernel", bucket, own))
                        counts["shown"] += 1
                if n >= LISTING_CHUNK:
                    return rows, False
            return rows, True

        try:
            done = False
            while not done:
                try:
                    rows, done = await loop.run_in_executor(self._reader, next_chunk)
                except OSError as exc:  # ConntrackError is a RuntimeError; OSError from open
                    raise ControlError(f"cannot read the conntrack table: {exc}") from None
                except RuntimeError as exc:
                    raise ControlError(f"cannot read the conntrack table: {exc}") from None
                yield {"entries": rows, "scanned": counts["scanned"]}
            yield {"end": True, **counts, "more": counts["matched"] - counts["shown"]}
        finally:
            close = getattr(entries, "close", None)
            if close is not None:  # the client left early: release the netlink socket
                await loop.run_in_executor(self._reader, close)

    # -- commands -------------------------------------------------------------------

    def resync(self, req: Mapping[str, Any]) -> dict[str, Any]:
        sync = self.node.conntrack_sync
        alive = [p for p, up in sync.peers().items() if up]
        peers = parse_peers(req, alive, "resync")
        kernel = req.get("kernel", False)
        if not isinstance(kernel, bool):
            raise ControlError("resync: kernel must be true or false")
        asked = self.node.request_resync(peers, self.now())
        if kernel:
            self.reread_kernel()
        self.pump()
        return {"asked": [format_node_id(p) for p in asked], "kernel_reread": kernel}

    def flush_cache(self, req: Mapping[str, Any]) -> dict[str, Any]:
        sync = self.node.conntrack_sync
        peers = parse_peers(req, sync.peers(), "flush-cache")
        dropped = self.node.flush_caches(peers)
        return {"flushed": [format_node_id(p) for p in peers], "entries_dropped": dropped}

    def sync_stats(self, _req: Mapping[str, Any]) -> dict[str, Any]:
        """The sync counters grouped like `conntrackd -s`."""
        flat = self.stats()
        ct = self.node.conntrack_sync.stats
        peers = self.node.conntrack_sync.peers()
        return {
            "messages": {
                "sent": dict(sorted(ct.sent.items())),
                "received": dict(sorted(ct.received.items())),
                "rejected": dict(sorted(ct.rejected.items())),
            },
            "broadcast": {
                "data_sent": flat.get("rb_data_sent", 0),
                "retransmitted": flat.get("rb_retransmitted", 0),
                "naks_sent": flat.get("naks", 0),
                "naks_suppressed": flat.get("naks_suppressed", 0),
                "lost_sent": flat.get("rb_lost_sent", 0),
                "delivered": flat.get("rb_delivered", 0),
                "duplicates": flat.get("rb_duplicates", 0),
                "out_of_sync": flat.get("out_of_sync", 0),
                "send_errors": flat.get("sync_send_errors", 0),
            },
            "resyncs": {
                "rounds_sent": dict(sorted(ct.resyncs.items())),
                "requests_sent": dict(sorted(ct.resync_requests.items())),
                "digest_mismatches": ct.digest_mismatches,
                "stale_dropped": ct.stale_dropped,
            },
            "cache": {
                "local_entries": ct.local_entries,
                "peers": {
                    format_node_id(p): {"entries": ct.cache_sizes.get(p, 0), "alive": up}
                    for p, up in peers.items()
                },
            },
            "kernel": {
                "injected_requested": flat.get("injected_requested", 0),
                "injected": flat.get("kernel_injected", 0),
                "deleted_requested": flat.get("deleted_requested", 0),
                "deleted": flat.get("kernel_deleted", 0),
                "errors": flat.get("kernel_errors", 0),
                "refused": dict(sorted(self.kernel_refusals().items())),
                "redumps": flat.get("conntrack_redumps", 0),
            },
        }
