"""nf_tables transactions written as netlink batches, without an `nft` process.

The agent changes its own tables at every membership change: the owned sets,
the switching set and the handover chain's timed switches. Through `nft` that
is a process per change (fork and exec of a large agent, nft's ruleset cache,
JSON), tens of milliseconds of CPU, and the event loop waits for a release to
be programmed before it may announce it (runtime._perform). At 16 lab nodes
on 2 cores the processes of every node's every handover kept the cluster
from settling (issue 19). A batch written here costs well under a
millisecond, answers with the kernel's error if any, and is one transaction
as `nft -f` is: all of it or nothing.

Only what the agent writes after install() is here; install() keeps `nft -f`
(the ruleset is text, validated by nft, written once).

Layout (include/uapi/linux/netfilter/nf_tables.h): a batch is
BATCH_BEGIN, the messages, BATCH_END, each an nlmsghdr with an nfgenmsg
(family, version 0, res_id: the subsystem in BEGIN/END). Every message but
BEGIN/END asks for an ACK so that the writer knows it was taken (the
fence's refresh, sent without waiting, asks for none: fence.py).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterable, Sequence

from .netlink_attrs import (
    NLM_F_ACK,
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
NFT_MSG_NEWRULE, NFT_MSG_DELRULE = 6, 8
NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM = 12, 14
NFPROTO_INET = 1
NLM_F_APPEND = 0x800

NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS = 1, 2, 4
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_TIMEOUT = 1, 4
NFTA_DATA_VALUE, NFTA_DATA_VERDICT = 1, 2
NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 2
NFTA_CT_DREG, NFTA_CT_KEY = 1, 2
NFT_CT_MARK = 3
NFTA_BITWISE_SREG, NFTA_BITWISE_DREG, NFTA_BITWISE_LEN = 1, 2, 3
NFTA_BITWISE_MASK, NFTA_BITWISE_XOR = 4, 5
NFTA_LOOKUP_SET, NFTA_LOOKUP_SREG = 1, 2
NFTA_META_DREG, NFTA_META_KEY = 1, 2
NFT_META_TIME_NS = 30
NFTA_BYTEORDER_SREG, NFTA_BYTEORDER_DREG, NFTA_BYTEORDER_OP = 1, 2, 3
NFTA_BYTEORDER_LEN, NFTA_BYTEORDER_SIZE = 4, 5
NFT_BYTEORDER_HTON = 1
NFTA_CMP_SREG, NFTA_CMP_OP, NFTA_CMP_DATA = 1, 2, 3
NFT_CMP_LT, NFT_CMP_GTE = 2, 5
NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS = 1, 2
NFTA_IMMEDIATE_DREG, NFTA_IMMEDIATE_DATA = 1, 2
NFTA_VERDICT_CODE = 1
NF_ACCEPT = 1
NFT_REG_VERDICT, NFT_REG_1 = 0, 1

NFGENMSG = struct.Struct("!BBH")  # family, version, res_id (big endian)
_U32 = struct.Struct("=I")  # set keys of `typeof numgen`/`ct mark`: host order
_BE32 = struct.Struct("!I")
_BE64 = struct.Struct("!Q")
ANSWER_TIMEOUT_S = 2.0


class BatchRefused(Exception):
    """The kernel refused a batch (nothing of it was applied) or did not answer."""


def _string(atype: int, value: str) -> bytes:
    return attr(atype, value.encode() + b"\0")


def _u32(atype: int, value: int) -> bytes:
    return attr(atype, _BE32.pack(value))


class Batch:
    """One nf_tables transaction on table `table` of family inet, built message
    by message; `bytes()` frames it."""

    def __init__(self, table: str, seq: int, ack: bool = True) -> None:
        self.table = table
        self.first_seq = seq
        self._ack = NLM_F_ACK if ack else 0  # without: the kernel answers errors only
        self._seq = seq + 1  # BATCH_BEGIN takes `seq`
        self._messages: list[bytes] = []

    @property
    def acked(self) -> int:
        """How many ACKs the kernel sends when it takes the batch."""
        return len(self._messages) if self._ack else 0

    def _add(self, kind: int, flags: int, payload: bytes) -> None:
        header = NFGENMSG.pack(NFPROTO_INET, 0, 0)
        mtype = NFNL_SUBSYS_NFTABLES << 8 | kind
        flags |= NLM_F_REQUEST | self._ack
        self._messages.append(nl_message(mtype, flags, self._seq, header + payload))
        self._seq += 1

    def _set(self, name: str) -> bytes:
        return _string(NFTA_SET_ELEM_LIST_TABLE, self.table) + _string(NFTA_SET_ELEM_LIST_SET, name)

    def flush_set(self, name: str) -> None:
        """Every element out (DELSETELEM without elements)."""
        self._add(NFT_MSG_DELSETELEM, 0, self._set(name))

    def add_elements(self, name: str, keys: Iterable[bytes], timeout_ms: int | None = None) -> None:
        """Elements with these keys (already encoded for the set's key type)."""
        elements = []
        for key in keys:
            parts = [nest(NFTA_SET_ELEM_KEY, attr(NFTA_DATA_VALUE, key))]
            if timeout_ms is not None:
                parts.append(attr(NFTA_SET_ELEM_TIMEOUT, _BE64.pack(timeout_ms)))
            elements.append(nest(NFTA_LIST_ELEM, *parts))
        if elements:
            body = self._set(name) + nest(NFTA_SET_ELEM_LIST_ELEMENTS, *elements)
            self._add(NFT_MSG_NEWSETELEM, NLM_F_CREATE, body)

    def replace_set(self, name: str, keys: Iterable[bytes]) -> None:
        self.flush_set(name)
        self.add_elements(name, keys)

    def flush_chain(self, chain: str) -> None:
        """Every rule out (DELRULE with a chain and no handle)."""
        body = _string(NFTA_RULE_TABLE, self.table) + _string(NFTA_RULE_CHAIN, chain)
        self._add(NFT_MSG_DELRULE, 0, body)

    def add_rule(self, chain: str, expressions: Sequence[bytes]) -> None:
        """Appended at the chain's end (as `nft add rule`)."""
        body = (
            _string(NFTA_RULE_TABLE, self.table)
            + _string(NFTA_RULE_CHAIN, chain)
            + nest(NFTA_RULE_EXPRESSIONS, *expressions)
        )
        self._add(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, body)

    def __bytes__(self) -> bytes:
        control = NFGENMSG.pack(socket.AF_UNSPEC, 0, NFNL_SUBSYS_NFTABLES)
        begin = nl_message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, self.first_seq, control)
        end = nl_message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, self._seq, control)
        return begin + b"".join(self._messages) + end

    @property
    def next_seq(self) -> int:
        return self._seq + 1


# --- expressions (as `nft --debug=netlink` shows them for the same rule) ------------


def _expr(name: str, *data: bytes) -> bytes:
    return nest(NFTA_LIST_ELEM, _string(NFTA_EXPR_NAME, name), nest(NFTA_EXPR_DATA, *data))


def ct_mark_masked_in(mask: int, set_name: str) -> list[bytes]:
    """`ct mark and <mask> @<set>`."""
    return [
        _expr("ct", _u32(NFTA_CT_DREG, NFT_REG_1), _u32(NFTA_CT_KEY, NFT_CT_MARK)),
        _expr(
            "bitwise",
            _u32(NFTA_BITWISE_SREG, NFT_REG_1),
            _u32(NFTA_BITWISE_DREG, NFT_REG_1),
            _u32(NFTA_BITWISE_LEN, 4),
            nest(NFTA_BITWISE_MASK, attr(NFTA_DATA_VALUE, _U32.pack(mask))),
            nest(NFTA_BITWISE_XOR, attr(NFTA_DATA_VALUE, _U32.pack(0))),
        ),
        _expr("lookup", _string(NFTA_LOOKUP_SET, set_name), _u32(NFTA_LOOKUP_SREG, NFT_REG_1)),
    ]


def meta_time(before: bool, seconds: int) -> list[bytes]:
    """`meta time < <seconds>` (before) or `meta time >= <seconds>`: the
    packet's arrival in CLOCK_REALTIME nanoseconds, compared big endian."""
    return [
        _expr("meta", _u32(NFTA_META_DREG, NFT_REG_1), _u32(NFTA_META_KEY, NFT_META_TIME_NS)),
        _expr(
            "byteorder",
            _u32(NFTA_BYTEORDER_SREG, NFT_REG_1),
            _u32(NFTA_BYTEORDER_DREG, NFT_REG_1),
            _u32(NFTA_BYTEORDER_OP, NFT_BYTEORDER_HTON),
            _u32(NFTA_BYTEORDER_LEN, 8),
            _u32(NFTA_BYTEORDER_SIZE, 8),
        ),
        _expr(
            "cmp",
            _u32(NFTA_CMP_SREG, NFT_REG_1),
            _u32(NFTA_CMP_OP, NFT_CMP_LT if before else NFT_CMP_GTE),
            nest(NFTA_CMP_DATA, attr(NFTA_DATA_VALUE, _BE64.pack(seconds * 1_000_000_000))),
        ),
    ]


def counter_accept() -> list[bytes]:
    """`counter accept`."""
    return [
        _expr(
            "counter",
            attr(NFTA_COUNTER_BYTES, _BE64.pack(0)),
            attr(NFTA_COUNTER_PACKETS, _BE64.pack(0)),
        ),
        _expr(
            "immediate",
            _u32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT),
            nest(NFTA_IMMEDIATE_DATA, nest(NFTA_DATA_VERDICT, _u32(NFTA_VERDICT_CODE, NF_ACCEPT))),
        ),
    ]


def u32_key(value: int) -> bytes:
    return _U32.pack(value)


# --- the writer ---------------------------------------------------------------------


class BatchWriter:
    """A netlink socket of this network namespace that applies batches and
    waits for the kernel's answer to each (blocking, ANSWER_TIMEOUT_S at most:
    it runs in the kernel worker thread)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self._sock.bind((0, 0))
        self._sock.settimeout(ANSWER_TIMEOUT_S)
        self._seq = 1

    def batch(self, table: str) -> Batch:
        """An empty transaction numbered after the last one sent."""
        return Batch(table, self._seq)

    def apply(self, batch: Batch) -> None:
        """Send the batch; raise BatchRefused with the first error the kernel
        gives (the transaction is then aborted as a whole)."""
        self._drain()  # answers of an earlier batch that timed out
        data = bytes(batch)
        self._seq = batch.next_seq & 0x7FFFFFFF or 1
        first, last = batch.first_seq, batch.next_seq - 1
        try:
            self._sock.send(data)
        except OSError as e:
            raise BatchRefused(f"netlink send: {e.strerror or e}") from e
        waiting = batch.acked
        problem: str | None = None
        while waiting > 0:
            try:
                buf = self._sock.recv(65536)
            except TimeoutError as e:
                raise BatchRefused(f"no answer from nf_tables in {ANSWER_TIMEOUT_S} s") from e
            except OSError as e:
                raise BatchRefused(f"netlink receive: {e.strerror or e}") from e
            try:
                for mtype, _flags, seq, off, end in messages(buf):
                    if mtype != NLMSG_ERROR or not first <= seq <= last or end - off < 4:
                        continue
                    waiting -= 1
                    code = -struct.unpack_from("=i", buf, off)[0]
                    if code and problem is None:
                        problem = f"{errno.errorcode.get(code, str(code))}: {os.strerror(code)}"
            except Malformed as e:
                raise BatchRefused(f"malformed answer from nf_tables ({e.reason})") from e
            if problem is not None:
                # an aborted batch answers each message; the rest may not come
                self._drain()
                raise BatchRefused(problem)

    def _drain(self) -> None:
        self._sock.setblocking(False)
        try:
            while True:
                self._sock.recv(65536)
        except OSError:  # BlockingIOError: nothing more
            pass
        finally:
            self._sock.settimeout(ANSWER_TIMEOUT_S)

    def close(self) -> None:
        self._sock.close()
