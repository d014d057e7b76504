"""Property-based tests of the wire codec (wire.py) as it stands.

`Sample` is a test-only message holding one attribute of every kind, plus an
optional and a repeated one. It is registered as MsgType.TEST_PAYLOAD only
while this module's tests run (a module fixture), and whatever held that
type before is put back afterwards, so a benchmark's test plugin and these
tests can share one process.
"""

from __future__ import annotations

import dataclasses
import importlib
import struct
from collections.abc import Iterator
from typing import Any, cast

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from availability_manager import wire
from availability_manager.wire import Kind, MsgType, WireError


@dataclasses.dataclass(frozen=True)
class Sample:
    u8: int = wire.attr(1, Kind.U8)
    u16: int = wire.attr(2, Kind.U16)
    u32: int = wire.attr(3, Kind.U32)
    u64: int = wire.attr(4, Kind.U64)
    blob: bytes = wire.attr(5, Kind.BYTES, max_len=64)
    addr: bytes = wire.attr(6, Kind.ADDR)
    note: bytes = wire.attr(7, Kind.BYTES, required=False, default=b"", max_len=16)
    items: tuple[int, ...] = wire.attr(8, Kind.U16, repeated=True)

    def __post_init__(self) -> None:
        # a message-level rule, to see the decoder map it to "invalid-value"
        if self.u8 == 0xFF:
            raise ValueError("u8 = 255 is reserved")


SAMPLE_IDS = frozenset(range(1, 9))
INT_SIZES = {1: 1, 2: 2, 3: 4, 4: 8, 8: 2}  # attribute id -> size of its integer


@pytest.fixture(scope="module", autouse=True)
def sample_registered() -> Iterator[None]:
    registry, by_class = wire._REGISTRY, wire._BY_CLASS
    saved = registry.pop(int(MsgType.TEST_PAYLOAD), None)
    wire.message(MsgType.TEST_PAYLOAD)(Sample)
    try:
        yield
    finally:
        del registry[int(MsgType.TEST_PAYLOAD)]
        del by_class[Sample]
        if saved is not None:
            registry[int(MsgType.TEST_PAYLOAD)] = saved


samples = st.builds(
    Sample,
    u8=st.integers(0, 254),
    u16=st.integers(0, 0xFFFF),
    u32=st.integers(0, 0xFFFFFFFF),
    u64=st.integers(0, 2**64 - 1),
    blob=st.binary(max_size=64),
    addr=st.binary(min_size=4, max_size=4) | st.binary(min_size=16, max_size=16),
    note=st.binary(max_size=16),
    items=st.lists(st.integers(0, 0xFFFF), max_size=8).map(tuple),
)
flags = st.integers(0, 255)


def split(encoded: bytes) -> tuple[int, int, list[tuple[int, bytes]]]:
    """(type, flags, [(attr id, value)]) of one encoded message, by hand."""
    msg_type, msg_flags, length = wire.MSG_HEADER.unpack_from(encoded)
    assert length == len(encoded) - wire.MSG_HEADER.size
    attrs, pos = [], wire.MSG_HEADER.size
    while pos < len(encoded):
        attr_id, alen = wire.ATTR_HEADER.unpack_from(encoded, pos)
        pos += wire.ATTR_HEADER.size
        attrs.append((attr_id, encoded[pos : pos + alen]))
        pos += alen
    return msg_type, msg_flags, attrs


def join(msg_type: int, msg_flags: int, attrs: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(wire.ATTR_HEADER.pack(i, len(v)) + v for i, v in attrs)
    return wire.MSG_HEADER.pack(msg_type, msg_flags, len(body)) + body


def decode_reason(data: bytes) -> str:
    with pytest.raises(WireError) as err:
        wire.decode_messages(data)
    return err.value.reason


# -- round trips ------------------------------------------------------------------


@given(samples, flags)
def test_decode_of_encode_is_identity(msg: Sample, msg_flags: int) -> None:
    encoded = wire.encode_message(msg, msg_flags)
    assert wire.decode_message(encoded) == msg
    assert wire.encoded_size(msg) == len(wire.encode_message(msg))
    msg_type, got_flags, _ = split(encoded)
    assert (msg_type, got_flags) == (MsgType.TEST_PAYLOAD, msg_flags)


@given(st.lists(samples, max_size=6))
def test_sequences_round_trip(msgs: list[Sample]) -> None:
    assert wire.decode_messages(wire.encode_messages(msgs)) == msgs


@given(samples)
def test_encoding_is_canonical(msg: Sample) -> None:
    """Attributes come out in declaration order, each repeated value once."""
    _, _, attrs = split(wire.encode_message(msg))
    ids = [i for i, _ in attrs]
    assert ids == [1, 2, 3, 4, 5, 6, 7] + [8] * len(msg.items)
    assert wire.encode_message(wire.decode_message(wire.encode_message(msg))) == (
        wire.encode_message(msg)
    )


# -- learned shapes (the decoder's fast path) ----------------------------------------


def sample_shapes() -> dict[int, Any]:
    return wire._REGISTRY[int(MsgType.TEST_PAYLOAD)].shapes


@given(samples)
def test_a_learned_shape_decodes_exactly_like_the_generic_decoder(msg: Sample) -> None:
    encoded = wire.encode_message(msg)
    body_len = len(encoded) - wire.MSG_HEADER.size
    sample_shapes().clear()  # other tests may have filled the table
    assert wire.decode_message(encoded) == msg  # generic: learns the shape
    shape = sample_shapes()[body_len]
    if len(msg.items) > 1:
        assert shape is None  # a repeated value more than once is no shape
        return
    assert shape is not None
    assert shape.decode(wire._REGISTRY[int(MsgType.TEST_PAYLOAD)], memoryview(encoded)[4:]) == msg
    assert wire.decode_message(encoded) == msg  # through the shape


def test_a_body_of_a_learned_length_but_another_layout_takes_the_generic_path() -> None:
    base = dict(u8=1, u16=2, u32=3, u64=4, addr=bytes(4), items=(5,))
    first = Sample(blob=b"xy", note=b"", **base)
    other = Sample(blob=b"", note=b"xy", **base)  # same length, attribute lengths differ
    sample_shapes().clear()
    unknown = join(*_with_unknown_attribute(first))  # same length as neither: own shape
    for msg in (first, other, first, other):
        assert wire.decode_message(wire.encode_message(msg)) == msg
    assert wire.decode_message(unknown) == first  # an unknown attribute is skipped...
    assert wire.decode_message(unknown) == first  # ...on the second sight as well


def _with_unknown_attribute(msg: Sample) -> tuple[int, int, list[tuple[int, bytes]]]:
    msg_type, msg_flags, attrs = split(wire.encode_message(msg))
    return msg_type, msg_flags, [*attrs, (999, b"new")]


def test_a_shaped_body_with_a_refused_value_is_invalid_value() -> None:
    msg = Sample(u8=1, u16=2, u32=3, u64=4, blob=b"", addr=bytes(4))
    encoded = wire.encode_message(msg)
    sample_shapes().clear()
    assert wire.decode_message(encoded) == msg
    assert sample_shapes()[len(encoded) - wire.MSG_HEADER.size] is not None
    msg_type, msg_flags, attrs = split(encoded)
    bad = join(msg_type, msg_flags, [(i, v if i != 1 else b"\xff") for i, v in attrs])
    assert decode_reason(bad) == "invalid-value"


def test_shapes_are_bounded_per_message_type() -> None:
    sample_shapes().clear()
    for size in range(wire.MAX_SHAPES + 20):
        msg = Sample(u8=1, u16=2, u32=3, u64=4, blob=bytes(size % 65), addr=bytes(4),
                     note=bytes(size // 65))  # fmt: skip
        assert wire.decode_message(wire.encode_message(msg)) == msg
    assert len(sample_shapes()) == wire.MAX_SHAPES


def test_a_failed_decode_teaches_no_shape() -> None:
    msg = Sample(u8=1, u16=2, u32=3, u64=4, blob=b"abc", addr=bytes(4))
    msg_type, msg_flags, attrs = split(wire.encode_message(msg))
    dup = join(msg_type, msg_flags, [*attrs[:-1], attrs[0]])  # u8 twice, no note
    body_len = len(dup) - wire.MSG_HEADER.size
    sample_shapes().clear()
    assert decode_reason(dup) == "duplicate-attribute"
    assert body_len not in sample_shapes()


# -- truncation and garbage ---------------------------------------------------------


@given(samples)
def test_every_truncation_raises_wire_error(msg: Sample) -> None:
    encoded = wire.encode_message(msg)
    for cut in range(len(encoded)):
        with pytest.raises(WireError) as err:
            wire.decode_message(encoded[:cut])
        assert err.value.reason == ("bad-message-count" if cut == 0 else "truncated-message")


@given(samples)
def test_every_truncation_of_a_sequence_is_refused_or_a_whole_prefix(msg: Sample) -> None:
    two = wire.encode_messages([msg, msg])
    boundary = len(two) // 2
    for cut in range(len(two)):
        if cut in (0, boundary):
            assert wire.decode_messages(two[:cut]) == [msg] * (cut // boundary)
        else:
            assert decode_reason(two[:cut]) == "truncated-message"


@given(samples, st.data())
def test_truncated_body_with_a_consistent_length_is_refused_or_a_prefix(
    msg: Sample, data: st.DataObject
) -> None:
    """Cut the body and fix the message length: the decoder must refuse, or
    (cut between attributes) return only what the prefix really holds."""
    encoded = wire.encode_message(msg)
    cut = data.draw(st.integers(wire.MSG_HEADER.size, len(encoded) - 1), label="cut")
    body = encoded[wire.MSG_HEADER.size : cut]
    short = wire.MSG_HEADER.pack(MsgType.TEST_PAYLOAD, 0, len(body)) + body
    try:
        got = wire.decode_message(short)
    except WireError as exc:
        assert exc.reason in {
            "truncated-attribute",
            "bad-attribute-length",
            "missing-attribute",
        }
        return
    # only the trailing optional and repeated attributes may be missing
    assert dataclasses.replace(got, note=msg.note, items=msg.items) == msg
    assert got.note in (msg.note, b"")
    assert got.items == msg.items[: len(got.items)]


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_wire_error(data: bytes) -> None:
    for decode in (wire.decode_messages, wire.decode_message, wire.decode_header):
        try:
            decode(data)
        except WireError as exc:
            assert exc.reason
            assert isinstance(exc.reason, str)


@settings(max_examples=300)
@given(samples, st.data())
def test_corrupted_messages_raise_only_wire_error(msg: Sample, data: st.DataObject) -> None:
    encoded = bytearray(wire.encode_message(msg))
    for _ in range(data.draw(st.integers(1, 4), label="corruptions")):
        pos = data.draw(st.integers(0, len(encoded) - 1), label="pos")
        encoded[pos] = data.draw(st.integers(0, 255), label="byte")
    try:
        wire.decode_messages(bytes(encoded))
    except WireError as exc:
        assert exc.reason


def _protocol_message_types() -> list[int]:
    """Every message type the protocol modules register (those that import)."""
    for module in ("availability", "broadcast", "ranges", "ct_messages"):
        try:
            importlib.import_module(f"availability_manager.{module}")
        except ImportError:  # a layer not written yet: fuzz what exists
            continue
    return sorted(wire._REGISTRY)


def _fuzzed_value(data: st.DataObject) -> bytes:
    return data.draw(
        st.sampled_from([1, 2, 4, 8, 16]).flatmap(lambda n: st.binary(min_size=n, max_size=n))
        | st.binary(max_size=40),
        label="value",
    )


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_structured_fuzz_of_every_registered_message_raises_only_wire_error(
    data: st.DataObject,
) -> None:
    """Well-framed messages of every registered type, with attributes of
    plausible sizes: any refusal (including a message class's own validation)
    must surface as WireError."""
    msg_type = data.draw(st.sampled_from(_protocol_message_types()), label="type")
    ids = sorted(s.attr_id for s in wire._REGISTRY[msg_type].attrs)
    attr_ids = st.sampled_from(ids) | st.integers(0, 0xFFFF)
    attrs = [
        (data.draw(attr_ids, label="id"), _fuzzed_value(data))
        for _ in range(data.draw(st.integers(0, 12), label="count"))
    ]
    try:
        wire.decode_message(join(msg_type, 0, attrs))
    except WireError as exc:
        assert exc.reason


# -- forward compatibility --------------------------------------------------------------


@given(samples, st.data())
def test_unknown_attributes_are_skipped(msg: Sample, data: st.DataObject) -> None:
    msg_type, msg_flags, attrs = split(wire.encode_message(msg))
    for _ in range(data.draw(st.integers(1, 3), label="extra")):
        unknown = data.draw(st.integers(0, 0xFFFF).filter(lambda i: i not in SAMPLE_IDS))
        value = data.draw(st.binary(max_size=100), label="value")
        attrs.insert(data.draw(st.integers(0, len(attrs)), label="at"), (unknown, value))
    assert wire.decode_message(join(msg_type, msg_flags, attrs)) == msg


unknown_types = st.integers(0, 255).filter(lambda t: t not in wire._REGISTRY)


@given(samples, unknown_types, st.binary(max_size=50))
def test_unknown_message_types_are_rejected(msg: Sample, msg_type: int, body: bytes) -> None:
    assume(msg_type != MsgType.TEST_PAYLOAD)
    unknown = wire.MSG_HEADER.pack(msg_type, 0, len(body)) + body
    assert decode_reason(unknown) == "unknown-message"
    assert decode_reason(wire.encode_message(msg) + unknown) == "unknown-message"
    assert decode_reason(unknown + wire.encode_message(msg)) == "unknown-message"


@given(samples, unknown_types, st.binary(max_size=50), flags)
def test_unknown_optional_messages_are_skipped(
    msg: Sample, msg_type: int, body: bytes, other_flags: int
) -> None:
    assume(msg_type != MsgType.TEST_PAYLOAD)
    optional = wire.MSG_HEADER.pack(msg_type, other_flags | wire.MSG_FLAG_OPTIONAL, len(body))
    optional += body
    encoded = wire.encode_message(msg)
    assert wire.decode_messages(optional + encoded + optional) == [msg]
    assert wire.decode_messages(optional) == []


@given(samples)
def test_optional_flag_on_a_known_message_still_decodes_it(msg: Sample) -> None:
    assert wire.decode_messages(wire.encode_message(msg, wire.MSG_FLAG_OPTIONAL)) == [msg]


# -- attribute rules ---------------------------------------------------------------


@given(samples, st.sampled_from(sorted(SAMPLE_IDS - {8})))
def test_duplicate_attributes_are_rejected(msg: Sample, attr_id: int) -> None:
    msg_type, msg_flags, attrs = split(wire.encode_message(msg))
    value = next(v for i, v in attrs if i == attr_id)
    attrs.append((attr_id, value))
    assert decode_reason(join(msg_type, msg_flags, attrs)) == "duplicate-attribute"


@given(samples, st.sampled_from([1, 2, 3, 4, 5, 6]))
def test_missing_required_attribute_is_rejected(msg: Sample, attr_id: int) -> None:
    msg_type, msg_flags, attrs = split(wire.encode_message(msg))
    attrs = [(i, v) for i, v in attrs if i != attr_id]
    assert decode_reason(join(msg_type, msg_flags, attrs)) == "missing-attribute"


@given(samples)
def test_missing_optional_and_repeated_attributes_take_defaults(msg: Sample) -> None:
    msg_type, msg_flags, attrs = split(wire.encode_message(msg))
    attrs = [(i, v) for i, v in attrs if i not in (7, 8)]
    got = wire.decode_message(join(msg_type, msg_flags, attrs))
    assert got == dataclasses.replace(msg, note=b"", items=())


@given(samples, st.sampled_from(sorted(INT_SIZES)), st.integers(0, 12))
def test_integer_of_wrong_size_is_rejected(msg: Sample, attr_id: int, size: int) -> None:
    assume(size != INT_SIZES[attr_id])
    msg_type, msg_flags, attrs = split(wire.encode_message(msg))
    attrs = [(i, v) for i, v in attrs if i != attr_id] + [(attr_id, bytes(size))]
    assert decode_reason(join(msg_type, msg_flags, attrs)) == "bad-attribute-length"


@given(samples, st.integers(0, 40).filter(lambda n: n not in (4, 16)))
def test_address_of_wrong_size_is_rejected(msg: Sample, size: int) -> None:
    msg_type, msg_flags, attrs = split(wire.encode_message(msg))
    attrs = [(i, v if i != 6 else bytes(size)) for i, v in attrs]
    assert decode_reason(join(msg_type, msg_flags, attrs)) == "bad-attribute-length"


@given(samples, st.integers(65, 300))
def test_oversized_bytes_attribute_is_rejected(msg: Sample, size: int) -> None:
    msg_type, msg_flags, attrs = split(wire.encode_message(msg))
    attrs = [(i, v if i != 5 else bytes(size)) for i, v in attrs]
    assert decode_reason(join(msg_type, msg_flags, attrs)) == "oversized-attribute"


@given(samples)
def test_message_validation_failure_is_invalid_value(msg: Sample) -> None:
    msg_type, msg_flags, attrs = split(wire.encode_message(msg))
    attrs = [(i, v if i != 1 else b"\xff") for i, v in attrs]
    assert decode_reason(join(msg_type, msg_flags, attrs)) == "invalid-value"


@given(samples, st.integers(1, 4))
def test_attribute_running_past_the_message_is_truncated(msg: Sample, extra: int) -> None:
    encoded = bytearray(wire.encode_message(msg))
    # grow the first attribute's length past the end of the body
    first_len = struct.unpack_from("!H", encoded, wire.MSG_HEADER.size + 2)[0]
    body_left = len(encoded) - wire.MSG_HEADER.size - wire.ATTR_HEADER.size
    struct.pack_into("!H", encoded, wire.MSG_HEADER.size + 2, body_left + extra)
    assert first_len < body_left + extra
    assert decode_reason(bytes(encoded)) == "truncated-attribute"


# -- encoder refusals ------------------------------------------------------------------


def sample(**changes: Any) -> Sample:
    base = Sample(1, 2, 3, 4, b"blob", bytes(4), b"", ())
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(
    "changes",
    [
        {"u8": 256},
        {"u16": -1},
        {"u32": 2**32},
        {"u64": 2**64},
        {"addr": bytes(5)},
        {"blob": bytes(65)},
        {"note": bytes(17)},
        {"items": (0x10000,)},
    ],
)
def test_encoder_refuses_values_that_do_not_fit(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        wire.encode_message(sample(**changes))


def test_encoder_refuses_unregistered_classes() -> None:
    with pytest.raises(TypeError):
        wire.encode_message(object())


def test_registry_refuses_bad_declarations() -> None:
    spare = cast(MsgType, 251)
    assert 251 not in wire._REGISTRY
    with pytest.raises(TypeError, match="registered twice"):
        wire.message(MsgType.TEST_PAYLOAD)(Sample)

    @dataclasses.dataclass(frozen=True)
    class DuplicateIds:
        a: int = wire.attr(1, Kind.U8)
        b: int = wire.attr(1, Kind.U8)

    @dataclasses.dataclass(frozen=True)
    class NoWire:
        a: int

    class NotADataclass:
        pass

    try:
        for cls, match in (
            (DuplicateIds, "duplicate"),
            (NoWire, "no wire"),
            (NotADataclass, "must be a dataclass"),
        ):
            with pytest.raises(TypeError, match=match):
                wire.message(spare)(cls)
    finally:
        assert wire._REGISTRY.pop(251, None) is None


def test_encoder_refuses_an_int_for_a_bytes_attribute() -> None:
    """bytes(3) would be three zero bytes: an int given for a BYTES field must be
    refused, not sent as zeros."""
    with pytest.raises(ValueError, match="expected bytes, got int"):
        wire.encode_message(sample(blob=3))


# -- datagram header ---------------------------------------------------------------------


headers = st.builds(
    wire.Header,
    version=st.integers(1, wire.WIRE_VERSION_MAX_ACCEPTED),
    key_id=st.integers(0, 255),
    sender=st.integers(0, 2**32 - 1),
    counter=st.integers(0, 2**64 - 1),
    length=st.integers(wire.TAG_SIZE, wire.MAX_DATAGRAM - wire.HEADER_SIZE),
)


@given(headers)
def test_header_round_trip(header: wire.Header) -> None:
    encoded = header.encode()
    assert len(encoded) == wire.HEADER_SIZE
    assert wire.decode_header(encoded + bytes(header.length)) == header


def header_reason(datagram: bytes) -> str:
    with pytest.raises(WireError) as err:
        wire.decode_header(datagram)
    return err.value.reason


@given(headers, st.binary(min_size=2, max_size=2).filter(lambda m: m != wire.MAGIC))
def test_header_bad_magic(header: wire.Header, magic: bytes) -> None:
    datagram = header.encode() + bytes(header.length)
    assert header_reason(magic + datagram[2:]) == "bad-magic"


@given(headers, st.sampled_from([0, *range(wire.WIRE_VERSION_MAX_ACCEPTED + 1, 256)]))
def test_header_unsupported_version(header: wire.Header, version: int) -> None:
    datagram = dataclasses.replace(header, version=version).encode() + bytes(header.length)
    assert header_reason(datagram) == "unsupported-version"


@given(headers, st.integers(1, 0xFFFF))
def test_header_reserved_must_be_zero(header: wire.Header, reserved: int) -> None:
    datagram = bytearray(header.encode() + bytes(header.length))
    struct.pack_into("!H", datagram, 18, reserved)
    assert header_reason(bytes(datagram)) == "bad-reserved"


@given(headers, st.integers(-wire.TAG_SIZE, 40).filter(lambda d: d != 0))
def test_header_length_must_match(header: wire.Header, delta: int) -> None:
    datagram = header.encode() + bytes(header.length + delta)
    expected = "oversized-datagram" if len(datagram) > wire.MAX_DATAGRAM else "bad-length"
    assert header_reason(datagram) == expected


@given(st.integers(0, wire.TAG_SIZE - 1))
def test_header_payload_shorter_than_a_tag(length: int) -> None:
    header = wire.Header(wire.WIRE_VERSION, 0, 1, 1, length)
    assert header_reason(header.encode() + bytes(length)) == "truncated-payload"


@given(st.binary(max_size=wire.HEADER_SIZE - 1))
def test_header_truncated(data: bytes) -> None:
    assert header_reason(data) == "truncated-header"


def test_header_oversized_datagram() -> None:
    header = wire.Header(wire.WIRE_VERSION, 0, 1, 1, wire.MAX_DATAGRAM)
    assert header_reason(header.encode() + bytes(wire.MAX_DATAGRAM)) == "oversized-datagram"
