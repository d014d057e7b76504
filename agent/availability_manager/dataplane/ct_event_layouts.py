"""Conntrack events decoded by their learned layout: one header check and one
value unpack per event instead of a walk over every attribute.

The kernel sends the events of one kind of connection (UDP over IPv4 with a
mark, TCP over IPv6 with its protocol info, ...) with the same attributes in
the same order and of the same lengths; only values differ. After the
generic decoder (conntrack_netlink.decode_conntrack_event, the reference)
has accepted an event, `EventLayouts.learn` walks it once more, exactly as
that decoder does, and records every attribute header the decoder looked at
(offset and raw length/type) and where each value it used sits. A later
event of the same message type, flags and length whose headers at those
offsets are identical, and whose tuples name the same protocol, takes every
branch the generic decoder took and reads its values from the same places:
`decode` builds the same Connection from one `unpack_from` of the headers
and one of the values. Anything else returns None and takes the generic
decoder. Events with a helper or sequence offsets (rare: FTP control
connections) never get a layout. test_ct_event_layouts.py holds both
decoders to the same results, real kernel events included.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator
from typing import Any

from ..connection import (
    IPS_SYNC_MASK,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    Connection,
    Tuple,
    connection_unchecked,
    tuple_unchecked,
)
from . import netlink_attrs as nl
from .bucket import mask_shift

# enum ctattr_type and the nested ones this decoder follows (nfnetlink_conntrack.h);
# the same numbers as conntrack_netlink's, which imports this module
_TUPLE_ORIG, _TUPLE_REPLY, _STATUS, _PROTOINFO, _HELP, _MARK = 1, 2, 3, 4, 5, 8
_SEQ_ADJ = frozenset({15, 16})
_TUPLE_IP, _TUPLE_PROTO = 1, 2
_IP_LEN = {1: 4, 2: 4, 3: 16, 4: 16}  # CTA_IP_V4_SRC/DST, CTA_IP_V6_SRC/DST
_PROTO_NUM = 1
_PROTO_SPORT = frozenset({2, 4, 7})  # SRC_PORT, ICMP_ID, ICMPV6_ID
_PROTO_DPORT = 3
_PROTO_TYPE = frozenset({5, 8})
_PROTO_CODE = frozenset({6, 9})
_PROTOINFO_TCP, _PROTOINFO_TCP_STATE = 1, 1
_NFGEN_SIZE = 4
PORT_PROTOS = frozenset({6, 17, 33, 132, 136})  # as conntrack_netlink.PORT_PROTOS
MAX_LAYOUTS = 64  # per socket; ever new layouts beyond it take the generic path

_HDR = struct.Struct("=HH").unpack_from


class _NoLayout(Exception):
    """The event has something the fast path does not reproduce."""


@dataclasses.dataclass
class _Walk:
    """What the generic decoder looked at, as offsets from the message payload."""

    headers: list[int] = dataclasses.field(default_factory=list)
    # name -> (offset, struct code) of each value the decoder used; last write wins,
    # as in the decoder
    values: dict[str, tuple[int, str]] = dataclasses.field(default_factory=dict)
    proto: int = -1

    def children(self, buf: bytes, base: int, off: int, end: int) -> Iterator[tuple[int, int, int]]:
        """(type, value offset, value end) of each attribute in buf[off:end],
        walked as the decoder walks them; each header is recorded."""
        while off + 4 <= end:
            length, atype = _HDR(buf, off)
            self.headers.append(off - base)
            yield atype & nl.NLA_TYPE_MASK, off + 4, off + length
            off += (length + 3) & ~3


def _walk_tuple(buf: bytes, base: int, off: int, end: int, side: str, walk: _Walk) -> None:
    for atype, o, e in walk.children(buf, base, off, end):
        if atype != _TUPLE_IP and atype != _TUPLE_PROTO:
            continue
        for at, v, vend in walk.children(buf, base, o, e):
            v_off = v - base
            if atype == _TUPLE_IP:
                if at in _IP_LEN:
                    name = "src" if at & 1 else "dst"
                    walk.values[side + name] = (v_off, f"{vend - v}s")
            elif at == _PROTO_NUM:
                walk.values[side + "proto"] = (v_off, "B")
                if side == "o":
                    walk.proto = buf[v]
            elif at in _PROTO_SPORT:
                walk.values[side + "sport"] = (v_off, "H")
            elif at == _PROTO_DPORT:
                walk.values[side + "dport"] = (v_off, "H")
            elif at in _PROTO_TYPE:
                walk.values[side + "type"] = (v_off, "B")
            elif at in _PROTO_CODE:
                walk.values[side + "code"] = (v_off, "B")


def _walk(buf: bytes, off: int, end: int) -> _Walk:
    """decode_conntrack_event's walk over one accepted event, recorded."""
    base = off
    walk = _Walk()
    for atype, v, vend in walk.children(buf, base, off + _NFGEN_SIZE, end):
        if atype == _TUPLE_ORIG:
            _walk_tuple(buf, base, v, vend, "o", walk)
        elif atype == _TUPLE_REPLY:
            _walk_tuple(buf, base, v, vend, "r", walk)
        elif atype == _STATUS:
            walk.values["status"] = (v - base, "I")
        elif atype == _MARK:
            walk.values["mark"] = (v - base, "I")
        elif atype == _HELP or atype in _SEQ_ADJ:
            raise _NoLayout
        elif atype == _PROTOINFO:
            # nl.attrs keeps the last of a repeated type, and so does this
            info = {at: (o, e) for at, o, e in walk.children(buf, base, v, vend)}
            if _PROTOINFO_TCP in info:
                for at, t, _ in walk.children(buf, base, *info[_PROTOINFO_TCP]):
                    if at == _PROTOINFO_TCP_STATE:
                        walk.values["state"] = (t - base, "B")
    return walk


@dataclasses.dataclass(frozen=True)
class _Layout:
    headers: struct.Struct  # every header the decoder read, native order, gaps skipped
    expected: tuple[int, ...]
    values: struct.Struct  # every value it used, network order, gaps skipped
    index: dict[str, int]  # value name -> position in `values`' tuple
    proto: int


def _struct(order: str, items: list[tuple[int, str]]) -> struct.Struct:
    fmt, pos = [order], 0
    for off, code in items:
        fmt.append(f"{off - pos}x{code}" if off > pos else code)
        pos = off + struct.calcsize(order + code)
    return struct.Struct("".join(fmt))


class EventLayouts:
    """Learned layouts of conntrack events, by message type, flags, length
    and address family (nfgenmsg's first byte: a TCP/IPv4 and a UDP/IPv6
    event can be of one length)."""

    def __init__(self, mark_mask: int) -> None:
        self.mark_mask = mark_mask
        self._shift = mask_shift(mark_mask)
        self._layouts: dict[tuple[int, int, int, int], _Layout | None] = {}

    def learn(self, buf: bytes, off: int, end: int, mtype: int, flags: int) -> None:
        """Record the layout of an event the generic decoder accepted."""
        key = (mtype, flags, end - off, buf[off])
        if key in self._layouts or len(self._layouts) >= MAX_LAYOUTS:
            return
        try:
            walk = _walk(buf, off, end)
        except _NoLayout:
            self._layouts[key] = None
            return
        headers = _struct("=", sorted((h, "HH") for h in walk.headers))
        expected = headers.unpack_from(buf, off)
        items = sorted(walk.values.items(), key=lambda kv: kv[1][0])
        values = _struct("!", [loc for _, loc in items])
        index = {name: i for i, (name, _) in enumerate(items)}
        self._layouts[key] = _Layout(headers, expected, values, index, walk.proto)

    def decode(
        self, buf: bytes, off: int, end: int, mtype: int, flags: int
    ) -> tuple[Connection, bool] | None:
        """decode_conntrack_event's result by the learned layout, or None."""
        lay = self._layouts.get((mtype, flags, end - off, buf[off]))
        if lay is None or lay.headers.unpack_from(buf, off) != lay.expected:
            return None
        v = lay.values.unpack_from(buf, off)
        i = lay.index
        proto = lay.proto
        if v[i["oproto"]] != proto or v[i["rproto"]] != proto:
            return None
        orig = _tuple(v, i, "o", proto)
        reply = _tuple(v, i, "r", proto)
        mark = v[i["mark"]] if "mark" in i else 0
        value = (mark & self.mark_mask) >> self._shift
        has_state = "state" in i
        bucket = value - 1 if value else 0
        if bucket > 0xFFFF or len(orig.src) != len(reply.src):
            return None  # the generic decoder refuses it, with its reason
        # Every other value is of a size the constructors accept (the layout
        # fixes addresses at 4 or 16 bytes, ports and fields at 8-32 bits).
        conn = connection_unchecked(
            proto,
            orig,
            reply,
            v[i["state"]] if has_state and proto == PROTO_TCP else 0,
            v[i["status"]] & IPS_SYNC_MASK,
            mark,
            bucket,
        )
        return conn, has_state or proto != PROTO_TCP


def _tuple(v: tuple[Any, ...], i: dict[str, int], side: str, proto: int) -> Tuple:
    """The tuple as conntrack_netlink._decode_tuple builds it from the same values."""
    sport = dport = 0
    if proto in (PROTO_ICMP, PROTO_ICMPV6):
        sport = v[i[side + "sport"]] if side + "sport" in i else 0
        dport = v[i[side + "type"]] << 8 | v[i[side + "code"]]
    elif proto in PORT_PROTOS:
        sport = v[i[side + "sport"]] if side + "sport" in i else 0
        dport = v[i[side + "dport"]] if side + "dport" in i else 0
    return tuple_unchecked(v[i[side + "src"]], v[i[side + "dst"]], sport, dport)
