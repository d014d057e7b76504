"""Netlink message and attribute layout: a bounds-checked walker and a builder.

Hand-written with struct on purpose: pyroute2's generic decoder costs about
20 times more per conntrack event (NOTES.md), too slow for the sync hot path.

Layout (include/uapi/linux/netlink.h):

    nlmsghdr  = len u32 | type u16 | flags u16 | seq u32 | pid u32   (host order)
    nlattr    = len u16 | type u16 (low 14 bits; NESTED and BYTEORDER flags)
    every header and attribute starts on a 4-byte boundary.

The walker never raises anything but `Malformed`, whose `reason` is a short
stable token for a drop counter.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

NLMSG_HDR = struct.Struct("=IHHII")
NLA_HDR = struct.Struct("=HH")
NLA_TYPE_MASK = 0x3FFF
NLA_F_NESTED = 0x8000

NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400

_NLA_UNPACK = NLA_HDR.unpack_from
_U8 = struct.Struct("B")
_BE16 = struct.Struct("!H")
_BE32 = struct.Struct("!I")


class Malformed(Exception):
    """Input from the kernel that fails a length or type check."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def align4(n: int) -> int:
    return (n + 3) & ~3


def messages(buf: bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """(type, flags, seq, payload offset, payload end) for each nlmsg in buf."""
    off, end = 0, len(buf)
    while off < end:
        if end - off < NLMSG_HDR.size:
            raise Malformed("truncated-nlmsghdr")
        length, mtype, flags, seq, _pid = NLMSG_HDR.unpack_from(buf, off)
        if length < NLMSG_HDR.size or off + length > end:
            raise Malformed("bad-nlmsg-length")
        yield mtype, flags, seq, off + NLMSG_HDR.size, off + length
        off += align4(length)


def attrs(buf: bytes, off: int, end: int) -> dict[int, tuple[int, int]]:
    """Attributes in buf[off:end] as {type: (value offset, value length)}.
    A repeated type keeps the last occurrence, as the kernel's nla_parse does.
    (The hot path of event decoding: kept free of helper calls.)"""
    found: dict[int, tuple[int, int]] = {}
    unpack = _NLA_UNPACK
    while off + 4 <= end:
        length, atype = unpack(buf, off)
        if length < 4 or off + length > end:
            raise Malformed("bad-attr-length")
        found[atype & NLA_TYPE_MASK] = (off + 4, length - 4)
        off += (length + 3) & ~3
    return found


def nested(
    buf: bytes, table: dict[int, tuple[int, int]], atype: int, what: str
) -> dict[int, tuple[int, int]]:
    """The attributes inside a required nested attribute."""
    loc = table.get(atype)
    if loc is None:
        raise Malformed(f"missing-{what}")
    return attrs(buf, loc[0], loc[0] + loc[1])


def get_u8(buf: bytes, table: dict[int, tuple[int, int]], atype: int, what: str) -> int:
    return _fixed(buf, table, atype, what, _U8)


def get_be16(buf: bytes, table: dict[int, tuple[int, int]], atype: int, what: str) -> int:
    return _fixed(buf, table, atype, what, _BE16)


def get_be32(buf: bytes, table: dict[int, tuple[int, int]], atype: int, what: str) -> int:
    return _fixed(buf, table, atype, what, _BE32)


def _fixed(
    buf: bytes, table: dict[int, tuple[int, int]], atype: int, what: str, st: struct.Struct
) -> int:
    loc = table.get(atype)
    if loc is None:
        raise Malformed(f"missing-{what}")
    if loc[1] < st.size:
        raise Malformed(f"short-{what}")
    value: int = st.unpack_from(buf, loc[0])[0]
    return value


def get_bytes(
    buf: bytes, table: dict[int, tuple[int, int]], atype: int, size: int, what: str
) -> bytes:
    loc = table.get(atype)
    if loc is None:
        raise Malformed(f"missing-{what}")
    if loc[1] != size:
        raise Malformed(f"bad-{what}-length")
    return buf[loc[0] : loc[0] + size]


# --- building ----------------------------------------------------------------------


def attr(atype: int, value: bytes) -> bytes:
    length = NLA_HDR.size + len(value)
    return NLA_HDR.pack(length, atype) + value + b"\0" * (align4(length) - length)


def nest(atype: int, *children: bytes) -> bytes:
    return attr(atype | NLA_F_NESTED, b"".join(children))


def u8(atype: int, value: int) -> bytes:
    return attr(atype, _U8.pack(value))


def be16(atype: int, value: int) -> bytes:
    return attr(atype, _BE16.pack(value))


def be32(atype: int, value: int) -> bytes:
    return attr(atype, _BE32.pack(value))


def message(mtype: int, flags: int, seq: int, payload: bytes) -> bytes:
    length = NLMSG_HDR.size + len(payload)
    return (
        NLMSG_HDR.pack(length, mtype, flags, seq, 0) + payload + b"\0" * (align4(length) - length)
    )
