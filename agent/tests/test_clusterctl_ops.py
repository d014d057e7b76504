"""clusterctl cache/kernel/stats/resync/flush-cache end to end: the real
control socket server with the real commands on hand-driven Nodes, and the
control socket's streamed answers (control.Stream)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_node import Cluster, nid
from test_ops_commands import Kernel, commands, with_connections

from availability_manager.cli import clusterctl
from availability_manager.daemon.control import ControlError, ControlServer, Handler, Stream
from availability_manager.types import format_node_id


class Server:
    """A ControlServer on its own loop thread."""

    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.loop = asyncio.new_event_loop()
        self.server = ControlServer(path, handlers)
        self.loop.run_until_complete(self.server.start())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def _shutdown(self) -> None:
        await self.server.close()
        # connections still being served end here, not when the loop is gone
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def cluster() -> Cluster:
    c = Cluster(3)
    c.run(1.0)
    with_connections(c, 1, 30)
    return c


@pytest.fixture
def ctl(cluster: Cluster, tmp_path: Path) -> Iterator[tuple[Path, Cluster]]:
    ops = commands(cluster, 2, Kernel([]))
    srv = Server(tmp_path / "run" / "control.sock", ops.handlers())
    yield srv.path, cluster
    srv.close()
    ops.close()


def run(path: Path, *args: str) -> int:
    return clusterctl.main(["--socket", str(path), *args])


def test_cache_prints_entries_and_how_many_more(
    ctl: tuple[Path, Cluster], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = ctl
    assert run(path, "cache", "--limit", "5") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7
    assert all(f"({format_node_id(nid(1))})" in line for line in lines[:5])
    assert "tcp    syn_sent    198.51.100." in lines[0] and " > 203.0.113.10:443 " in lines[0]
    assert lines[5] == "5 of 30 matching cached entries shown (30 examined)"
    assert lines[6].startswith("25 more: raise --limit")


def test_cache_json_is_one_document_with_every_entry(
    ctl: tuple[Path, Cluster], capsys: pytest.CaptureFixture[str]
) -> None:
    path, cluster = ctl
    assert run(path, "cache", "--json", "--limit", "0", "--dport", "443", "--proto", "tcp") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["matched"] == doc["shown"] == 30 and doc["more"] == 0
    keys = {(e["src"], e["sport"]) for e in doc["entries"]}
    cached = cluster.host(2).node.peer_cache(nid(1)).values()
    assert keys == {(format_addr(c.orig.src), c.orig.sport) for c in cached}
    assert run(path, "cache", "--json", "--dport", "80") == 0
    assert json.loads(capsys.readouterr().out)["entries"] == []


def format_addr(packed: bytes) -> str:
    return ".".join(str(b) for b in packed)


def test_bad_filters_are_usage_errors_before_any_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nowhere = tmp_path / "none.sock"  # never reached: the check comes first
    assert run(nowhere, "cache", "--src", "10.0.0.300") == 2
    assert "src: expected an address or CIDR, got '10.0.0.300'" in capsys.readouterr().err
    assert run(nowhere, "kernel", "--state", "open") == 2
    assert "state: expected one of" in capsys.readouterr().err
    assert run(nowhere, "kernel", "--limit", "-3") == 2
    assert run(nowhere, "kernel") == 3  # a good request, no agent


def test_agent_side_refusals_are_reported(
    ctl: tuple[Path, Cluster], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = ctl
    assert run(path, "cache", "--bucket", "40") == 1  # clusterctl does not know the count
    assert "bucket: '40' is outside 0..31" in capsys.readouterr().err
    assert run(path, "flush-cache", "--peer", "192.0.2.99") == 1
    assert "192.0.2.99 is not a peer" in capsys.readouterr().err


def test_stats_resync_and_flush_cache(
    ctl: tuple[Path, Cluster], capsys: pytest.CaptureFixture[str]
) -> None:
    path, cluster = ctl
    assert run(path, "stats") == 0
    out = capsys.readouterr().out
    assert f"  {format_node_id(nid(1)):<16}       30" in out
    assert "received  " in out and "CtNew 30" in out
    assert run(path, "stats", "--json") == 0
    assert json.loads(capsys.readouterr().out)["cache"]["local_entries"] == 0
    assert run(path, "resync") == 0
    assert capsys.readouterr().out.startswith("resync requested from 192.0.2.1, 192.0.2.3")
    assert run(path, "flush-cache", "--json") == 0
    assert json.loads(capsys.readouterr().out)["entries_dropped"] == 30
    assert cluster.host(2).node.conntrack_sync.cache_size(nid(1)) == 0
    assert run(path, "flush-cache") == 0
    assert "cannot take over those connections" in capsys.readouterr().out


# -- the stream framing itself ---------------------------------------------------------


class Parts:
    """A streaming handler that records whether it was closed."""

    def __init__(self, count: int, fail_at: int | None = None) -> None:
        self.count = count
        self.fail_at = fail_at
        self.closed = False
        self.made = 0

    async def parts(self) -> AsyncIterator[dict[str, Any]]:
        try:
            for i in range(self.count):
                if i == self.fail_at:
                    raise ControlError("the table went away")
                self.made += 1
                yield {"entries": [{"n": i, "pad": "x" * 4000}], "scanned": i + 1}
            yield {"end": True, "scanned": self.count, "matched": self.count,
                   "shown": self.count, "more": 0}  # fmt: skip
        finally:
            self.closed = True


def test_a_stream_arrives_whole_and_in_order(tmp_path: Path) -> None:
    p = Parts(50)
    srv = Server(tmp_path / "s.sock", {"cache": lambda _r: Stream(p.parts())})
    try:
        got = list(clusterctl.request_stream(srv.path, "cache"))
    finally:
        srv.close()
    assert [e["n"] for part in got for e in part.get("entries", ())] == list(range(50))
    assert got[-1]["end"] is True and p.closed


def test_a_failure_midway_is_an_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = Parts(50, fail_at=3)
    srv = Server(tmp_path / "s.sock", {"kernel": lambda _r: Stream(p.parts())})
    try:
        assert run(srv.path, "kernel", "--json") == 1
    finally:
        srv.close()
    assert "the agent refused: the table went away" in capsys.readouterr().err


def test_a_client_that_leaves_stops_the_listing(tmp_path: Path) -> None:
    """Nothing more is produced than the socket buffers hold: the server
    drains each part before making the next, and closes the listing."""
    p = Parts(100_000)
    srv = Server(tmp_path / "s.sock", {"cache": lambda _r: Stream(p.parts())})
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(srv.path))
            s.sendall(b'{"cmd": "cache"}\n')
            s.makefile("rb").readline()
            time.sleep(0.3)  # the server fills the socket buffers meanwhile
        for _ in range(50):
            if p.closed:
                break
            time.sleep(0.05)
    finally:
        srv.close()
    assert p.closed
    assert p.made < 2000  # ~4 KB parts: a few MB of socket buffer at the most
