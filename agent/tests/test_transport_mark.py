"""SyncSocket.send with the fence's mark: each copy leaves with an SO_MARK
control message; a kernel that refuses the mark gets the datagram unmarked
and is not asked again, while a refusal that is not about the mark (an
output rule dropping the packet also says EPERM) is counted as a failed send.

A socket stand-in (unit level; the real kernel's side is
agent/tests/lab/test_nftables_backend.py::test_a_heartbeat_sent_with_the_fence_mark_keeps_the_node_forwarding)."""

from __future__ import annotations

import errno
import socket
import struct
from typing import Any

from availability_manager.daemon.transport import SO_MARK, SyncSocket

MARK = 0x66776366
DEST = ("239.255.77.1", 7788)


class Sock:
    def __init__(self, marked_error: int | None = None, plain_error: int | None = None) -> None:
        self.marked_error, self.plain_error = marked_error, plain_error
        self.marked: list[tuple[bytes, int]] = []
        self.plain: list[bytes] = []

    def sendmsg(self, buffers: list[bytes], ancdata: list[Any], flags: int, dest: Any) -> int:
        if self.marked_error is not None:
            raise OSError(self.marked_error, "refused")
        [(level, kind, value)] = ancdata
        assert (level, kind) == (socket.SOL_SOCKET, SO_MARK)
        self.marked.append((buffers[0], struct.unpack("=I", value)[0]))
        return len(buffers[0])

    def sendto(self, data: bytes, dest: Any) -> int:
        if self.plain_error is not None:
            raise OSError(self.plain_error, "refused")
        self.plain.append(data)
        return len(data)


def sync_socket(sock: Sock, destinations: int = 1) -> SyncSocket:
    s = object.__new__(SyncSocket)
    s.sock = sock  # type: ignore[assignment]
    s.destinations = [DEST] * destinations
    s.send_errors = 0
    s.marks_taken = True
    return s


def test_every_copy_carries_the_mark() -> None:
    sock = Sock()
    s = sync_socket(sock, destinations=2)
    assert s.send(b"hb", MARK) is True
    assert sock.marked == [(b"hb", MARK), (b"hb", MARK)] and sock.plain == []


def test_without_a_mark_the_plain_send_is_used() -> None:
    sock = Sock()
    s = sync_socket(sock)
    assert s.send(b"data") is True
    assert sock.plain == [b"data"] and sock.marked == []


def test_a_kernel_refusing_the_mark_gets_the_datagram_unmarked_and_is_not_asked_again() -> None:
    sock = Sock(marked_error=errno.EINVAL)
    s = sync_socket(sock)
    assert s.send(b"hb1", MARK) is False, "an unmarked copy did not refresh the fence"
    assert sock.plain == [b"hb1"] and not s.marks_taken and s.send_errors == 0
    sock.marked_error = None  # would take it now: not asked again
    assert s.send(b"hb2", MARK) is False
    assert sock.plain == [b"hb1", b"hb2"] and sock.marked == []


def test_a_drop_by_an_output_rule_is_a_failed_send_not_a_refused_mark() -> None:
    sock = Sock(marked_error=errno.EPERM, plain_error=errno.EPERM)
    s = sync_socket(sock)
    assert s.send(b"hb", MARK) is False
    assert s.marks_taken and s.send_errors == 1


def test_a_link_down_is_a_failed_send() -> None:
    sock = Sock(marked_error=errno.ENETUNREACH)
    s = sync_socket(sock)
    assert s.send(b"hb", MARK) is False
    assert s.marks_taken and s.send_errors == 1 and sock.plain == []
