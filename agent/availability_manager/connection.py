"""A conntrack entry as the cluster sees it: what is synced, injected and compared.

Only what defines a connection and its protocol state is kept: tuples, state,
status bits, mark and bucket. Counters and timeouts are deliberately absent:
they change on every packet and are not synced (the seed's rule); an injected
entry gets the timeout of its state class on the receiving kernel.

NAT needs no extra field: a translated connection is exactly one whose reply
tuple is not the inverse of its original tuple, and the kernel re-creates the
binding from the two tuples on injection.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import struct

SEQADJ_VALUES = 6  # Connection.seqadj: 3 values per direction

# IP protocol numbers the cluster knows how to sync by default.
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
PROTO_NAMES = {"icmp": PROTO_ICMP, "tcp": PROTO_TCP, "udp": PROTO_UDP, "icmpv6": PROTO_ICMPV6}

# nf_conntrack status bits we care about (include/uapi/linux/netfilter/nf_conntrack_common.h)
IPS_EXPECTED = 1 << 0
IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2
IPS_SRC_NAT = 1 << 4
IPS_DST_NAT = 1 << 5
IPS_SYNC_MASK = IPS_EXPECTED | IPS_SEEN_REPLY | IPS_ASSURED | IPS_SRC_NAT | IPS_DST_NAT

# TCP conntrack states (enum tcp_conntrack)
TCP_NONE, TCP_SYN_SENT, TCP_SYN_RECV, TCP_ESTABLISHED, TCP_FIN_WAIT = 0, 1, 2, 3, 4
TCP_CLOSE_WAIT, TCP_LAST_ACK, TCP_TIME_WAIT, TCP_CLOSE, TCP_SYN_SENT2 = 5, 6, 7, 8, 9


@dataclasses.dataclass(frozen=True, slots=True)
class Tuple:
    """One direction of a connection. Addresses are packed bytes (4 or 16).
    For ICMP, `sport` is the echo id and `dport` is type << 8 | code."""

    src: bytes
    dst: bytes
    sport: int
    dport: int

    def __post_init__(self) -> None:
        if len(self.src) not in (4, 16) or len(self.dst) != len(self.src):
            raise ValueError("tuple addresses must both be 4 or both be 16 bytes")
        if not (0 <= self.sport <= 0xFFFF and 0 <= self.dport <= 0xFFFF):
            raise ValueError("ports must be 0..65535")

    def inverse(self) -> Tuple:
        return Tuple(self.dst, self.src, self.dport, self.sport)

    def __str__(self) -> str:
        return (
            f"{ipaddress.ip_address(self.src)}:{self.sport}"
            f">{ipaddress.ip_address(self.dst)}:{self.dport}"
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Connection:
    proto: int
    orig: Tuple
    reply: Tuple
    state: int = 0
    status: int = 0
    mark: int = 0
    bucket: int = 0
    # TCP sequence offsets a NAT helper left after rewriting the stream (an FTP
    # PORT command through SNAT names an address of another length):
    # (correction position, offset before, offset after) of the original
    # direction, then of the reply direction; empty if never rewritten. A new
    # owner without them would translate no sequence number (the kernel's
    # seqadj extension, CTA_SEQ_ADJ_*).
    seqadj: tuple[int, ...] = ()
    # the digest of proto + original tuple, computed once (it is looked up on
    # every sync message); not part of equality, repr or the constructor
    _key: bytes = dataclasses.field(init=False, repr=False, compare=False, default=b"")

    def __post_init__(self) -> None:
        if not 0 <= self.proto <= 255:
            raise ValueError("proto must be 0..255")
        if len(self.orig.src) != len(self.reply.src):
            raise ValueError("original and reply tuples must be of one address family")
        if not 0 <= self.state <= 255:
            raise ValueError("state must be 0..255")
        if not 0 <= self.status <= 0xFFFFFFFF or not 0 <= self.mark <= 0xFFFFFFFF:
            raise ValueError("status and mark must be 32-bit unsigned")
        if not 0 <= self.bucket <= 0xFFFF:
            raise ValueError("bucket must be 0..65535")
        if self.seqadj and (
            len(self.seqadj) != SEQADJ_VALUES or not all(0 <= v <= 0xFFFFFFFF for v in self.seqadj)
        ):
            raise ValueError(f"seqadj must be empty or {SEQADJ_VALUES} 32-bit values")
        object.__setattr__(self, "_key", connection_key(self.proto, self.orig))

    @property
    def family(self) -> int:
        return 4 if len(self.orig.src) == 4 else 6

    @property
    def key(self) -> bytes:
        """8-byte digest of what identifies the connection (protocol and
        original tuple): the handle UPDATE and DELETE messages carry."""
        return self._key

    @property
    def nat(self) -> bool:
        """Whether the reply tuple is not `untranslated_reply` (compared field
        by field: asked for every entry announced, so no Tuple is built)."""
        o, r = self.orig, self.reply
        if r.src != o.dst or r.dst != o.src:
            return True
        return (r.sport, r.dport) != untranslated_reply_ports(self.proto, o.sport, o.dport)

    def with_state(self, state: int, status: int) -> Connection:
        if type(self) is Connection:  # the common case, without replace()'s introspection
            return Connection(self.proto, self.orig, self.reply, state, status, self.mark,
                              self.bucket, self.seqadj)  # fmt: skip
        return dataclasses.replace(self, state=state, status=status)

    def with_seqadj(self, seqadj: tuple[int, ...]) -> Connection:
        return dataclasses.replace(self, seqadj=seqadj)

    def __str__(self) -> str:
        return f"proto {self.proto} {self.orig} bucket {self.bucket} state {self.state}"


# Decoders whose wire format already fixes what the constructors check
# (addresses of 4 or 16 bytes, one length per connection; 8-, 16- and 32-bit
# fields) build with these: the owner decodes a kernel event and a takeover
# decodes a record per connection, and the checks cost a third of it. The
# property tests of each decoder compare with the checked constructors.
_new = object.__new__
_set = object.__setattr__


def tuple_unchecked(src: bytes, dst: bytes, sport: int, dport: int) -> Tuple:
    t = _new(Tuple)
    _set(t, "src", src)
    _set(t, "dst", dst)
    _set(t, "sport", sport)
    _set(t, "dport", dport)
    return t


def connection_unchecked(
    proto: int, orig: Tuple, reply: Tuple, state: int, status: int, mark: int, bucket: int
) -> Connection:
    """A plain Connection (no helper, no offsets); `bucket` must be <= 0xFFFF."""
    c = _new(Connection)
    _set(c, "proto", proto)
    _set(c, "orig", orig)
    _set(c, "reply", reply)
    _set(c, "state", state)
    _set(c, "status", status)
    _set(c, "mark", mark)
    _set(c, "bucket", bucket)
    _set(c, "seqadj", ())
    _set(c, "_key", connection_key(proto, orig))
    return c


# ICMP queries and their answers (RFC 792, RFC 4443): what the reply tuple's type is
_ICMP_REPLY_TYPE = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 17: 18, 18: 17}
_ICMPV6_REPLY_TYPE = {128: 129, 129: 128}


def untranslated_reply(proto: int, orig: Tuple) -> Tuple:
    """The reply tuple the kernel expects for `orig` without NAT. For ports
    that is the inverse; for ICMP the id stays and the type becomes its
    answer's (echo request 8 -> echo reply 0), as nf_conntrack_proto_icmp does."""
    return Tuple(orig.dst, orig.src, *untranslated_reply_ports(proto, orig.sport, orig.dport))


def untranslated_reply_ports(proto: int, sport: int, dport: int) -> tuple[int, int]:
    """The (sport, dport) of `untranslated_reply` (its addresses are swapped)."""
    if proto in (PROTO_ICMP, PROTO_ICMPV6):
        table = _ICMP_REPLY_TYPE if proto == PROTO_ICMP else _ICMPV6_REPLY_TYPE
        icmp_type, code = dport >> 8, dport & 0xFF
        return sport, table.get(icmp_type, icmp_type) << 8 | code
    return dport, sport


_KEY = struct.Struct("!BHH")


def connection_key(proto: int, orig: Tuple) -> bytes:
    material = key_material(proto, orig.sport, orig.dport, orig.src, orig.dst)
    return hashlib.blake2b(material, digest_size=8).digest()


def key_material(proto: int, sport: int, dport: int, src: bytes, dst: bytes) -> bytes:
    """What `connection_key` hashes (8-byte blake2b) for a protocol and original tuple."""
    return _KEY.pack(proto, sport, dport) + src + dst


def make_tuple(src: str, dst: str, sport: int, dport: int) -> Tuple:
    """Convenience for tests and tools: a tuple from address strings."""
    return Tuple(ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed, sport, dport)
