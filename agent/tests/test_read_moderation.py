"""ModeratedReader on a real event loop and a real UDP socket pair: a quiet
socket is read at once, a busy one at most once per interval, with what
queued meanwhile read in that one drain."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from availability_manager.daemon.read_moderation import ModeratedReader

INTERVAL_S = 0.05


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    yield rx, tx
    rx.close()
    tx.close()


class Drains:
    """Each drain: the loop time it ran at and the datagrams it read."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.loop = loop
        self.sock = sock
        self.runs: list[tuple[float, list[bytes]]] = []
        self.changed = asyncio.Event()

    def __call__(self) -> None:
        got = []
        while True:
            try:
                got.append(self.sock.recv(100))
            except BlockingIOError:
                break
        self.runs.append((self.loop.time(), got))
        self.changed.set()

    async def next(self) -> tuple[float, list[bytes]]:
        self.changed.clear()
        await asyncio.wait_for(self.changed.wait(), 2)
        return self.runs[-1]


def watched(rx: socket.socket) -> tuple[asyncio.AbstractEventLoop, Drains, ModeratedReader]:
    """A started reader of `rx` on the running loop, and its drains."""
    loop = asyncio.get_running_loop()
    drains = Drains(loop, rx)
    reader = ModeratedReader(loop, rx.fileno(), drains, INTERVAL_S)
    reader.start()
    return loop, drains, reader


def test_a_quiet_socket_is_read_at_once_and_a_busy_one_once_per_interval(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    rx, tx = pair

    async def run() -> None:
        loop, drains, reader = watched(rx)
        sent = loop.time()
        tx.send(b"first")
        at, got = await drains.next()
        assert got == [b"first"]
        assert at - sent < INTERVAL_S / 2, "a quiet socket waited"
        assert reader.deferred_drains == 0

        # One more right after a quiet drain is read at once too (two peers'
        # heartbeats a moment apart are not a busy socket) ...
        tx.send(b"second")
        at1, got = await drains.next()
        assert got == [b"second"]
        assert at1 - at < INTERVAL_S / 2, "the first read after a quiet one waited"
        assert reader.deferred_drains == 0

        # ... but now the socket is busy: three datagrams right after that
        # drain arrive in one drain, an interval after it.
        for n in range(3):
            tx.send(b"busy%d" % n)
            await asyncio.sleep(0.005)
        at2, got = await drains.next()
        assert got == [b"busy0", b"busy1", b"busy2"]
        assert at2 - at1 >= INTERVAL_S * 0.99
        assert reader.deferred_drains == 1
        assert len(drains.runs) == 3

        # Still busy after the deferred drain: the next one waits again.
        tx.send(b"busy3")
        at3, got = await drains.next()
        assert got == [b"busy3"]
        assert at3 - at2 >= INTERVAL_S * 0.99
        assert reader.deferred_drains == 2

        # Quiet again after more than an interval: at once.
        await asyncio.sleep(INTERVAL_S * 2)
        sent = loop.time()
        tx.send(b"later")
        at4, got = await drains.next()
        assert got == [b"later"]
        assert at4 - sent < INTERVAL_S / 2
        reader.stop()

    asyncio.run(run())


def test_stop_cancels_a_deferred_drain(pair: tuple[socket.socket, socket.socket]) -> None:
    rx, tx = pair

    async def run() -> None:
        _loop, drains, reader = watched(rx)
        tx.send(b"a")
        await drains.next()
        tx.send(b"b")
        await drains.next()  # the second read within an interval: at once, now busy
        tx.send(b"c")
        await asyncio.sleep(0.01)  # readable now, drain deferred
        assert reader.deferred_drains == 1
        reader.stop()
        await asyncio.sleep(INTERVAL_S * 2)
        assert len(drains.runs) == 2
        assert rx.recv(100) == b"c"  # left for whoever reads next

    asyncio.run(run())


def test_a_negative_interval_is_refused() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="interval_s"):
            ModeratedReader(loop, 0, lambda: None, -1.0)
    finally:
        loop.close()
