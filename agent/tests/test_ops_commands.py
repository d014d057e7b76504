"""The operator's commands (daemon/ops_commands.py) on real Nodes driven by hand.

The cluster of test_node moves the datagrams; the commands run against one
node as the control socket would call them, streams collected on an event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from test_node import Cluster, conn_in_bucket, nid

from availability_manager.connection import Connection
from availability_manager.daemon import ops_commands
from availability_manager.daemon.control import ControlError, Stream
from availability_manager.daemon.ops_commands import OperatorCommands
from availability_manager.dataplane.bucket import mark_of_bucket
from availability_manager.types import format_node_id

MASK = 0xFFFF


class Kernel:
    """A stand-in for the conntrack table read on the listing thread."""

    def __init__(self, conns: list[Connection]) -> None:
        self.conns = conns
        self.closed = False
        self.read = 0

    def dump(self) -> Iterator[Connection]:
        try:
            for c in self.conns:
                self.read += 1
                yield c
        finally:
            self.closed = True


def commands(cluster: Cluster, i: int, kernel: Kernel | None = None) -> OperatorCommands:
    h = cluster.host(i)
    k = kernel or Kernel([])
    return OperatorCommands(
        h.node,
        buckets=32,
        mark_mask=MASK,
        now=lambda: cluster.now,
        pump=cluster.pump,
        reread_kernel=lambda: None,
        kernel_dump=k.dump,
        stats=h.node.stats,
        kernel_refusals=lambda: {"inject: File exists": 2},
    )


def collect(stream: Any, stop_after: int | None = None) -> list[dict[str, Any]]:
    assert isinstance(stream, Stream)

    async def run() -> list[dict[str, Any]]:
        out = []
        async for part in stream.parts:
            out.append(part)
            if stop_after is not None and len(out) >= stop_after:
                await stream.parts.aclose()  # type: ignore[attr-defined]
                break
        return out

    return asyncio.run(run())


def entries(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for p in parts for e in p.get("entries", ())]


@pytest.fixture
def three() -> Cluster:
    c = Cluster(3)
    c.run(1.0)
    return c


def with_connections(c: Cluster, i: int, count: int) -> list[Connection]:
    """`count` connections new on node `i`, in the buckets it owns."""
    owned = sorted(c.host(i).owned)
    conns = [conn_in_bucket(owned[n % len(owned)], n) for n in range(count)]
    for conn in conns:
        c.new_connection(i, conn)
    return conns


def test_cache_lists_own_and_peer_entries_with_their_owner(three: Cluster) -> None:
    conns = with_connections(three, 1, 5)
    ops = commands(three, 2)
    parts = collect(ops.cache({}))
    rows = entries(parts)
    assert parts[-1] == {"end": True, "scanned": 5, "matched": 5, "shown": 5, "more": 0}
    assert {(r["table"], r["sport"]) for r in rows} == {
        (format_node_id(nid(1)), c.orig.sport) for c in conns
    }
    owners = three.host(2).node.bucket_owners()
    for r in rows:
        assert r["owner"] == [format_node_id(n) for n in owners[r["bucket"]]]
    # node 1's own view: the same entries, as its local table
    local = entries(collect(commands(three, 1).cache({"source": "local"})))
    assert sorted(r["sport"] for r in local) == sorted(c.orig.sport for c in conns)
    assert {r["table"] for r in local} == {"local"}
    assert entries(collect(commands(three, 1).cache({"source": "peers"}))) == []


def test_cache_filters_limit_and_counts_the_rest(three: Cluster) -> None:
    conns = with_connections(three, 1, 2500)  # more than two chunks of the walk
    ops = commands(three, 3)
    parts = collect(ops.cache({"limit": 10}))
    assert len(entries(parts)) == 10
    assert parts[-1]["matched"] == 2500 and parts[-1]["more"] == 2490
    bucket = conns[0].bucket
    want = sorted(c.orig.sport for c in conns if c.bucket == bucket)
    parts = collect(ops.cache({"filter": {"bucket": [str(bucket)]}, "limit": 0}))
    assert sorted(r["sport"] for r in entries(parts)) == want
    assert parts[-1]["scanned"] == len(want)  # other buckets are not even read
    port = conns[7].orig.sport
    parts = collect(ops.cache({"filter": {"sport": [port], "proto": ["tcp"]}, "limit": 1}))
    assert [r["sport"] for r in entries(parts)] == [port]
    assert parts[-1]["more"] == 0
    one = format_node_id(nid(1))
    assert entries(collect(ops.cache({"source": one, "limit": 3})))[0]["table"] == one


@pytest.mark.parametrize(
    ("req", "message"),
    [
        ({"limit": -1}, "limit: expected an integer"),
        ({"limit": "all"}, "limit: expected an integer"),
        ({"filter": {"bucket": ["32"]}}, "bucket: '32' is outside 0..31"),
        ({"filter": {"src": ["x"]}}, "src: expected an address"),
        ({"source": "192.0.2.77"}, "192.0.2.77 is not a peer this node has a cache of"),
        ({"source": "nonsense"}, "'nonsense' is not a node id"),
        ({"source": 3}, "source must be all, local, peers or a node id"),
    ],
)
def test_cache_refuses_bad_arguments_by_name(
    three: Cluster, req: dict[str, Any], message: str
) -> None:
    with pytest.raises(ControlError, match=message):
        commands(three, 2).cache(req)


def test_kernel_listing_reads_bucket_and_owner_from_the_mark(three: Cluster) -> None:
    owners = three.host(1).node.bucket_owners()
    marked = [
        dataclasses.replace(conn_in_bucket(0, n), mark=mark_of_bucket(n % 32, MASK))
        for n in range(40)
    ]
    unclassified = conn_in_bucket(0, 99)  # mark 0: the data plane never saw it
    kernel = Kernel([*marked, unclassified])
    parts = collect(commands(three, 1, kernel).kernel({"limit": 0}))
    rows = entries(parts)
    assert len(rows) == 41 and kernel.closed
    for n, r in enumerate(rows[:40]):
        assert r["bucket"] == n % 32
        assert r["owner"] == [format_node_id(o) for o in owners[n % 32]]
        assert r["table"] == "kernel"
    assert rows[40]["bucket"] is None and rows[40]["owner"] == []
    me = format_node_id(nid(1))
    mine = collect(commands(three, 1, Kernel(marked)).kernel({"filter": {"owner": [me]}}))
    assert {r["bucket"] for r in entries(mine)} == {b for b in range(32) if nid(1) in owners[b]}


def test_an_abandoned_kernel_listing_closes_its_reader(three: Cluster) -> None:
    kernel = Kernel([conn_in_bucket(0, n) for n in range(5000)])
    parts = collect(commands(three, 1, kernel).kernel({"limit": 0}), stop_after=1)
    assert len(entries(parts)) == ops_commands.LISTING_CHUNK
    assert kernel.closed and kernel.read < 5000


def test_kernel_listing_errors_reach_the_operator(three: Cluster) -> None:
    def broken() -> Iterator[Connection]:
        raise RuntimeError("ctnetlink reply failed: timed out")
        yield  # a generator

    ops = commands(three, 1)
    ops.kernel_dump = broken
    with pytest.raises(ControlError, match="cannot read the conntrack table: ctnetlink"):
        collect(ops.kernel({}))


def test_resync_asks_the_live_peers_and_they_resend(three: Cluster) -> None:
    with_connections(three, 1, 3)
    ops = commands(three, 2)
    rounds_before = three.host(1).node.conntrack_sync.stats.resyncs.get("request-full", 0)
    assert ops.resync({}) == {
        "asked": [format_node_id(nid(1)), format_node_id(nid(3))],
        "kernel_reread": False,
    }
    three.run(0.2)
    assert three.host(1).node.conntrack_sync.stats.resyncs["request-full"] == rounds_before + 1
    assert three.host(2).node.conntrack_sync.stats.resync_requests["operator"] == 2
    asked = ops.resync({"peers": [format_node_id(nid(3))], "kernel": True})
    assert asked == {"asked": [format_node_id(nid(3))], "kernel_reread": True}
    with pytest.raises(ControlError, match="kernel must be true or false"):
        ops.resync({"kernel": "yes"})


def test_flush_cache_empties_it_and_the_digest_check_refills_it(three: Cluster) -> None:
    conns = with_connections(three, 1, 20)
    ops = commands(three, 2)
    sync = three.host(2).node.conntrack_sync
    result = ops.flush_cache({"peers": [format_node_id(nid(1))]})
    assert result == {"flushed": [format_node_id(nid(1))], "entries_dropped": 20}
    assert sync.cache_size(nid(1)) == 0
    assert entries(collect(ops.cache({"source": format_node_id(nid(1))}))) == []
    # within two digest intervals the peer's digest shows the gap and a resync fills it
    three.run(2 * sync.check_interval + 0.5)
    assert {c.key for c in sync.cache_entries(nid(1))} == {c.key for c in conns}
    assert sync.stats.resync_requests.get("digest-mismatch", 0) >= 1


def test_stats_groups_the_sync_counters(three: Cluster) -> None:
    with_connections(three, 1, 4)
    st = commands(three, 2).sync_stats({})
    assert st["messages"]["received"]["CtNew"] == 4
    assert st["cache"]["peers"][format_node_id(nid(1))] == {"entries": 4, "alive": True}
    assert st["cache"]["local_entries"] == 0
    assert st["broadcast"]["delivered"] > 0
    assert st["kernel"]["refused"] == {"inject: File exists": 2}
    sent = commands(three, 1).sync_stats({})["messages"]["sent"]
    assert sent["CtNew"] == 4


def test_a_cache_listing_gives_the_loop_its_turn_when_its_time_slice_is_over(
    three: Cluster,
) -> None:
    with_connections(three, 1, 300)
    ops = commands(three, 2)
    ticks = iter(range(10**6))
    ops.now = lambda: float(next(ticks))  # every reading a second later: each slice is over
    parts = collect(ops.cache({"limit": 0}))
    scanned = [p["scanned"] for p in parts]
    steps = [b - a for a, b in zip([0, *scanned], scanned, strict=False)]
    assert max(steps) == 64  # the clock is read every 64 entries
    assert len(entries(parts)) == 300
    # with a clock that stands still, only the entry count ends a turn
    ops.now = lambda: 0.0
    assert [p["scanned"] for p in collect(ops.cache({"limit": 0}))][:1] == [300]
