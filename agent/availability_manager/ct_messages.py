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

Wire version 2 (wire.py) adds the helper name of an entry (attribute 14 of
CT_NEW / CT_NEW_RESYNC, absent when the entry has none or when the cluster
still speaks version 1) and the expectation messages CT_EXPECT and
CT_EXPECT_DELETE, which are always encoded with MSG_FLAG_OPTIONAL
(`encode_ct`) so that a version-1 decoder skips them.

Groups: a bucket belongs to group ``bucket % groups``; the digest check and
scoped resyncs work per group. An empty group list in CT_RESYNC_REQUEST or
CT_RESYNC_DONE means "all groups" (a full resync).
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from collections.abc import Iterable, Sequence
from typing import ClassVar, Self

from .connection import Connection, Tuple, connection_key, untranslated_reply
from .wire import MSG_FLAG_OPTIONAL, Kind, MsgType, attr, encode_message, message

KEY_SIZE = 8  # Connection.key
SEQADJ = struct.Struct("!6I")  # Connection.seqadj on the wire
MAX_GROUPS = 64
GROUP_DIGEST = struct.Struct("!IQ")  # entries in the group, sum of entry hashes mod 2**64


HELPER_NAME_MAX = 15  # NF_CT_HELPER_NAME_LEN (16) minus the kernel's terminating NUL
VERSION_HELPERS = 2  # the wire version that carries helper names and expectations


def check_helper_name(name: str) -> None:
    """A conntrack helper name as the kernel knows them: "ftp", "tftp", "sip"."""
    if not 1 <= len(name) <= HELPER_NAME_MAX or not all(
        c.isascii() and (c.isalnum() or c in "-_") for c in name
    ):
        raise ValueError(f"helper name must be 1..{HELPER_NAME_MAX} of [A-Za-z0-9_-]: {name!r}")


@dataclasses.dataclass(frozen=True, slots=True)
class HelperConnection(Connection):
    """A connection with a conntrack helper attached (e.g. an FTP control
    connection). The new owner must inject it with the same helper, or the
    helper would not parse the later PORT/PASV commands and no data
    connection could follow. A Connection without helper stays a plain
    `Connection` (so equality tells "helper changed" from "unchanged")."""

    helper: str = ""

    def __post_init__(self) -> None:
        Connection.__post_init__(self)
        check_helper_name(self.helper)


EXPECT_FN_MAX = 31  # NF_CT_HELPER_NAME_LEN-sized names, e.g. "nat-follow-master"


def check_expect_fn(name: str) -> None:
    """The name of a kernel expectation function (nf_ct_helper_expectfn)."""
    if not 1 <= len(name) <= EXPECT_FN_MAX or not all(
        c.isascii() and (c.isalnum() or c in "-_") for c in name
    ):
        raise ValueError(f"expectation function must be 1..{EXPECT_FN_MAX} of [A-Za-z0-9_-]")


def helper_of(conn: Connection) -> str:
    """The helper name of an entry, "" if none."""
    return conn.helper if isinstance(conn, HelperConnection) else ""


def with_helper(conn: Connection, helper: str) -> Connection:
    """`conn` with `helper` attached ("" removes it)."""
    if helper_of(conn) == helper:
        return conn
    fields = {f.name: getattr(conn, f.name) for f in dataclasses.fields(Connection) if f.init}
    if not helper:
        return Connection(**fields)
    return HelperConnection(**fields, helper=helper)


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
    """One connection: the body shared by CT_NEW and CT_NEW_RESYNC.

    Tags 1-13 are wire version 1's; a decoder skips the later ones it does
    not know, so a version-1 peer still reads every version-2 record."""

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
    # Wire version 2: the helper name (zero or one value); a v1 decoder skips it.
    helper: tuple[bytes, ...] = attr(14, Kind.BYTES, repeated=True, max_len=HELPER_NAME_MAX)
    # Later in version 2: the TCP sequence offsets of a rewritten stream
    # (Connection.seqadj as 6 u32, zero or one value); older decoders skip it.
    seqadj: tuple[bytes, ...] = attr(15, Kind.BYTES, repeated=True, max_len=SEQADJ.size)

    MSG_TYPE: ClassVar[MsgType]

    # The connection this record describes, built once by __post_init__ (which
    # validates through it: families, ranges, lengths): every peer needs it for
    # its cache and again to check for a late injection. Not on the wire.
    _conn: Connection | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if len(self.helper) > 1 or len(self.seqadj) > 1:
            raise ValueError("at most one helper name and one seqadj")
        if self.seqadj and len(self.seqadj[0]) != SEQADJ.size:
            raise ValueError(f"seqadj must be {SEQADJ.size} bytes")
        object.__setattr__(self, "_conn", self._build_connection())

    def to_connection(self) -> Connection:
        assert self._conn is not None  # set by __post_init__
        return self._conn

    def _build_connection(self) -> Connection:
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
        seqadj = SEQADJ.unpack(self.seqadj[0]) if self.seqadj else ()
        if self.helper:
            try:
                name = self.helper[0].decode("ascii")
            except UnicodeDecodeError:
                raise ValueError("helper name is not ASCII") from None
            return HelperConnection(self.proto, orig, reply, self.state, self.status, self.mark,
                                    self.bucket, seqadj, helper=name)  # fmt: skip
        return Connection(
            self.proto, orig, reply, self.state, self.status, self.mark, self.bucket, seqadj
        )

    @classmethod
    def from_connection(cls, conn: Connection, version: int = VERSION_HELPERS) -> Self:
        """The record of `conn` as wire version `version` carries it (a
        version below 2 leaves the helper and seqadj out, exactly as a v1 node
        sends)."""
        o, r = conn.orig, conn.reply
        nat = conn.nat
        if type(conn) is Connection and not conn.seqadj:
            # The common case (no helper, no offsets: the same in every
            # version), written slot by slot; the loop below is its reference.
            msg = object.__new__(cls)
            put = object.__setattr__
            none: tuple[()] = ()
            put(msg, "proto", conn.proto)
            put(msg, "orig_src", o.src)
            put(msg, "orig_dst", o.dst)
            put(msg, "orig_sport", o.sport)
            put(msg, "orig_dport", o.dport)
            put(msg, "state", conn.state)
            put(msg, "status", conn.status)
            put(msg, "mark", conn.mark)
            put(msg, "bucket", conn.bucket)
            put(msg, "reply_src", (r.src,) if nat else none)
            put(msg, "reply_dst", (r.dst,) if nat else none)
            put(msg, "reply_sport", (r.sport,) if nat else none)
            put(msg, "reply_dport", (r.dport,) if nat else none)
            put(msg, "helper", none)
            put(msg, "seqadj", none)
            put(msg, "_conn", conn)
            return msg
        helper = helper_of(conn) if version >= VERSION_HELPERS else ""
        seqadj = conn.seqadj if version >= VERSION_HELPERS else ()
        sent = with_helper(conn, helper)  # what a receiver builds from the record
        if sent.seqadj != seqadj:
            sent = sent.with_seqadj(seqadj)
        # Every value comes from a Connection, which validated them when it
        # was made, so the record is assembled without __init__: no second
        # validation and no rebuilding of the Connection it already is (the
        # owner does this for every new connection it announces).
        msg = object.__new__(cls)
        for name, value in zip(
            _ENTRY_FIELDS,
            (
                conn.proto, o.src, o.dst, o.sport, o.dport,
                conn.state, conn.status, conn.mark, conn.bucket,
                (r.src,) if nat else (), (r.dst,) if nat else (),
                (r.sport,) if nat else (), (r.dport,) if nat else (),
                (helper.encode("ascii"),) if helper else (),
                (SEQADJ.pack(*seqadj),) if seqadj else (),
                sent,
            ),
            strict=True,
        ):  # fmt: skip
            object.__setattr__(msg, name, value)
        return msg


# Every field of an entry record in declaration order, the derived `_conn` last.
_ENTRY_FIELDS = tuple(f.name for f in dataclasses.fields(_Entry))
assert _ENTRY_FIELDS[-1] == "_conn"


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


# -- expectations (wire version 2) ---------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Expectation:
    """A conntrack expectation: a helper (of the `master` connection) waiting
    for a related connection, e.g. the data connection announced by an FTP
    PASV reply. `expected` is the related connection's original tuple; a
    zero `mask_src` / `mask_sport` means "any source address / port" (the
    kernel masks only the source side). `bucket` is the master's: the
    expectation belongs to whoever owns the master connection."""

    master_proto: int
    master: Tuple
    proto: int
    expected: Tuple
    mask_src: bytes
    mask_sport: int
    # The master's helper, as the kernel reports it; informational (it is not
    # written back on injection, see conntrack_netlink), so not compared.
    helper: str = dataclasses.field(compare=False)
    expect_class: int = 0
    flags: int = 0
    bucket: int = 0
    # What a NAT helper (nf_nat_ftp, nf_nat_tftp) of a translated master set
    # on the expectation: the function the kernel runs on the related
    # connection (CTA_EXPECT_FN, e.g. "nat-follow-master": translate it as the
    # master) and the direction and saved address and port that function maps
    # it to (CTA_EXPECT_NAT). Without them an expectation injected on a new
    # owner would open its related connection untranslated.
    nat_fn: str = ""
    nat_dir: int | None = None  # None: no CTA_EXPECT_NAT
    nat_addr: bytes = b""
    nat_port: int = 0
    _key: bytes = dataclasses.field(init=False, repr=False, compare=False, default=b"")

    def __post_init__(self) -> None:
        if not (0 <= self.master_proto <= 255 and 0 <= self.proto <= 255):
            raise ValueError("protocols must be 0..255")
        if len(self.master.src) != len(self.expected.src):
            raise ValueError("master and expected tuples must be of one address family")
        if len(self.mask_src) != len(self.expected.src):
            raise ValueError("source mask must be as long as the addresses")
        if not 0 <= self.mask_sport <= 0xFFFF:
            raise ValueError("source port mask must be 0..65535")
        if self.helper:
            check_helper_name(self.helper)
        if not 0 <= self.expect_class <= 255:
            raise ValueError("expectation class must be 0..255")
        _check_u32("flags", self.flags)
        if not 0 <= self.bucket <= 0xFFFF:
            raise ValueError("bucket must be 0..65535")
        if self.nat_fn:
            check_expect_fn(self.nat_fn)
        if self.nat_dir is None:
            if self.nat_addr or self.nat_port:
                raise ValueError("a NAT address or port needs a NAT direction")
        elif self.nat_dir not in (0, 1) or len(self.nat_addr) != len(self.expected.src):
            raise ValueError("NAT direction must be 0 or 1, its address of the tuples' family")
        if not 0 <= self.nat_port <= 0xFFFF:
            raise ValueError("NAT port must be 0..65535")
        e = self.expected
        material = (
            connection_key(self.master_proto, self.master)
            + struct.pack("!BHH", self.proto, e.sport, e.dport)
            + e.src
            + e.dst
        )
        object.__setattr__(self, "_key", hashlib.blake2b(material, digest_size=8).digest())

    @property
    def key(self) -> bytes:
        """8-byte digest of the master's key and the expected tuple."""
        return self._key

    @property
    def master_key(self) -> bytes:
        return connection_key(self.master_proto, self.master)

    def __str__(self) -> str:
        return f"expectation {self.helper or '-'} {self.expected} of {self.master}"


@message(MsgType.CT_EXPECT)
@dataclasses.dataclass(frozen=True, slots=True)
class CtExpect:
    """An expectation the sender's kernel holds (wire version 2, optional)."""

    # The master: the connection whose helper created the expectation (its
    # original direction); the receiver must hold it before it can inject this.
    master_proto: int = attr(1, Kind.U8)
    master_src: bytes = attr(2, Kind.ADDR)
    master_dst: bytes = attr(3, Kind.ADDR)
    master_sport: int = attr(4, Kind.U16)
    master_dport: int = attr(5, Kind.U16)
    # The expected tuple, with the mask of what is still unknown (the source
    # of a data connection, often its port).
    proto: int = attr(6, Kind.U8)
    src: bytes = attr(7, Kind.ADDR)
    dst: bytes = attr(8, Kind.ADDR)
    sport: int = attr(9, Kind.U16)
    dport: int = attr(10, Kind.U16)
    mask_src: bytes = attr(11, Kind.ADDR)
    mask_sport: int = attr(12, Kind.U16)
    helper: bytes = attr(13, Kind.BYTES, max_len=HELPER_NAME_MAX)
    expect_class: int = attr(14, Kind.U8)
    flags: int = attr(15, Kind.U32)
    bucket: int = attr(16, Kind.U16)
    # The expectation's NAT (zero or one value each; absent without NAT). Added
    # after the first version-2 release: its decoder skips them as unknown.
    nat_fn: tuple[bytes, ...] = attr(17, Kind.BYTES, repeated=True, max_len=EXPECT_FN_MAX)
    nat_dir: tuple[int, ...] = attr(18, Kind.U8, repeated=True)
    nat_addr: tuple[bytes, ...] = attr(19, Kind.ADDR, repeated=True)
    nat_port: tuple[int, ...] = attr(20, Kind.U16, repeated=True)

    MSG_TYPE: ClassVar[MsgType]

    def __post_init__(self) -> None:
        if len(self.nat_fn) > 1 or len(self.nat_dir) > 1:
            raise ValueError("at most one NAT function and direction")
        if not len(self.nat_dir) == len(self.nat_addr) == len(self.nat_port):
            raise ValueError("NAT direction, address and port come together or not at all")
        self.to_expectation()

    def to_expectation(self) -> Expectation:
        try:
            helper = self.helper.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("helper name is not ASCII") from None
        return Expectation(
            self.master_proto,
            Tuple(self.master_src, self.master_dst, self.master_sport, self.master_dport),
            self.proto,
            Tuple(self.src, self.dst, self.sport, self.dport),
            self.mask_src,
            self.mask_sport,
            helper,
            self.expect_class,
            self.flags,
            self.bucket,
            self.nat_fn[0].decode("ascii", "replace") if self.nat_fn else "",
            self.nat_dir[0] if self.nat_dir else None,
            self.nat_addr[0] if self.nat_addr else b"",
            self.nat_port[0] if self.nat_port else 0,
        )

    @classmethod
    def from_expectation(cls, exp: Expectation) -> CtExpect:
        m, e = exp.master, exp.expected
        nat = exp.nat_dir is not None
        return cls(
            exp.master_proto, m.src, m.dst, m.sport, m.dport,
            exp.proto, e.src, e.dst, e.sport, e.dport,
            exp.mask_src, exp.mask_sport, exp.helper.encode("ascii"),
            exp.expect_class, exp.flags, exp.bucket,
            (exp.nat_fn.encode("ascii"),) if exp.nat_fn else (),
            (exp.nat_dir,) if exp.nat_dir is not None else (),
            (exp.nat_addr,) if nat else (),
            (exp.nat_port,) if nat else (),
        )  # fmt: skip


@message(MsgType.CT_EXPECT_DELETE)
@dataclasses.dataclass(frozen=True, slots=True)
class CtExpectDelete:
    """The sender's expectation `key` is gone (used, timed out or removed)."""

    key: bytes = attr(1, Kind.BYTES, max_len=KEY_SIZE)

    MSG_TYPE: ClassVar[MsgType]

    def __post_init__(self) -> None:
        _check_key(self.key)


def encode_ct(msg: object) -> bytes:
    """Encode a CT message; expectation messages carry MSG_FLAG_OPTIONAL, so a
    decoder that predates them (wire version 1) skips them, not the payload."""
    if isinstance(msg, CtExpect | CtExpectDelete):
        return encode_message(msg, MSG_FLAG_OPTIONAL)
    return encode_message(msg)


CtMessage = (
    CtNew
    | CtNewResync
    | CtUpdate
    | CtDelete
    | CtDigest
    | CtResyncRequest
    | CtResyncDone
    | CtExpect
    | CtExpectDelete
)
CT_MESSAGE_TYPES: tuple[type, ...] = (
    CtNew,
    CtNewResync,
    CtUpdate,
    CtDelete,
    CtDigest,
    CtResyncRequest,
    CtResyncDone,
    CtExpect,
    CtExpectDelete,
)
