"""Conntrack over raw netlink (NETLINK_NETFILTER, ctnetlink): events, dump,
inject, delete, converted to and from availability_manager.connection.

`ConntrackSocket` owns two netlink sockets in the network namespace it was
created in: one subscribed to the NEW, UPDATE and DESTROY event groups (for
asyncio's add_reader via fileno()), and one for requests (dump, inject,
delete), so that replies and events never interleave.

Every message from the kernel is validated by netlink_attrs' walker; a
malformed one is counted in `malformed[reason]` and skipped, never raised.
When the kernel drops events (ENOBUFS on the event socket), read_events()
raises EventsLost: the caller must re-dump the table.

Injection follows what conntrackd does for a failover: both tuples, the TCP
state with the "be liberal" window flag on both directions (the new owner
never saw the window), ASSURED/SEEN_REPLY status, the mark, a timeout of the
state's class; a NAT'd entry also carries the NAT binding (CTA_NAT_SRC /
CTA_NAT_DST) derived from its two tuples; an entry with a conntrack helper
(an FTP control connection) is created with it (CTA_HELP), so the new
owner's helper parses the later PORT/PASV commands itself (the kernel's FTP
helper then picks up TCP sequence tracking mid-stream).

Expectations (wire version 2): the event socket also listens to the
expectation groups; `read_events` returns ("new"|"destroy", Expectation)
for them, and `inject_expectations` creates them (IPCTNL_MSG_EXP_NEW on the
master found by its original tuple), as conntrackd's expectation sync does.
An injected expectation gets no helper of its own (CTA_EXPECT_HELP_NAME is
not sent, as the FTP and TFTP helpers set none): its timeout comes from the
master's helper. What a NAT helper set on it is read and written back: the
expectation function (CTA_EXPECT_FN, "nat-follow-master") and its NAT
direction and saved address and port (CTA_EXPECT_NAT), so a related
connection opened on the new owner is translated as its master.
"""

from __future__ import annotations

import collections
import errno
import functools
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Literal, TypeVar

from ..connection import (
    IPS_ASSURED,
    IPS_SEEN_REPLY,
    IPS_SYNC_MASK,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_CLOSE,
    TCP_CLOSE_WAIT,
    TCP_ESTABLISHED,
    TCP_FIN_WAIT,
    TCP_LAST_ACK,
    TCP_SYN_RECV,
    TCP_SYN_SENT,
    TCP_SYN_SENT2,
    TCP_TIME_WAIT,
    Connection,
    Tuple,
    untranslated_reply,
)
from ..ct_messages import Expectation, helper_of, with_helper
from . import netlink_attrs as nl
from .bucket import bucket_of_mark, mark_of_bucket, mask_shift
from .ct_event_filter import attach_mark_filter
from .ct_event_layouts import EventLayouts

log = logging.getLogger(__name__)

NETLINK_NETFILTER = 12
SO_RCVBUFFORCE = 33
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
NFNL_SUBSYS_CTNETLINK, NFNL_SUBSYS_CTNETLINK_EXP = 1, 2
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 0, 1, 2
IPCTNL_MSG_EXP_NEW, IPCTNL_MSG_EXP_GET, IPCTNL_MSG_EXP_DELETE = 0, 1, 2
NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE, NFNLGRP_CONNTRACK_DESTROY = 1, 2, 3
NFNLGRP_CONNTRACK_EXP_NEW, NFNLGRP_CONNTRACK_EXP_DESTROY = 4, 6
EVENT_GROUPS = (
    (1 << (NFNLGRP_CONNTRACK_NEW - 1))
    | (1 << (NFNLGRP_CONNTRACK_UPDATE - 1))
    | (1 << (NFNLGRP_CONNTRACK_DESTROY - 1))
    | (1 << (NFNLGRP_CONNTRACK_EXP_NEW - 1))
    | (1 << (NFNLGRP_CONNTRACK_EXP_DESTROY - 1))
)

# enum ctattr_type and friends (include/uapi/linux/netfilter/nfnetlink_conntrack.h)
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO = 1, 2, 3, 4
CTA_HELP, CTA_NAT_SRC, CTA_TIMEOUT, CTA_MARK, CTA_NAT_DST = 5, 6, 7, 8, 13
CTA_HELP_NAME = 1
# enum ctattr_expect
CTA_EXPECT_MASTER, CTA_EXPECT_TUPLE, CTA_EXPECT_MASK, CTA_EXPECT_TIMEOUT = 1, 2, 3, 4
CTA_EXPECT_HELP_NAME, CTA_EXPECT_FLAGS, CTA_EXPECT_CLASS = 6, 8, 9
CTA_EXPECT_NAT, CTA_EXPECT_FN = 10, 11
CTA_EXPECT_NAT_DIR, CTA_EXPECT_NAT_TUPLE = 1, 2
EXPECT_TIMEOUT = 300  # seconds; the master's helper policy decides when it has one
NF_CT_EXPECT_USERSPACE = 0x4  # the kernel clears it on creation
CTA_MARK_MASK = 21
CTA_SEQ_ADJ_ORIG, CTA_SEQ_ADJ_REPLY = 15, 16
# enum ctattr_seqadj
CTA_SEQADJ_CORRECTION_POS, CTA_SEQADJ_OFFSET_BEFORE, CTA_SEQADJ_OFFSET_AFTER = 1, 2, 3
_SEQADJ_ATTRS = (CTA_SEQADJ_CORRECTION_POS, CTA_SEQADJ_OFFSET_BEFORE, CTA_SEQADJ_OFFSET_AFTER)
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE = 4, 5, 6
CTA_PROTO_ICMPV6_ID, CTA_PROTO_ICMPV6_TYPE, CTA_PROTO_ICMPV6_CODE = 7, 8, 9
CTA_PROTOINFO_TCP = 1
CTA_PROTOINFO_TCP_STATE, CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, CTA_PROTOINFO_TCP_FLAGS_REPLY = 1, 4, 5
CTA_NAT_V4_MINIP, CTA_NAT_V4_MAXIP, CTA_NAT_PROTO, CTA_NAT_V6_MINIP, CTA_NAT_V6_MAXIP = (
    1,
    2,
    3,
    4,
    5,
)
CTA_PROTONAT_PORT_MIN, CTA_PROTONAT_PORT_MAX = 1, 2
IP_CT_TCP_FLAG_BE_LIBERAL = 0x08
IPS_CONFIRMED = 1 << 3

# Protocols whose tuples carry ports (tcp, udp, dccp, sctp, udplite).
PORT_PROTOS = frozenset({6, 17, 33, 132, 136})

# The kernel's default timeouts (seconds) per class, used for injected entries.
TCP_TIMEOUTS = {
    TCP_SYN_SENT: 120,
    TCP_SYN_RECV: 60,
    TCP_ESTABLISHED: 432000,
    TCP_FIN_WAIT: 120,
    TCP_CLOSE_WAIT: 60,
    TCP_LAST_ACK: 30,
    TCP_TIME_WAIT: 120,
    TCP_CLOSE: 10,
    TCP_SYN_SENT2: 120,
}
UDP_TIMEOUT, UDP_STREAM_TIMEOUT, ICMP_TIMEOUT, GENERIC_TIMEOUT = 30, 120, 30, 600

# "amend": an UPDATE of a TCP entry without its TCP state (the kernel sends
# the protocol state only in events that changed it; this one reports another
# change, e.g. a NAT helper's sequence offsets): the state stays as it was.
EventKind = Literal["new", "update", "amend", "destroy"]
Event = tuple[EventKind, Connection | Expectation]
DumpItem = TypeVar("DumpItem", Connection, Expectation)

_NFGEN = struct.Struct("!BBH")
_ERRNO = struct.Struct("=i")


class EventsLost(Exception):
    """The kernel dropped conntrack events (ENOBUFS): re-dump the table."""


class ConntrackError(RuntimeError):
    """A request the kernel refused, or a socket that cannot be set up."""


def default_timeout(conn: Connection) -> int:
    """The timeout an injected entry gets: its state class's kernel default."""
    if conn.proto == PROTO_TCP:
        return TCP_TIMEOUTS.get(conn.state, TCP_TIMEOUTS[TCP_ESTABLISHED])
    if conn.proto == PROTO_UDP:
        return UDP_STREAM_TIMEOUT if conn.status & IPS_ASSURED else UDP_TIMEOUT
    if conn.proto in (PROTO_ICMP, PROTO_ICMPV6):
        return ICMP_TIMEOUT
    return GENERIC_TIMEOUT


# --- decoding --------------------------------------------------------------------------


_HDR = struct.Struct("=HH").unpack_from
_BE16 = struct.Struct("!H").unpack_from
_BE32 = struct.Struct("!I").unpack_from
_PROTO_U16 = frozenset(
    {CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT, CTA_PROTO_ICMP_ID, CTA_PROTO_ICMPV6_ID}
)
_PROTO_SPORT = frozenset({CTA_PROTO_SRC_PORT, CTA_PROTO_ICMP_ID, CTA_PROTO_ICMPV6_ID})
_PROTO_TYPE = frozenset({CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMPV6_TYPE})
_PROTO_CODE = frozenset({CTA_PROTO_ICMP_CODE, CTA_PROTO_ICMPV6_CODE})
_IP_LEN = {CTA_IP_V4_SRC: 4, CTA_IP_V4_DST: 4, CTA_IP_V6_SRC: 16, CTA_IP_V6_DST: 16}


def _decode_tuple(buf: bytes, off: int, end: int) -> tuple[int, Tuple]:
    """CTA_TUPLE_* contents: {CTA_TUPLE_IP {src, dst}, CTA_TUPLE_PROTO {...}}.
    Flat loops over the attributes, no helper calls: the event hot path."""
    src = dst = b""
    proto = icmp_type = icmp_code = -1
    sport = dport = 0
    while off + 4 <= end:
        length, atype = _HDR(buf, off)
        if length < 4 or off + length > end:
            raise nl.Malformed("bad-attr-length")
        atype &= nl.NLA_TYPE_MASK
        o, e = off + 4, off + length
        off += (length + 3) & ~3
        if atype != CTA_TUPLE_IP and atype != CTA_TUPLE_PROTO:
            continue  # CTA_TUPLE_ZONE and future attributes
        while o + 4 <= e:
            ln, at = _HDR(buf, o)
            if ln < 4 or o + ln > e:
                raise nl.Malformed("bad-attr-length")
            at &= nl.NLA_TYPE_MASK
            v, vlen = o + 4, ln - 4
            o += (ln + 3) & ~3
            if atype == CTA_TUPLE_IP:
                want = _IP_LEN.get(at)
                if want is None:
                    continue
                if vlen != want:
                    raise nl.Malformed("bad-ip-src-length" if at & 1 else "bad-ip-dst-length")
                if at & 1:  # V4_SRC = 1, V6_SRC = 3
                    src = buf[v : v + vlen]
                else:
                    dst = buf[v : v + vlen]
            elif at == CTA_PROTO_NUM:
                if vlen < 1:
                    raise nl.Malformed("short-proto-num")
                proto = buf[v]
            elif at in _PROTO_U16:
                if vlen < 2:
                    raise nl.Malformed("short-port")
                if at in _PROTO_SPORT:
                    sport = _BE16(buf, v)[0]
                else:
                    dport = _BE16(buf, v)[0]
            elif at in _PROTO_TYPE or at in _PROTO_CODE:
                if vlen < 1:
                    raise nl.Malformed("short-icmp-field")
                if at in _PROTO_TYPE:
                    icmp_type = buf[v]
                else:
                    icmp_code = buf[v]
    if not src:
        raise nl.Malformed("missing-ip-src")
    if len(dst) != len(src):
        raise nl.Malformed("missing-ip-dst" if not dst else "tuple-family-mismatch")
    if proto < 0:
        raise nl.Malformed("missing-proto-num")
    if proto in (PROTO_ICMP, PROTO_ICMPV6):
        if icmp_type < 0 or icmp_code < 0:
            raise nl.Malformed("missing-icmp-type")
        dport = icmp_type << 8 | icmp_code
    elif proto not in PORT_PROTOS:
        sport = dport = 0
    return proto, Tuple(src, dst, sport, dport)


def decode_conntrack(buf: bytes, off: int, end: int, mark_mask: int) -> Connection:
    """One ctnetlink message payload (nfgenmsg + attributes) as a Connection."""
    return decode_conntrack_event(buf, off, end, mark_mask)[0]


def decode_conntrack_event(
    buf: bytes, off: int, end: int, mark_mask: int
) -> tuple[Connection, bool]:
    """decode_conntrack, and whether the message carried the TCP state (a TCP
    entry's protocol state is 0 in the Connection when it did not)."""
    if end - off < _NFGEN.size:
        raise nl.Malformed("truncated-nfgenmsg")
    off += _NFGEN.size
    orig = reply = None
    has_state = False
    proto = rproto = status = -1
    mark = state = 0
    helper = ""
    seqadj: dict[int, tuple[int, int, int]] = {}
    while off + 4 <= end:
        length, atype = _HDR(buf, off)
        if length < 4 or off + length > end:
            raise nl.Malformed("bad-attr-length")
        atype &= nl.NLA_TYPE_MASK
        v, vend = off + 4, off + length
        off += (length + 3) & ~3
        if atype == CTA_TUPLE_ORIG:
            proto, orig = _decode_tuple(buf, v, vend)
        elif atype == CTA_TUPLE_REPLY:
            rproto, reply = _decode_tuple(buf, v, vend)
        elif atype == CTA_STATUS:
            if vend - v < 4:
                raise nl.Malformed("short-status")
            status = _BE32(buf, v)[0]
        elif atype == CTA_MARK:
            if vend - v < 4:
                raise nl.Malformed("short-mark")
            mark = _BE32(buf, v)[0]
        elif atype == CTA_HELP:
            helper = _helper_name(buf, v, vend)
        elif atype in (CTA_SEQ_ADJ_ORIG, CTA_SEQ_ADJ_REPLY):
            seqadj[atype] = _seqadj(buf, v, vend)
        elif atype == CTA_PROTOINFO:
            info = nl.attrs(buf, v, vend)
            if CTA_PROTOINFO_TCP in info:
                tcp = nl.nested(buf, info, CTA_PROTOINFO_TCP, "protoinfo-tcp")
                if CTA_PROTOINFO_TCP_STATE in tcp:
                    state = nl.get_u8(buf, tcp, CTA_PROTOINFO_TCP_STATE, "tcp-state")
                    has_state = True
    if orig is None:
        raise nl.Malformed("missing-tuple-orig")
    if reply is None:
        raise nl.Malformed("missing-tuple-reply")
    if rproto != proto:
        raise nl.Malformed("tuple-proto-mismatch")
    if len(orig.src) != len(reply.src):
        raise nl.Malformed("tuple-family-mismatch")
    if status < 0:  # the kernel always sends it
        raise nl.Malformed("missing-status")
    value = (mark & mark_mask) >> _shift(mark_mask)
    conn = Connection(
        proto=proto,
        orig=orig,
        reply=reply,
        state=state if proto == PROTO_TCP else 0,
        status=status & IPS_SYNC_MASK,
        mark=mark,
        bucket=value - 1 if value else 0,
        # both directions, a missing one as zeros (the kernel sends both)
        seqadj=(
            seqadj.get(CTA_SEQ_ADJ_ORIG, (0, 0, 0)) + seqadj.get(CTA_SEQ_ADJ_REPLY, (0, 0, 0))
            if seqadj
            else ()
        ),
    )
    return (with_helper(conn, helper) if helper else conn), has_state or proto != PROTO_TCP


def _seqadj(buf: bytes, v: int, vend: int) -> tuple[int, int, int]:
    """CTA_SEQ_ADJ_* { correction position, offset before, offset after } (be32 each)."""
    a = nl.attrs(buf, v, vend)
    pos, before, after = (nl.get_be32(buf, a, t, "seqadj") for t in _SEQADJ_ATTRS)
    return pos, before, after


def _c_string(buf: bytes, v: int, vend: int, what: str) -> str:
    """A NUL-terminated (or unterminated) ASCII string attribute value."""
    raw = buf[v:vend].split(b"\0", 1)[0]
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise nl.Malformed(f"bad-{what}") from None


def _helper_name(buf: bytes, v: int, vend: int) -> str:
    """CTA_HELP { CTA_HELP_NAME "ftp", CTA_HELP_INFO ... }: the helper's name."""
    help_attrs = nl.attrs(buf, v, vend)
    loc = help_attrs.get(CTA_HELP_NAME)
    if loc is None:
        raise nl.Malformed("missing-helper-name")
    return _c_string(buf, loc[0], loc[0] + loc[1], "helper-name")


def decode_expectation(buf: bytes, off: int, end: int) -> Expectation:
    """One ctnetlink_exp message payload (nfgenmsg + CTA_EXPECT_*) as an
    Expectation. Its bucket is left 0: only the master's entry knows it
    (ConntrackSync fills it in from its mirror)."""
    if end - off < _NFGEN.size:
        raise nl.Malformed("truncated-nfgenmsg")
    a = nl.attrs(buf, off + _NFGEN.size, end)
    parts = {}
    for atype, what in (
        (CTA_EXPECT_MASTER, "expect-master"),
        (CTA_EXPECT_TUPLE, "expect-tuple"),
        (CTA_EXPECT_MASK, "expect-mask"),
    ):
        loc = a.get(atype)
        if loc is None:
            raise nl.Malformed(f"missing-{what}")
        parts[atype] = _decode_tuple(buf, loc[0], loc[0] + loc[1])
    mproto, master = parts[CTA_EXPECT_MASTER]
    proto, expected = parts[CTA_EXPECT_TUPLE]
    _mask_proto, mask = parts[CTA_EXPECT_MASK]
    if len(master.src) != len(expected.src) or len(mask.src) != len(expected.src):
        raise nl.Malformed("expect-family-mismatch")
    helper = ""
    loc = a.get(CTA_EXPECT_HELP_NAME)
    if loc is not None:
        helper = _c_string(buf, loc[0], loc[0] + loc[1], "helper-name")
    flags = nl.get_be32(buf, a, CTA_EXPECT_FLAGS, "expect-flags") if CTA_EXPECT_FLAGS in a else 0
    klass = nl.get_be32(buf, a, CTA_EXPECT_CLASS, "expect-class") if CTA_EXPECT_CLASS in a else 0
    if klass > 0xFF:
        raise nl.Malformed("bad-expect-class")
    fn = ""
    loc = a.get(CTA_EXPECT_FN)
    if loc is not None:
        fn = _c_string(buf, loc[0], loc[0] + loc[1], "expect-fn")
    nat_dir, nat = None, None
    if CTA_EXPECT_NAT in a:
        nat_attrs = nl.nested(buf, a, CTA_EXPECT_NAT, "expect-nat")
        nat_dir = nl.get_be32(buf, nat_attrs, CTA_EXPECT_NAT_DIR, "expect-nat-dir")
        loc = nat_attrs.get(CTA_EXPECT_NAT_TUPLE)
        if loc is None:
            raise nl.Malformed("missing-expect-nat-tuple")
        _nat_proto, nat = _decode_tuple(buf, loc[0], loc[0] + loc[1])
        if nat_dir > 1 or len(nat.src) != len(expected.src):
            raise nl.Malformed("bad-expect-nat")
    return Expectation(
        master_proto=mproto,
        master=master,
        proto=proto,
        expected=expected,
        mask_src=mask.src,
        mask_sport=mask.sport,
        helper=helper,
        expect_class=klass,
        flags=flags & ~NF_CT_EXPECT_USERSPACE,
        nat_fn=fn,
        nat_dir=nat_dir,
        # the kernel's saved address and port are the NAT tuple's source side
        nat_addr=nat.src if nat is not None else b"",
        nat_port=nat.sport if nat is not None else 0,
    )


@functools.lru_cache(maxsize=8)
def _shift(mask: int) -> int:
    return mask_shift(mask)


# --- encoding --------------------------------------------------------------------------


def _encode_tuple(atype: int, proto: int, t: Tuple) -> bytes:
    v4 = len(t.src) == 4
    ip = nl.nest(
        CTA_TUPLE_IP,
        nl.attr(CTA_IP_V4_SRC if v4 else CTA_IP_V6_SRC, t.src),
        nl.attr(CTA_IP_V4_DST if v4 else CTA_IP_V6_DST, t.dst),
    )
    parts = [nl.u8(CTA_PROTO_NUM, proto)]
    if proto in PORT_PROTOS:
        parts += [nl.be16(CTA_PROTO_SRC_PORT, t.sport), nl.be16(CTA_PROTO_DST_PORT, t.dport)]
    elif proto in (PROTO_ICMP, PROTO_ICMPV6):
        icmp4 = proto == PROTO_ICMP
        parts += [
            nl.be16(CTA_PROTO_ICMP_ID if icmp4 else CTA_PROTO_ICMPV6_ID, t.sport),
            nl.u8(CTA_PROTO_ICMP_TYPE if icmp4 else CTA_PROTO_ICMPV6_TYPE, t.dport >> 8),
            nl.u8(CTA_PROTO_ICMP_CODE if icmp4 else CTA_PROTO_ICMPV6_CODE, t.dport & 0xFF),
        ]
    return nl.nest(atype, ip, nl.nest(CTA_TUPLE_PROTO, *parts))


def _nat_attr(atype: int, proto: int, addr: bytes, port: int) -> bytes:
    v4 = len(addr) == 4
    parts = [
        nl.attr(CTA_NAT_V4_MINIP if v4 else CTA_NAT_V6_MINIP, addr),
        nl.attr(CTA_NAT_V4_MAXIP if v4 else CTA_NAT_V6_MAXIP, addr),
    ]
    if proto in PORT_PROTOS:  # exact port: the kernel must not pick another
        parts.append(
            nl.nest(
                CTA_NAT_PROTO,
                nl.be16(CTA_PROTONAT_PORT_MIN, port),
                nl.be16(CTA_PROTONAT_PORT_MAX, port),
            )
        )
    return nl.nest(atype, *parts)


def nat_attributes(conn: Connection) -> bytes:
    """CTA_NAT_SRC / CTA_NAT_DST that make the kernel rebuild the binding
    from the two tuples: the source the reply is sent to (SNAT) and the
    destination the reply comes from (DNAT)."""
    o, r = conn.orig, conn.reply
    out = b""
    if r.dst != o.src or r.dport != o.sport:  # source was translated
        out += _nat_attr(CTA_NAT_SRC, conn.proto, r.dst, r.dport)
    if r.src != o.dst or r.sport != o.dport:  # destination was translated
        out += _nat_attr(CTA_NAT_DST, conn.proto, r.src, r.sport)
    return out


def encode_inject(conn: Connection, timeout: int | None = None) -> bytes:
    """Attributes of an IPCTNL_MSG_CT_NEW that creates (or updates) `conn`."""
    body = _encode_tuple(CTA_TUPLE_ORIG, conn.proto, conn.orig)
    if conn.nat:
        # ctnetlink cannot take a translated reply tuple as such: NAT bits
        # and the binding only appear when nf_nat_setup_info() changes the
        # reply itself. So, as conntrackd does, send the untranslated reply
        # (inverse of the original) and the NAT ranges that translate it.
        body += _encode_tuple(
            CTA_TUPLE_REPLY, conn.proto, untranslated_reply(conn.proto, conn.orig)
        )
        body += nat_attributes(conn)
    else:
        body += _encode_tuple(CTA_TUPLE_REPLY, conn.proto, conn.reply)
    # NAT bits are set by the kernel from CTA_NAT_*; it refuses to take them
    # here. CONFIRMED must be given: ctnetlink marks a new entry confirmed
    # before it applies the status, and refuses (EBUSY) to clear that bit.
    status = conn.status & (IPS_ASSURED | IPS_SEEN_REPLY) | IPS_CONFIRMED
    body += nl.be32(CTA_STATUS, status)
    body += nl.be32(CTA_TIMEOUT, default_timeout(conn) if timeout is None else timeout)
    body += nl.be32(CTA_MARK, conn.mark)
    if conn.seqadj:
        for atype, values in (
            (CTA_SEQ_ADJ_ORIG, conn.seqadj[:3]),
            (CTA_SEQ_ADJ_REPLY, conn.seqadj[3:]),
        ):
            body += nl.nest(
                atype, *(nl.be32(a, v) for a, v in zip(_SEQADJ_ATTRS, values, strict=True))
            )
    helper = helper_of(conn)
    if helper:
        body += nl.nest(CTA_HELP, nl.attr(CTA_HELP_NAME, helper.encode("ascii") + b"\0"))
    if conn.proto == PROTO_TCP:
        liberal = struct.pack("BB", IP_CT_TCP_FLAG_BE_LIBERAL, IP_CT_TCP_FLAG_BE_LIBERAL)
        body += nl.nest(
            CTA_PROTOINFO,
            nl.nest(
                CTA_PROTOINFO_TCP,
                nl.u8(CTA_PROTOINFO_TCP_STATE, conn.state),
                nl.attr(CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, liberal),
                nl.attr(CTA_PROTOINFO_TCP_FLAGS_REPLY, liberal),
            ),
        )
    return body


def encode_expectation(exp: Expectation, timeout: int = EXPECT_TIMEOUT) -> bytes:
    """Attributes of an IPCTNL_MSG_EXP_NEW that creates `exp` on its master
    (which must exist, with its helper, or the kernel refuses)."""
    e = exp.expected
    full = b"\xff" * len(e.src)
    mask_proto = [nl.u8(CTA_PROTO_NUM, exp.proto)]
    if exp.proto in PORT_PROTOS:
        mask_proto += [
            nl.be16(CTA_PROTO_SRC_PORT, exp.mask_sport),
            nl.be16(CTA_PROTO_DST_PORT, 0xFFFF),
        ]
    v4 = len(e.src) == 4
    mask = nl.nest(
        CTA_EXPECT_MASK,
        nl.nest(
            CTA_TUPLE_IP,
            nl.attr(CTA_IP_V4_SRC if v4 else CTA_IP_V6_SRC, exp.mask_src),
            nl.attr(CTA_IP_V4_DST if v4 else CTA_IP_V6_DST, full),
        ),
        nl.nest(CTA_TUPLE_PROTO, *mask_proto),
    )
    body = (
        _encode_tuple(CTA_EXPECT_MASTER, exp.master_proto, exp.master)
        + _encode_tuple(CTA_EXPECT_TUPLE, exp.proto, e)
        + mask
        + nl.be32(CTA_EXPECT_TIMEOUT, timeout)
        + nl.be32(CTA_EXPECT_FLAGS, exp.flags)
        + nl.be32(CTA_EXPECT_CLASS, exp.expect_class)
    )
    if exp.nat_dir is not None:
        # As the kernel dumps it: the saved address and port as the source of
        # a tuple of the master's protocol, its destination zero.
        saved = Tuple(exp.nat_addr, bytes(len(exp.nat_addr)), exp.nat_port, 0)
        body += nl.nest(
            CTA_EXPECT_NAT,
            nl.be32(CTA_EXPECT_NAT_DIR, exp.nat_dir),
            _encode_tuple(CTA_EXPECT_NAT_TUPLE, exp.master_proto, saved),
        )
    if exp.nat_fn:
        body += nl.attr(CTA_EXPECT_FN, exp.nat_fn.encode("ascii") + b"\0")
    return body


def _family(conn: Connection | Expectation) -> int:
    return _family_of(conn.orig if isinstance(conn, Connection) else conn.master)


def _family_of(t: Tuple) -> int:
    return socket.AF_INET if len(t.src) == 4 else socket.AF_INET6


def _event_kind(mtype: int, flags: int) -> EventKind | None:
    if mtype >> 8 not in (NFNL_SUBSYS_CTNETLINK, NFNL_SUBSYS_CTNETLINK_EXP):
        return None
    msg = mtype & 0xFF  # the NEW / DELETE numbers are the same in both subsystems
    if msg == IPCTNL_MSG_CT_NEW:
        return "new" if flags & (nl.NLM_F_CREATE | nl.NLM_F_EXCL) else "update"
    if msg == IPCTNL_MSG_CT_DELETE:
        return "destroy"
    return None


def parse_events(
    data: bytes,
    mark_mask: int,
    malformed: collections.Counter[str],
    layouts: EventLayouts | None = None,
) -> list[Event]:
    """The events in one datagram from the event socket: connections, and
    expectations ("new" / "destroy" only). A malformed message is counted
    in `malformed` and skipped; a malformed datagram header ends the
    datagram (its length cannot be trusted to find the next message).
    With `layouts` (of the same mark mask), events of a learned layout are
    decoded by it (ct_event_layouts.py) and the others teach it theirs."""
    out: list[Event] = []
    try:
        for mtype, flags, _seq, off, end in nl.messages(data):
            kind = _event_kind(mtype, flags)
            if kind is None:
                if mtype not in (nl.NLMSG_NOOP, nl.NLMSG_DONE):
                    malformed["unexpected-type"] += 1
                continue
            try:
                if mtype >> 8 == NFNL_SUBSYS_CTNETLINK_EXP:
                    if kind != "update":  # an expectation changes only by going away
                        out.append((kind, decode_expectation(data, off, end)))
                else:
                    fast = None if layouts is None else layouts.decode(data, off, end, mtype, flags)
                    if fast is None:
                        conn, has_state = decode_conntrack_event(data, off, end, mark_mask)
                        if layouts is not None:
                            layouts.learn(data, off, end, mtype, flags)
                    else:
                        conn, has_state = fast
                    out.append(("amend" if kind == "update" and not has_state else kind, conn))
            except nl.Malformed as e:
                malformed[e.reason] += 1
            except ValueError:  # a value Connection/Tuple refuses
                malformed["bad-value"] += 1
    except nl.Malformed as e:
        malformed[e.reason] += 1
    return out


# --- the socket ------------------------------------------------------------------------


class ConntrackSocket:
    """Conntrack events and requests for the current network namespace.

    events=False opens only the request socket (a tool that dumps or injects).
    only_marked=True filters events in the kernel: entries without bucket bits
    in their mark (`mark & mark_mask == 0`) are never delivered (ct_event_filter).
    """

    def __init__(
        self,
        mark_mask: int = 0xFFFF,
        events: bool = True,
        rcvbuf: int = 8 << 20,
        *,
        only_marked: bool = False,
    ) -> None:
        bucket_of_mark(0, mark_mask)  # validates the mask
        self.mark_mask = mark_mask
        self._layouts = EventLayouts(mark_mask)
        self.malformed: collections.Counter[str] = collections.Counter()
        self.events_lost = 0
        self.request_errors: collections.Counter[str] = collections.Counter()
        self.refused: list[tuple[Connection, str]] = []
        self._seq = 0
        self._events: socket.socket | None = None
        self._lookup: socket.socket | None = None
        self._req = self._open(0, 4 << 20)
        self._req.settimeout(10.0)
        if events:
            self._events = self._open(EVENT_GROUPS, rcvbuf)
            self._events.setblocking(False)
            if only_marked:  # entries without bucket bits never reach Python
                try:
                    attach_mark_filter(self._events, mark_mask)
                except OSError as e:
                    self.close()
                    raise ConntrackError(f"cannot filter conntrack events by mark: {e}") from e
            # Reads of single entries for the event path: the request socket
            # belongs to the thread that injects and dumps.
            self._lookup = self._open(0, 1 << 20)
            self._lookup.settimeout(2.0)

    @staticmethod
    def _open(groups: int, rcvbuf: int) -> socket.socket:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except PermissionError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.bind((0, groups))
        except OSError as e:
            s.close()
            raise ConntrackError(f"cannot open ctnetlink socket: {e}") from e
        return s

    def fileno(self) -> int:
        if self._events is None:
            raise ConntrackError("socket opened without events")
        return self._events.fileno()

    def close(self) -> None:
        for s in (self._events, self._lookup, self._req):
            if s is not None:
                s.close()

    def __enter__(self) -> ConntrackSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- events ---------------------------------------------------------------------

    def read_events(self, max_datagrams: int = 256) -> list[Event]:
        """Events waiting on the socket, without blocking. Raises EventsLost
        when the kernel overran the receive buffer (events were dropped)."""
        if self._events is None:
            raise ConntrackError("socket opened without events")
        out: list[Event] = []
        for _ in range(max_datagrams):
            try:
                data = self._events.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.events_lost += 1
                    self._discard_queued()
                    raise EventsLost("conntrack events lost (ENOBUFS): re-dump") from e
                raise
            self._parse_events(data, out)
        return out

    def _discard_queued(self, limit: int = 1 << 16) -> None:
        """Drop what is still queued after an overrun: the caller re-dumps the
        table, which supersedes it, and a full queue would lose newer events."""
        assert self._events is not None
        for _ in range(limit):
            try:
                self._events.recv(1 << 16)
            except OSError:  # BlockingIOError when empty
                return

    def _parse_events(self, data: bytes, out: list[Event]) -> None:
        for event in parse_events(data, self.mark_mask, self.malformed, self._layouts):
            out.append(event)
            kind, item = event
            if kind == "new" and isinstance(item, Expectation) and item.nat_dir is not None:
                # A NAT helper (nf_nat_ftp) registers this expectation while it
                # rewrites the master's stream, and the TCP sequence offsets
                # that leaves in the master come with no event of their own:
                # read the master back, after the rewrite, as an update.
                master = self.lookup(item.master_proto, item.master)
                if master is not None:
                    out.append(("update", master))

    def lookup(self, proto: int, orig: Tuple) -> Connection | None:
        """The entry with this original tuple as the kernel has it now (None
        if it is gone or cannot be read; counted in `request_errors`)."""
        sock = self._lookup
        if sock is None:
            raise ConntrackError("socket opened without events")
        seq, req = self._request(
            IPCTNL_MSG_CT_GET, 0, _family_of(orig), _encode_tuple(CTA_TUPLE_ORIG, proto, orig)
        )
        try:
            sock.send(req)
            while True:
                data = sock.recv(1 << 16)
                for mtype, _flags, mseq, off, end in nl.messages(data):
                    if mseq != seq:
                        continue  # a late answer to an earlier, timed-out lookup
                    if mtype == nl.NLMSG_ERROR:
                        code = self._error_code(data, off, end)
                        self.request_errors[f"lookup-{os.strerror(-code)}"] += 1
                        return None
                    return decode_conntrack(data, off, end, self.mark_mask)
        except OSError as e:  # includes the timeout
            self.request_errors[f"lookup-{type(e).__name__}"] += 1
        except (nl.Malformed, ValueError):
            self.request_errors["lookup-malformed"] += 1
        return None

    def _count(self, reason: str) -> None:
        self.malformed[reason] += 1
        log.debug("conntrack netlink message skipped: %s", reason)

    # --- requests -------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def _request(
        self,
        msg: int,
        flags: int,
        family: int,
        body: bytes,
        subsys: int = NFNL_SUBSYS_CTNETLINK,
    ) -> tuple[int, bytes]:
        seq = self._next_seq()
        payload = _NFGEN.pack(family, 0, 0) + body
        return seq, nl.message((subsys << 8) | msg, nl.NLM_F_REQUEST | flags, seq, payload)

    def dump(self) -> list[Connection]:
        """Every entry of the table (IPv4 and IPv6)."""
        mask = self.mark_mask
        return self._dump(
            IPCTNL_MSG_CT_GET,
            NFNL_SUBSYS_CTNETLINK,
            lambda data, off, end: decode_conntrack(data, off, end, mask),
        )

    def iter_dump(self) -> Iterator[Connection]:
        """`dump`, one entry at a time as the kernel's answers arrive: a reader
        of a large table (clusterctl kernel) holds one reply datagram, not the
        table. Consume it to the end (or close it) before the next request."""
        mask = self.mark_mask
        return self._iter_dump(
            IPCTNL_MSG_CT_GET,
            NFNL_SUBSYS_CTNETLINK,
            lambda data, off, end: decode_conntrack(data, off, end, mask),
        )

    def _dump(
        self, msg: int, subsys: int, decode: Callable[[bytes, int, int], DumpItem]
    ) -> list[DumpItem]:
        """A dump request of `subsys`, each answer decoded (malformed ones counted)."""
        return list(self._iter_dump(msg, subsys, decode))

    def _iter_dump(
        self, msg: int, subsys: int, decode: Callable[[bytes, int, int], DumpItem]
    ) -> Iterator[DumpItem]:
        seq, req = self._request(msg, nl.NLM_F_DUMP, socket.AF_UNSPEC, b"", subsys)
        self._send(req)
        while True:
            data = self._recv()
            try:
                for mtype, _flags, mseq, off, end in nl.messages(data):
                    if mseq != seq:
                        self._count("stale-reply")
                        continue
                    if mtype == nl.NLMSG_DONE:
                        return
                    if mtype == nl.NLMSG_ERROR:
                        code = self._error_code(data, off, end)
                        if code:
                            raise ConntrackError(f"dump failed: {os.strerror(-code)}")
                        continue
                    try:
                        item = decode(data, off, end)
                    except nl.Malformed as e:
                        self._count(e.reason)
                    except ValueError:
                        self._count("bad-value")
                    else:
                        yield item
            except nl.Malformed as e:
                self._count(e.reason)

    def _send(self, data: bytes) -> None:
        try:
            self._req.send(data)
        except OSError as e:
            raise ConntrackError(f"ctnetlink request failed: {e}") from e

    def _recv(self) -> bytes:
        """One reply datagram; a late reply to an earlier, timed-out request
        is recognised later by its sequence number and skipped."""
        try:
            return self._req.recv(1 << 20)
        except OSError as e:  # includes the 10 s timeout
            raise ConntrackError(f"ctnetlink reply failed: {e}") from e

    @staticmethod
    def _error_code(data: bytes, off: int, end: int) -> int:
        if end - off < _ERRNO.size:
            raise nl.Malformed("truncated-error")
        code: int = _ERRNO.unpack_from(data, off)[0]
        return code

    def _transact(
        self, requests: list[tuple[int, bytes]], ok_errnos: tuple[int, ...] = ()
    ) -> dict[int, int]:
        """Send requests with NLM_F_ACK in batches; return {seq: -errno} for failures."""
        failures: dict[int, int] = {}
        batch = 64
        for i in range(0, len(requests), batch):
            chunk = requests[i : i + batch]
            pending = {seq for seq, _ in chunk}
            self._send(b"".join(m for _, m in chunk))
            while pending:
                data = self._recv()
                try:
                    for mtype, _flags, mseq, off, end in nl.messages(data):
                        if mtype != nl.NLMSG_ERROR or mseq not in pending:
                            self._count("stale-reply")
                            continue
                        pending.discard(mseq)
                        code = self._error_code(data, off, end)
                        if code and -code not in ok_errnos:
                            failures[mseq] = code
                except nl.Malformed as e:
                    self._count(e.reason)
        return failures

    def inject(self, conns: Iterable[Connection]) -> int:
        """Create (or update, when present) each entry; returns how many the
        kernel took. Refusals are logged, counted in `request_errors` and kept
        with their reason in `refused` (for the last call only)."""
        reqs, by_seq = [], {}
        for c in conns:
            seq, msg = self._request(
                IPCTNL_MSG_CT_NEW, nl.NLM_F_CREATE | nl.NLM_F_ACK, _family(c), encode_inject(c)
            )
            reqs.append((seq, msg))
            by_seq[seq] = c
        failed = self._transact(reqs)
        self._record_refused("inject", by_seq, failed)
        return len(reqs) - len(failed)

    def inject_expectations(self, exps: Iterable[Expectation]) -> int:
        """Create each expectation on its master; returns how many the kernel
        took (an existing one counts as taken). Refusals are counted in
        `request_errors` (ENOENT: the master is not here)."""
        reqs = []
        for exp in exps:
            reqs.append(
                self._request(
                    IPCTNL_MSG_EXP_NEW,
                    nl.NLM_F_CREATE | nl.NLM_F_ACK,
                    _family(exp),
                    encode_expectation(exp),
                    NFNL_SUBSYS_CTNETLINK_EXP,
                )
            )
        failed = self._transact(reqs, ok_errnos=(errno.EEXIST,))
        for code in failed.values():
            self.request_errors[f"inject expectation: {os.strerror(-code)}"] += 1
            log.warning("expectation inject refused: %s", os.strerror(-code))
        return len(reqs) - len(failed)

    def dump_expectations(self) -> list[Expectation]:
        """Every expectation of the table."""
        return self._dump(IPCTNL_MSG_EXP_GET, NFNL_SUBSYS_CTNETLINK_EXP, decode_expectation)

    def delete(self, conns: Iterable[Connection]) -> int:
        """Delete each entry by its original tuple; returns how many are gone
        (an entry that was already absent counts as gone)."""
        reqs, by_seq = [], {}
        for c in conns:
            body = _encode_tuple(CTA_TUPLE_ORIG, c.proto, c.orig)
            seq, msg = self._request(IPCTNL_MSG_CT_DELETE, nl.NLM_F_ACK, _family(c), body)
            reqs.append((seq, msg))
            by_seq[seq] = c
        failed = self._transact(reqs, ok_errnos=(errno.ENOENT,))
        self._record_refused("delete", by_seq, failed)
        return len(reqs) - len(failed)

    def _record_refused(
        self, what: str, by_seq: dict[int, Connection], failed: dict[int, int]
    ) -> None:
        self.refused = [(by_seq[s], os.strerror(-code)) for s, code in failed.items()]
        for conn, reason in self.refused:
            self.request_errors[f"{what}: {reason}"] += 1
            log.warning("conntrack %s refused for %s: %s", what, conn, reason)

    def delete_buckets(self, buckets: Iterable[int]) -> None:
        """Delete every entry whose mark records one of `buckets` (one kernel
        flush per bucket, filtered by mark under mark_mask)."""
        reqs = []
        for b in sorted(set(buckets)):
            body = nl.be32(CTA_MARK, mark_of_bucket(b, self.mark_mask))
            body += nl.be32(CTA_MARK_MASK, self.mark_mask)
            reqs.append(self._request(IPCTNL_MSG_CT_DELETE, nl.NLM_F_ACK, socket.AF_UNSPEC, body))
        failed = self._transact(reqs, ok_errnos=(errno.ENOENT,))
        if failed:
            raise ConntrackError(
                f"bucket flush failed: {os.strerror(-next(iter(failed.values())))}"
            )
