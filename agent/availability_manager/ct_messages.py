"""Wire messages of the conntrack synchronisation protocol (the CT_* types).

Owns only layouts and their validation; the protocol is in `conntrack_sync.py`.
Every message validates itself in `__post_init__` (raising ValueError), so the
wire decoder turns any bad value into the countable reason ``invalid-value``
and a message object that exists is always a usable one.

Sizes matter: the Node packs many of these into one datagram (~1400 bytes of
plaintext). Attributes cost 4 bytes of header each, so what is usually
redundant is left out:

- the reply tuple of an entry is sent only when it is not the inverse of the
  original tuple (NAT). The wire encoder always writes non-repeated
  attributes, so the optional ones are declared ``repeated`` and hold zero or
  one value. An IPv4 CT_NEW without NAT is 64 bytes, with NAT 92; IPv6 adds
  24 (resp. 48) bytes.
- UPDATE and DELETE name the entry by its 8-byte `Connection.key`.
- CT_DIGEST packs (count u32, sum u64) per bucket group into one attribute.

Groups: a bucket belongs to group ``bucket % groups``; the digest check and
scoped resyncs work per group. An empty group list in CT_RESYNC_REQUEST or
CT_RESYNC_DONE means "all groups" (a full resync).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable, Sequence
from typing import ClassVar, Self

from .connection import Connection, Tuple, untranslated_reply
from .wire import Kind, MsgType, attr, message

KEY_SIZE = 8  # Connection.key
MAX_GROUPS = 64
GROUP_DIGEST = struct.Struct("!IQ")  # entries in the group, sum of entry hashes mod 2**64


def _check_key(key: bytes) -> None:
    if len(key) != KEY_SIZE:
        raise ValueError(f"key must be {KEY_SIZE} bytes, got {len(key)}")


def _check_groups(groups: Sequence[int]) -> None:
    if len(set(groups)) != len(groups):
        raise ValueError("duplicate group")
    for g in groups:
        if not 0 <= g < MAX_GROUPS:
            raise ValueError(f"group {g} out of range 0..{MAX_GROUPS - 1}")


def _check_u32(name: str, value: int) -> None:
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{name} must be a 32-bit unsigned integer")


@dataclasses.dataclass(frozen=True, slots=True)
class _Entry:
    """One connection: the body shared by CT_NEW and CT_NEW_RESYNC."""

    proto: int = attr(1, Kind.U8)
    orig_src: bytes = attr(2, Kind.ADDR)
    orig_dst: bytes = attr(3, Kind.ADDR)
    orig_sport: int = attr(4, Kind.U16)
    orig_dport: int = attr(5, Kind.U16)
    state: int = attr(6, Kind.U8)
    status: int = attr(7, Kind.U32)
    mark: int = attr(8, Kind.U32)
    bucket: int = attr(9, Kind.U16)
    # Present (one value each) only for NAT; absent means the untranslated reply.
    reply_src: tuple[bytes, ...] = attr(10, Kind.ADDR, repeated=True)
    reply_dst: tuple[bytes, ...] = attr(11, Kind.ADDR, repeated=True)
    reply_sport: tuple[int, ...] = attr(12, Kind.U16, repeated=True)
    reply_dport: tuple[int, ...] = attr(13, Kind.U16, repeated=True)

    MSG_TYPE: ClassVar[MsgType]

    def __post_init__(self) -> None:
        self.to_connection()  # Tuple/Connection check families, ranges and lengths

    def to_connection(self) -> Connection:
        orig = Tuple(self.orig_src, self.orig_dst, self.orig_sport, self.orig_dport)
        n = len(self.reply_src)
        if n > 1 or not (
            len(self.reply_dst) == len(self.reply_sport) == len(self.reply_dport) == n
        ):
            raise ValueError("reply tuple must be complete (all four attributes once) or absent")
        if n:
            reply = Tuple(
                self.reply_src[0], self.reply_dst[0], self.reply_sport[0], self.reply_dport[0]
            )
        else:
            reply = untranslated_reply(self.proto, orig)
        return Connection(self.proto, orig, reply, self.state, self.status, self.mark, self.bucket)

    @classmethod
    def from_connection(cls, conn: Connection) -> Self:
        o, r = conn.orig, conn.reply
        nat = conn.nat
        return cls(
            proto=conn.proto,
            orig_src=o.src,
            orig_dst=o.dst,
            orig_sport=o.sport,
            orig_dport=o.dport,
            state=conn.state,
            status=conn.status,
            mark=conn.mark,
            bucket=conn.bucket,
            reply_src=(r.src,) if nat else (),
            reply_dst=(r.dst,) if nat else (),
            reply_sport=(r.sport,) if nat else (),
            reply_dport=(r.dport,) if nat else (),
        )


@message(MsgType.CT_NEW)
@dataclasses.dataclass(frozen=True, slots=True)
class CtNew(_Entry):
    """A connection the sender has (new, or changed in what identifies it)."""


@message(MsgType.CT_NEW_RESYNC)
@dataclasses.dataclass(frozen=True, slots=True)
class CtNewResync(_Entry):
    """A connection re-sent by a resync round; the round ends with CT_RESYNC_DONE."""


@message(MsgType.CT_UPDATE)
@dataclasses.dataclass(frozen=True, slots=True)
class CtUpdate:
    """New protocol state of a connection the receiver already has."""

    key: bytes = attr(1, Kind.BYTES, max_len=KEY_SIZE)
    state: int = attr(2, Kind.U8)
    status: int = attr(3, Kind.U32)
    mark: int = attr(4, Kind.U32)

    MSG_TYPE: ClassVar[MsgType]

    def __post_init__(self) -> None:
        _check_key(self.key)
        if not 0 <= self.state <= 0xFF:
            raise ValueError("state must be 0..255")
        _check_u32("status", self.status)
        _check_u32("mark", self.mark)


@message(MsgType.CT_DELETE)
@dataclasses.dataclass(frozen=True, slots=True)
class CtDelete:
    """The sender no longer has this connection."""

    key: bytes = attr(1, Kind.BYTES, max_len=KEY_SIZE)

    MSG_TYPE: ClassVar[MsgType]

    def __post_init__(self) -> None:
        _check_key(self.key)


@message(MsgType.CT_DIGEST)
@dataclasses.dataclass(frozen=True, slots=True)
class CtDigest:
    """The sender's local table summarised per bucket group, for the consistency check."""

    digests: bytes = attr(1, Kind.BYTES, max_len=MAX_GROUPS * GROUP_DIGEST.size)

    MSG_TYPE: ClassVar[MsgType]

    def __post_init__(self) -> None:
        n, rest = divmod(len(self.digests), GROUP_DIGEST.size)
        if rest or not 1 <= n <= MAX_GROUPS:
            raise ValueError(f"digests must be 1..{MAX_GROUPS} groups of {GROUP_DIGEST.size} bytes")

    @classmethod
    def from_groups(cls, groups: Iterable[tuple[int, int]]) -> CtDigest:
        return cls(b"".join(GROUP_DIGEST.pack(count, total) for count, total in groups))

    def groups(self) -> list[tuple[int, int]]:
        return list(GROUP_DIGEST.iter_unpack(self.digests))


@message(MsgType.CT_RESYNC_REQUEST)
@dataclasses.dataclass(frozen=True, slots=True)
class CtResyncRequest:
    """Ask node `target` to resend its table (only `groups` if any are given)."""

    target: int = attr(1, Kind.U32)
    groups: tuple[int, ...] = attr(2, Kind.U16, repeated=True)

    MSG_TYPE: ClassVar[MsgType]

    def __post_init__(self) -> None:
        _check_u32("target", self.target)
        _check_groups(self.groups)


@message(MsgType.CT_RESYNC_DONE)
@dataclasses.dataclass(frozen=True, slots=True)
class CtResyncDone:
    """End of a resync round over `groups` (all if empty): the sender's entries
    in those groups that the round did not re-send are stale."""

    groups: tuple[int, ...] = attr(1, Kind.U16, repeated=True)

    MSG_TYPE: ClassVar[MsgType]

    def __post_init__(self) -> None:
        _check_groups(self.groups)


CtMessage = CtNew | CtNewResync | CtUpdate | CtDelete | CtDigest | CtResyncRequest | CtResyncDone
CT_MESSAGE_TYPES: tuple[type, ...] = (
    CtNew,
    CtNewResync,
    CtUpdate,
    CtDelete,
    CtDigest,
    CtResyncRequest,
    CtResyncDone,
)
