"""Wire format of the availability-manager: datagram header and typed messages.

This module owns every byte layout on the sync network, and nothing else: no
keys, no state. A datagram is

    Header (20 bytes, sent in clear, authenticated as AEAD associated data)
        magic    2  b"FC"
        version  1  wire version of the sender (WIRE_VERSION)
        key_id   1  which cluster key sealed the payload
        sender   4  node id of the sender (u32, by default its IPv4 sync address)
        counter  8  per-sender packet counter, the nonce (never reused)
        length   2  length of the sealed payload that follows, tag included
        reserved 2  zero
    Payload: AEAD(Message*)

    Message = type u8 | flags u8 | length u16 | Attribute*
    Attribute = id u16 | length u16 | value

Message classes are frozen dataclasses registered with `@message(type)`;
each field names its attribute id and kind with `attr()`. The table built from
the registry drives both the encoder and the bounds-checked decoder, so a new
message is a new dataclass and nothing else. Decoding raises `WireError`
with a short, countable `reason`; nothing else escapes, and nothing is
returned from a datagram that fails anywhere (all-or-nothing).

Unknown attribute ids inside a known message are skipped (so a newer peer can
add optional attributes); unknown message types are an error counted as
`unknown-message`, except when the message flag MSG_FLAG_OPTIONAL is set, in
which case the message is skipped. That is the forward-compatibility rule
rolling upgrades depend on.

Wire versions (what a node may send; every version decodes all of them):

    1  session 1: heartbeats, reliable broadcast, ranges, CT_NEW .. CT_RESYNC_DONE
    2  CT_NEW / CT_NEW_RESYNC carry the connection's helper name (attribute 14,
       skipped by a v1 decoder) and the expectation messages CT_EXPECT /
       CT_EXPECT_DELETE exist (always sent with MSG_FLAG_OPTIONAL, so a v1
       decoder skips them instead of dropping the whole payload); CT_EXPECT
       later gained optional attributes 17-20 (the expectation's NAT), which
       a decoder that predates them skips like any unknown attribute

A node announces the highest version it speaks in its heartbeats and sends
the lowest one every peer it hears announces (see availability.py), so during
a rolling upgrade everything a v1 node receives means to it what it means
to its sender.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Iterable, Sequence
from enum import IntEnum
from typing import Any, ClassVar, Protocol, TypeVar

MAGIC = b"FC"
WIRE_VERSION = 2  # the highest version this build speaks (see the module docstring)
WIRE_VERSION_MIN = 1  # the lowest version it can still speak, for a rolling upgrade
HEADER = struct.Struct("!2sBBIQHH")
HEADER_SIZE = HEADER.size  # 20
MSG_HEADER = struct.Struct("!BBH")
ATTR_HEADER = struct.Struct("!HH")
MAX_DATAGRAM = 1472  # one Ethernet frame of UDP/IPv4 payload
TAG_SIZE = 16

MSG_FLAG_OPTIONAL = 0x01


class WireError(Exception):
    """A datagram or message that cannot be accepted. `reason` is a short
    stable token used as a counter label (e.g. ``truncated-header``)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class MsgType(IntEnum):
    HEARTBEAT = 1
    RB_DATA = 2
    RB_NAK = 3
    RB_LOST = 4
    RANGE_STATE = 8
    CT_NEW = 16
    CT_NEW_RESYNC = 17
    CT_UPDATE = 18
    CT_DELETE = 19
    CT_DIGEST = 20
    CT_RESYNC_REQUEST = 21
    CT_RESYNC_DONE = 22
    CT_EXPECT = 23  # wire version 2
    CT_EXPECT_DELETE = 24  # wire version 2
    TEST_PAYLOAD = 250  # the benchmark's "test plugin"


class Kind(IntEnum):
    U8 = 1
    U16 = 2
    U32 = 3
    U64 = 4
    BYTES = 5
    ADDR = 6  # 4 or 16 bytes (IPv4 or IPv6 address, network order)


_INT_FORMATS = {
    Kind.U8: struct.Struct("!B"),
    Kind.U16: struct.Struct("!H"),
    Kind.U32: struct.Struct("!I"),
    Kind.U64: struct.Struct("!Q"),
}
# id, length and value of an integer attribute, packed by one call
_ATTR_INT_FORMATS = {kind: struct.Struct("!HH" + f.format[1:]) for kind, f in _INT_FORMATS.items()}


@dataclasses.dataclass(frozen=True)
class AttrSpec:
    attr_id: int
    name: str
    kind: Kind
    required: bool
    repeated: bool
    max_len: int

    @property
    def packer(self) -> struct.Struct | None:
        """Header and value in one pack, for an integer kind (None: bytes)."""
        return _ATTR_INT_FORMATS.get(self.kind)


def attr(
    attr_id: int,
    kind: Kind,
    *,
    required: bool = True,
    repeated: bool = False,
    max_len: int = 1400,
    default: Any = dataclasses.MISSING,
) -> Any:
    """Declare a dataclass field as wire attribute `attr_id` of `kind`.

    A repeated attribute is a tuple on the Python side (default empty). An
    optional (not required) attribute must have a default, used when absent.
    """
    meta = {"wire": (attr_id, kind, required, repeated, max_len)}
    if repeated:
        return dataclasses.field(default=(), metadata=meta)
    if default is not dataclasses.MISSING:
        return dataclasses.field(default=default, metadata=meta)
    return dataclasses.field(metadata=meta)


class WireMessage(Protocol):
    MSG_TYPE: ClassVar[MsgType]


@dataclasses.dataclass(frozen=True)
class _Schema:
    cls: type
    msg_type: MsgType
    attrs: tuple[AttrSpec, ...]
    by_id: dict[int, AttrSpec]
    has_repeated: bool
    required: tuple[str, ...]  # attributes a valid body must carry (repeated ones never are)
    # (spec, its integer packer or None) per attribute, for the encoder's loop
    encoders: tuple[tuple[AttrSpec, struct.Struct | None], ...] = ()
    # body length -> the layout learned for it (None: that length has none);
    # see _Shape. Per schema, so a type registered anew starts from nothing.
    shapes: dict[int, _Shape | None] = dataclasses.field(default_factory=dict, compare=False)


_REGISTRY: dict[int, _Schema] = {}
_BY_CLASS: dict[type, _Schema] = {}

M = TypeVar("M")


def message(msg_type: MsgType) -> Callable[[type[M]], type[M]]:
    """Class decorator: register a frozen dataclass as wire message `msg_type`."""

    def register(cls: type[M]) -> type[M]:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} must be a dataclass")
        if msg_type in _REGISTRY:
            raise TypeError(f"message type {msg_type!r} registered twice")
        specs = []
        for f in dataclasses.fields(cls):
            if not f.init:
                continue  # derived from the attributes (a cache), not on the wire
            wire = f.metadata.get("wire")
            if wire is None:
                raise TypeError(f"{cls.__name__}.{f.name} has no wire attribute")
            attr_id, kind, required, repeated, max_len = wire
            if not 0 <= attr_id <= 0xFFFF or not 0 < max_len <= 0xFFFF:
                raise TypeError(f"{cls.__name__}.{f.name}: attribute id or max_len out of range")
            specs.append(AttrSpec(attr_id, f.name, kind, required, repeated, max_len))
        ids = [s.attr_id for s in specs]
        if len(set(ids)) != len(ids):
            raise TypeError(f"{cls.__name__} has duplicate attribute ids")
        schema = _Schema(
            cls,
            msg_type,
            tuple(specs),
            {s.attr_id: s for s in specs},
            any(s.repeated for s in specs),
            tuple(s.name for s in specs if s.required and not s.repeated),
            tuple((s, s.packer) for s in specs),
        )
        _REGISTRY[int(msg_type)] = schema
        _BY_CLASS[cls] = schema
        cls.MSG_TYPE = msg_type  # type: ignore[attr-defined]
        return cls

    return register


# -- encoding -----------------------------------------------------------------


def _encode_value(spec: AttrSpec, value: Any) -> bytes:
    if spec.kind in _INT_FORMATS:
        try:
            return _INT_FORMATS[spec.kind].pack(value)
        except struct.error as exc:
            raise ValueError(f"attribute {spec.name}: {value!r} out of range") from exc
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise ValueError(f"attribute {spec.name}: expected bytes, got {type(value).__name__}")
    data = bytes(value)
    if spec.kind is Kind.ADDR and len(data) not in (4, 16):
        raise ValueError(f"attribute {spec.name}: address must be 4 or 16 bytes")
    if len(data) > spec.max_len:
        raise ValueError(f"attribute {spec.name}: {len(data)} bytes > {spec.max_len}")
    return data


def encode_message(msg: Any, flags: int = 0) -> bytes:
    """Encode one registered message (type, flags, length, attributes)."""
    schema = _BY_CLASS.get(type(msg))
    if schema is None:
        raise TypeError(f"{type(msg).__name__} is not a registered wire message")
    if not 0 <= flags <= 0xFF:
        raise ValueError(f"message flags must be 0..255, got {flags}")
    parts: list[bytes] = []
    for spec, packer in schema.encoders:
        value = getattr(msg, spec.name)
        if packer is not None and not spec.repeated:
            # The sync hot path (every field of every CT_NEW): one pack call.
            try:
                parts.append(packer.pack(spec.attr_id, packer.size - 4, value))
            except struct.error as exc:
                raise ValueError(f"attribute {spec.name}: {value!r} out of range") from exc
            continue
        values: Iterable[Any] = value if spec.repeated else (value,)
        for v in values:
            data = _encode_value(spec, v)
            parts.append(ATTR_HEADER.pack(spec.attr_id, len(data)))
            parts.append(data)
    body = b"".join(parts)
    if len(body) > 0xFFFF:
        raise ValueError(f"{type(msg).__name__} too large ({len(body)} bytes)")
    return MSG_HEADER.pack(int(schema.msg_type), flags, len(body)) + body


def encode_messages(msgs: Sequence[Any]) -> bytes:
    return b"".join(encode_message(m) for m in msgs)


def encoded_size(msg: Any) -> int:
    return len(encode_message(msg))


# -- decoding -----------------------------------------------------------------


def _decode_value(spec: AttrSpec, body: memoryview, pos: int, length: int) -> Any:
    fmt = _INT_FORMATS.get(spec.kind)
    if fmt is not None:
        if length != fmt.size:
            raise WireError("bad-attribute-length", f"{spec.name}: {length} bytes")
        return fmt.unpack_from(body, pos)[0]
    if spec.kind is Kind.ADDR and length not in (4, 16):
        raise WireError("bad-attribute-length", f"{spec.name}: address of {length} bytes")
    if length > spec.max_len:
        raise WireError("oversized-attribute", f"{spec.name}: {length} bytes")
    return bytes(body[pos : pos + length])


@dataclasses.dataclass(frozen=True)
class _Shape:
    """A body layout the generic decoder accepted before: every attribute's
    id and length, in order. A body of the same type and length whose headers
    match it exactly passes every check the generic decoder makes (lengths per
    kind, required attributes, no duplicates), so one `unpack_from` decodes it.
    The sync stream is a few shapes over and over (CT_NEW of IPv4 without NAT,
    CT_UPDATE, ...), and this halves the decoder's time per entry."""

    layout: struct.Struct  # id, length, value per attribute
    ids: tuple[int, ...]
    lengths: tuple[int, ...]
    names: tuple[str, ...]
    singles: tuple[str, ...]  # repeated attributes present once: 1-tuples

    @classmethod
    def learn(cls, schema: _Schema, seen: list[tuple[int, int]]) -> _Shape | None:
        ids = tuple(attr_id for attr_id, _ in seen)
        if len(set(ids)) != len(ids) or any(i not in schema.by_id for i in ids):
            return None  # a repeated value, or an unknown attribute: not a shape
        fmt = ["!"]
        for attr_id, length in seen:
            int_format = _INT_FORMATS.get(schema.by_id[attr_id].kind)
            fmt.append("HH" + (int_format.format[1:] if int_format else f"{length}s"))
        specs = [schema.by_id[i] for i in ids]
        return cls(
            struct.Struct("".join(fmt)),
            ids,
            tuple(length for _, length in seen),
            tuple(s.name for s in specs),
            tuple(s.name for s in specs if s.repeated),
        )

    def decode(self, schema: _Schema, body: memoryview) -> Any:
        """The message, or None when the body is not of this shape."""
        values = self.layout.unpack_from(body)
        if values[0::3] != self.ids or values[1::3] != self.lengths:
            return None
        fields = dict(zip(self.names, values[2::3], strict=True))
        for name in self.singles:
            fields[name] = (fields[name],)
        return _construct(schema, fields)


# Shapes learned per message type at most; bodies of ever new lengths cannot
# grow the table beyond it (they take the generic path).
MAX_SHAPES = 64


def _construct(schema: _Schema, values: dict[str, Any]) -> Any:
    try:
        return schema.cls(**values)
    except (TypeError, ValueError) as exc:
        # __post_init__ validation of the message class refused the values
        raise WireError("invalid-value", f"{schema.cls.__name__}: {exc}") from None


def _decode_body(schema: _Schema, body: memoryview) -> Any:
    shapes = schema.shapes
    shape = shapes.get(len(body))
    if shape is not None:
        msg = shape.decode(schema, body)
        if msg is not None:
            return msg
    learn = len(body) not in shapes and len(shapes) < MAX_SHAPES
    seen: list[tuple[int, int]] = []
    msg = _decode_generic(schema, body, seen if learn else None)
    if learn:  # only now: a body that failed teaches nothing
        shapes[len(body)] = _Shape.learn(schema, seen)
    return msg


def _decode_generic(schema: _Schema, body: memoryview, seen: list[tuple[int, int]] | None) -> Any:
    # Values are unpacked in place from the view (no copy per attribute), and
    # the repeated lists exist only for schemas that have repeated attributes.
    # `seen`, when given, collects every attribute's (id, length) in order.
    values: dict[str, Any] = {}
    repeated: dict[str, list[Any]] | None = (
        {s.name: [] for s in schema.attrs if s.repeated} if schema.has_repeated else None
    )
    by_id = schema.by_id
    unpack_header = ATTR_HEADER.unpack_from
    pos = 0
    end = len(body)
    while pos < end:
        if end - pos < 4:  # ATTR_HEADER.size
            raise WireError("truncated-attribute")
        attr_id, length = unpack_header(body, pos)
        pos += 4
        if length > end - pos:
            raise WireError("truncated-attribute", f"id {attr_id}")
        if seen is not None:
            seen.append((attr_id, length))
        spec = by_id.get(attr_id)
        if spec is None:
            pos += length
            continue  # unknown attribute of a known message: newer peer, skip
        value = _decode_value(spec, body, pos, length)
        pos += length
        if spec.repeated:
            assert repeated is not None
            repeated[spec.name].append(value)
        elif spec.name in values:
            raise WireError("duplicate-attribute", spec.name)
        else:
            values[spec.name] = value
    if repeated is not None:
        for name, items in repeated.items():
            values[name] = tuple(items)
    for name in schema.required:
        if name not in values:
            raise WireError("missing-attribute", f"{schema.cls.__name__}.{name}")
    return _construct(schema, values)


def decode_messages(data: bytes | memoryview) -> list[Any]:
    """Decode a sequence of messages; all of them or WireError."""
    view = memoryview(data)
    out: list[Any] = []
    pos = 0
    end = len(view)
    while pos < end:
        if end - pos < MSG_HEADER.size:
            raise WireError("truncated-message")
        msg_type, flags, length = MSG_HEADER.unpack_from(view, pos)
        pos += MSG_HEADER.size
        if length > end - pos:
            raise WireError("truncated-message", f"type {msg_type}")
        body = view[pos : pos + length]
        pos += length
        schema = _REGISTRY.get(msg_type)
        if schema is None:
            if flags & MSG_FLAG_OPTIONAL:
                continue
            raise WireError("unknown-message", f"type {msg_type}")
        out.append(_decode_body(schema, body))
    return out


def decode_message(data: bytes | memoryview) -> Any:
    """Decode exactly one message."""
    msgs = decode_messages(data)
    if len(msgs) != 1:
        raise WireError("bad-message-count", f"{len(msgs)} messages, expected 1")
    return msgs[0]


# -- datagram header ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Header:
    version: int
    key_id: int
    sender: int
    counter: int
    length: int

    def encode(self) -> bytes:
        return HEADER.pack(
            MAGIC, self.version, self.key_id, self.sender, self.counter, self.length, 0
        )


def decode_header(datagram: bytes | memoryview) -> Header:
    """Parse and check the clear header of a datagram (not its payload)."""
    if len(datagram) > MAX_DATAGRAM:
        raise WireError("oversized-datagram", f"{len(datagram)} bytes")
    if len(datagram) < HEADER_SIZE:
        raise WireError("truncated-header", f"{len(datagram)} bytes")
    magic, version, key_id, sender, counter, length, reserved = HEADER.unpack_from(datagram)
    if magic != MAGIC:
        raise WireError("bad-magic")
    if version == 0 or version > WIRE_VERSION_MAX_ACCEPTED:
        raise WireError("unsupported-version", f"version {version}")
    if reserved != 0:
        raise WireError("bad-reserved")
    if length != len(datagram) - HEADER_SIZE:
        raise WireError("bad-length", f"header says {length}, have {len(datagram) - HEADER_SIZE}")
    if length < TAG_SIZE:
        raise WireError("truncated-payload")
    return Header(version, key_id, sender, counter, length)


# Datagrams of any version up to this one are parsed; what a version may carry is
# decided above the header (unknown optional messages/attributes are skipped).
WIRE_VERSION_MAX_ACCEPTED = 15
