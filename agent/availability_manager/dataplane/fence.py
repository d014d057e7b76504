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

from .netlink_attrs import (
    NLM_F_CREATE,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    Malformed,
    attr,
    messages,
    nest,
)
from .netlink_attrs import message as nl_message

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM = 12, 14
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_TIMEOUT = 1, 4
NFTA_DATA_VALUE = 1
NFPROTO_INET = 1
NFPROTO_IPV4, NFPROTO_IPV6 = 2, 10

FENCE_SET = "alive"
NFGENMSG = struct.Struct("!BBH")  # family, version, res_id (big endian)
_BE64 = struct.Struct("!Q")


def _string(atype: int, value: str) -> bytes:
    return attr(atype, value.encode() + b"\0")


def refresh_batch(table: str, timeout_ms: int, seq: int) -> bytes:
    """One transaction: flush the fence set, add IPv4 and IPv6 with `timeout_ms`."""
    target = _string(NFTA_SET_ELEM_LIST_TABLE, table) + _string(NFTA_SET_ELEM_LIST_SET, FENCE_SET)
    elements = nest(
        NFTA_SET_ELEM_LIST_ELEMENTS,
        *(
            nest(
                NFTA_LIST_ELEM,
                nest(NFTA_SET_ELEM_KEY, attr(NFTA_DATA_VALUE, bytes([family]))),
                attr(NFTA_SET_ELEM_TIMEOUT, _BE64.pack(timeout_ms)),
            )
            for family in (NFPROTO_IPV4, NFPROTO_IPV6)
        ),
    )
    batch = NFGENMSG.pack(socket.AF_UNSPEC, 0, NFNL_SUBSYS_NFTABLES)
    inet = NFGENMSG.pack(NFPROTO_INET, 0, 0)
    nft = NFNL_SUBSYS_NFTABLES << 8
    return b"".join(
        (
            nl_message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, batch),
            nl_message(nft | NFT_MSG_DELSETELEM, NLM_F_REQUEST, seq + 1, inet + target),
            nl_message(
                nft | NFT_MSG_NEWSETELEM,
                NLM_F_REQUEST | NLM_F_CREATE,
                seq + 2,
                inet + target + elements,
            ),
            nl_message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + 3, batch),
        )
    )


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
