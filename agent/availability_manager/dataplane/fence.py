"""The nftables data plane's dead man's switch: a node whose agent stops
running stops forwarding before its peers take its buckets over.

The kernel forwards on its own: an agent that hangs (SIGSTOP, a starved CPU,
a debugger, a deadlock) leaves its node's owned sets in place while its peers,
hearing no heartbeat, take the buckets and inject the connections. Both nodes
would then forward the same connections (duplicates: 817 in the lab's stalled
agent test without this) until the agent resumes or systemd's watchdog kills
it (5 s). keepalived has the same hole; fwcluster closes it in the kernel.

The table has a set `alive` (`type nf_proto; flags timeout`); the cluster
chain drops every classified packet of a protocol family not in it. After
every heartbeat it sends, the agent re-adds both families with a timeout
that ends `misses - 0.5` heartbeat intervals after that heartbeat
(config.fence_timeout), so the elements expire, and the node falls silent,
before its peers declare it dead, not later. A refresh is one netlink
batch (flush the set, add two elements) written by hand: no `nft` process per
heartbeat. The socket is non-blocking; the kernel's answers are errors only
(no ACK asked), read on the next refresh and counted.
"""

from __future__ import annotations

import collections
import errno
import socket
import struct

from .netlink_attrs import NLMSG_ERROR, Malformed, messages
from .nft_batch import NETLINK_NETFILTER, Batch

NFPROTO_IPV4, NFPROTO_IPV6 = 2, 10
FENCE_SET = "alive"


def refresh_batch(table: str, timeout_ms: int, seq: int) -> bytes:
    """One transaction: flush the fence set, add IPv4 and IPv6 with `timeout_ms`."""
    batch = Batch(table, seq, ack=False)
    batch.flush_set(FENCE_SET)
    batch.add_elements(FENCE_SET, (bytes([f]) for f in (NFPROTO_IPV4, NFPROTO_IPV6)), timeout_ms)
    return bytes(batch)


class Fence:
    """Keeps this node's `alive` elements from expiring while the agent runs."""

    def __init__(self, table: str, timeout_s: float) -> None:
        if not 0.01 <= timeout_s <= 60.0:
            raise ValueError(f"fence timeout must be 0.01..60 s, got {timeout_s}")
        self.table = table
        self.timeout_ms = round(timeout_s * 1000)
        self.refreshes = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self._seq = 1
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self._sock.bind((0, 0))
        self._sock.setblocking(False)

    def refresh(self, timeout_s: float | None = None) -> bool:
        """Send one refresh: the elements expire `timeout_s` from now (the
        constructor's timeout if None); False if the kernel could not even
        take it (the fence then expires: the node stops forwarding, which is
        the point)."""
        self._read_errors()
        timeout_ms = self.timeout_ms if timeout_s is None else max(1, round(timeout_s * 1000))
        batch = refresh_batch(self.table, min(timeout_ms, self.timeout_ms), self._seq)
        self._seq = (self._seq + 4) & 0x7FFFFFFF or 1
        try:
            self._sock.send(batch)
        except OSError as e:
            self.errors[errno.errorcode.get(e.errno or 0, "send")] += 1
            return False
        self.refreshes += 1
        return True

    def _read_errors(self) -> None:
        while True:
            try:
                buf = self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # ENOBUFS: answers lost; the next ones tell
                self.errors[errno.errorcode.get(e.errno or 0, "recv")] += 1
                return
            try:
                for mtype, _flags, _seq, off, end in messages(buf):
                    if mtype == NLMSG_ERROR and end - off >= 4:
                        code = -struct.unpack_from("=i", buf, off)[0]
                        if code:
                            self.errors[errno.errorcode.get(code, str(code))] += 1
            except Malformed:
                self.errors["malformed"] += 1

    def close(self) -> None:
        self._sock.close()
