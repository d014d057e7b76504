"""The nftables data plane's dead man's switch: a node whose agent stops
running stops forwarding before its peers take its buckets over.

The kernel forwards on its own: an agent that hangs (SIGSTOP, a starved CPU,
a debugger, a deadlock) leaves its node's owned sets in place while its peers,
hearing no heartbeat, take the buckets and inject the connections. Both nodes
would then forward the same connections (duplicates: 817 in the lab's stalled
agent test without this) until the agent resumes or systemd's watchdog kills
it (5 s). keepalived has the same hole; fwcluster closes it in the kernel.

The table has a set `alive` (`type nf_proto; flags dynamic,timeout`); the
cluster chain drops every classified packet of a protocol family not in it.
Each heartbeat refreshes both families with a timeout that ends `misses -
0.5` heartbeat intervals after it (config.fence_timeout), so the elements
expire, and the node falls silent, before its peers declare it dead, not
later.

The heartbeat itself does it: the runtime sends every datagram that carries
a heartbeat with the socket mark FENCE_MARK (an SO_MARK control message on
that one datagram), and the table's `fence_out` chain, at the output hook,
re-adds both elements for each packet so marked (`update @alive`). No
syscall of its own, no nftables transaction, no notification: a transaction
per heartbeat was about a fifth of an idle agent's CPU (issue 19,
docs/benchmarks.md) and flooded `nft monitor`. The mark is local to this
node (never on the wire); it is routed by only if the operator's own
policy routing names this exact value.

A refresh by netlink batch (flush the set, add two elements, written by
hand: no `nft` process) is kept for what no heartbeat covers: the new
table's empty set at install, a fence that may rise again between
heartbeats (after a stall, runtime._keep_fence_up), and a heartbeat none of
whose copies left the node (a link down: the send failed before the output
hook). The socket is non-blocking; the kernel's answers are errors only (no
ACK asked), read on the next refresh and counted.
"""

from __future__ import annotations

import collections
import errno
import socket
import struct

from .netlink_attrs import NLMSG_ERROR, NLMSG_HDR, Malformed, messages
from .nft_batch import NETLINK_NETFILTER, Batch

NFPROTO_IPV4, NFPROTO_IPV6 = 2, 10
FENCE_SET = "alive"
FENCE_OUT_CHAIN = "fence_out"
# The socket mark of a datagram that carries a heartbeat ("fwcf" in ASCII:
# a value no other mark scheme is likely to use).
FENCE_MARK = 0x66776366
_SEQ = struct.Struct("=I")


def refresh_batch(table: str, timeout_ms: int, seq: int) -> bytes:
    """One transaction: flush the fence set, add IPv4 and IPv6 with `timeout_ms`."""
    batch = Batch(table, seq, ack=False)
    batch.flush_set(FENCE_SET)
    batch.add_elements(FENCE_SET, (bytes([f]) for f in (NFPROTO_IPV4, NFPROTO_IPV6)), timeout_ms)
    return bytes(batch)


def fence_out_rule(timeout_ms: int) -> str:
    """The `fence_out` chain's rule: a heartbeat's packet refreshes both families."""
    update = " ".join(
        f"update @{FENCE_SET} {{ {family} timeout {timeout_ms}ms }}" for family in ("ipv4", "ipv6")
    )
    return f"meta mark {FENCE_MARK:#x} {update}"


class RefreshBatches:
    """`refresh_batch` at a fraction of its cost. Where the heartbeat's own
    packets cannot refresh the fence (a kernel refusing the mark) a netlink
    refresh follows every heartbeat, and building its attributes anew each
    time was about a tenth of an idle agent's CPU (issue 19). The batch for
    a timeout is built once and only its messages' sequence numbers are
    written per refresh (the timeouts in use are few: the fence timeout,
    minus the milliseconds a late heartbeat already used)."""

    MAX_KEPT = 64  # timeouts; more are built afresh after a clear

    def __init__(self, table: str) -> None:
        self.table = table
        self._kept: dict[int, tuple[bytes, tuple[int, ...]]] = {}

    def __call__(self, timeout_ms: int, seq: int) -> bytes:
        kept = self._kept.get(timeout_ms)
        if kept is None:
            if len(self._kept) >= self.MAX_KEPT:
                self._kept.clear()
            built = refresh_batch(self.table, timeout_ms, 0)
            # where each message's sequence number sits, in order: it is
            # `seq` for the first message and one more for each after
            offsets = tuple(off - NLMSG_HDR.size + 8 for _t, _f, _s, off, _e in messages(built))
            kept = self._kept[timeout_ms] = (built, offsets)
        built, offsets = kept
        out = bytearray(built)
        for i, at in enumerate(offsets):
            _SEQ.pack_into(out, at, seq + i)
        return bytes(out)


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
        self._batches = RefreshBatches(table)
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
        batch = self._batches(min(timeout_ms, self.timeout_ms), self._seq)
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
