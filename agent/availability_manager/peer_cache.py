"""Peer caches in wire form, and the peer's fast path from payload to cache.

Every peer caches every other node's connections, so a peer's cost per
record and its memory per entry decide the cluster's connection rate
(docs/benchmarks.md, "Sync path: where the time goes"). A cache holds each
entry as the CT record it arrived in (the encoded CT_NEW / CT_NEW_RESYNC
message), keyed by `Connection.key`, behind a 10-byte prefix with what the
digests and the bucket index need (the entry hash and the bucket). Nothing
is decoded until a Connection is asked for: takeover, drain, late injection,
status views.

`decode_ct_payload` is `wire.decode_messages` for reliable-broadcast payloads,
with one fast path: a CT_NEW / CT_NEW_RESYNC body laid out exactly as this
build encodes an entry without helper or sequence offsets (IPv4 or IPv6, with
or without NAT) becomes an `EntryRecord` (key, bucket, entry hash and the
record bytes) after one `unpack_from` and two hashes, without building the
message, its two Tuples and its Connection. Such a body passes every check
the generic decoder and the message's validation make (the layout fixes
every attribute's id and length, and every value of those kinds is in
range), so the reference (decode, `to_connection`, `key`, `entry_hash`)
gives the same; the property tests in test_peer_cache.py hold both to it.
Any other message takes the generic decoder, with its errors, in order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from collections.abc import Iterable, Iterator
from typing import Any

from .connection import Connection, Tuple, key_material, untranslated_reply_ports
from .ct_messages import VERSION_HELPERS, CtNew, CtNewResync, encode_ct
from .wire import MSG_HEADER, Kind, MsgType, WireError, decode_message, decode_messages
from .wire import encode_message as _encode_message

_MOD64 = 1 << 64
_HASH_HEAD = struct.Struct("!BBIIHHHHH")
_ENTRY_PERSON = b"fwcl-ct-entry"


def hash_fields(
    proto: int, state: int, status: int, mark: int, bucket: int,
    osrc: bytes, odst: bytes, osport: int, odport: int,
    rsrc: bytes, rdst: bytes, rsport: int, rdport: int,
) -> int:  # fmt: skip
    """64-bit hash of every synced field of an entry (see conntrack_sync.entry_hash)."""
    material = (
        _HASH_HEAD.pack(proto, state, status, mark, bucket, osport, odport, rsport, rdport)
        + osrc + odst + rsrc + rdst
    )  # fmt: skip
    digest = hashlib.blake2b(material, digest_size=8, person=_ENTRY_PERSON).digest()
    return int.from_bytes(digest, "big")


def entry_hash(conn: Connection) -> int:
    """64-bit hash of every synced field of an entry; group digests are sums of these."""
    o, r = conn.orig, conn.reply
    return hash_fields(
        conn.proto, conn.state, conn.status, conn.mark, conn.bucket,
        o.src, o.dst, o.sport, o.dport, r.src, r.dst, r.sport, r.dport,
    )  # fmt: skip


def encode_record(conn: Connection) -> bytes:
    """The CT record a cache keeps for `conn` when it did not arrive as one
    (an update applied, a message that took the generic path): decoding it
    gives `conn` back, helper and sequence offsets included."""
    return _encode_message(CtNew.from_connection(conn, VERSION_HELPERS))


def record_connection(record: bytes | memoryview) -> Connection:
    """The Connection a cached record describes (it was validated when cached);
    a record of the common layouts is read with one unpack (what a takeover
    pays per injected entry)."""
    _type, _flags, length = MSG_HEADER.unpack_from(record)
    found = _entry_values(record, MSG_HEADER.size, length)
    if found is None or len(record) != MSG_HEADER.size + length:
        return record_connection_generic(record)
    nat, v = found
    proto, osrc, odst, osport, odport, state, status, mark, bucket = v[:9]
    if nat:
        reply = Tuple(*v[9:])
    else:
        reply = Tuple(odst, osrc, *untranslated_reply_ports(proto, osport, odport))
    return Connection(proto, Tuple(osrc, odst, osport, odport), reply, state, status, mark, bucket)


def record_connection_generic(record: bytes | memoryview) -> Connection:
    """`record_connection` by the generic decoder (its reference)."""
    msg = decode_message(record)
    assert isinstance(msg, CtNew | CtNewResync)  # what was cached: an entry record
    return msg.to_connection()


class EntryRecord:
    """A CT_NEW / CT_NEW_RESYNC taken by the fast path: what a cache needs,
    and the record itself (decoded only if a Connection is asked for)."""

    __slots__ = ("bucket", "hash", "key", "record", "resync")

    def __init__(self, key: bytes, bucket: int, hash: int, record: bytes, resync: bool) -> None:
        self.key = key
        self.bucket = bucket
        self.hash = hash
        self.record = record
        self.resync = resync

    @property
    def type_name(self) -> str:
        """The message class this record stands for (for the received counters)."""
        return "CtNewResync" if self.resync else "CtNew"

    def to_connection(self) -> Connection:
        return record_connection(self.record)


@dataclasses.dataclass(frozen=True)
class _Layout:
    """The exact body of an entry record without helper or seqadj, for one
    address length, with or without the reply tuple (NAT)."""

    layout: struct.Struct  # id, length, value per attribute
    ids: tuple[int, ...]
    lengths: tuple[int, ...]
    nat: bool


_ENTRY_TYPES = {int(MsgType.CT_NEW): False, int(MsgType.CT_NEW_RESYNC): True}
_VALUE_FORMATS = {Kind.U8: ("B", 1), Kind.U16: ("H", 2), Kind.U32: ("I", 4)}


def _layouts() -> dict[int, _Layout]:
    """Body length -> layout, built from CtNew's attribute declarations
    (ids 1-9: original tuple and state; 10-13: the reply tuple, for NAT)."""
    specs = [
        f.metadata["wire"][:2]
        for f in dataclasses.fields(CtNew)
        if f.init and f.metadata["wire"][0] <= 13
    ]
    assert [i for i, _ in specs] == list(range(1, 14))
    out: dict[int, _Layout] = {}
    for addr in (4, 16):
        for nat in (False, True):
            fmt, lengths = ["!"], []
            for attr_id, kind in specs[: 13 if nat else 9]:
                code, size = _VALUE_FORMATS.get(kind, (f"{addr}s", addr))
                assert kind in _VALUE_FORMATS or kind is Kind.ADDR, attr_id
                fmt.append("HH" + code)
                lengths.append(size)
            layout = struct.Struct("".join(fmt))
            count = len(lengths)
            out[layout.size] = _Layout(layout, tuple(range(1, count + 1)), tuple(lengths), nat)
    assert len(out) == 4  # the four body lengths differ
    return out


_LAYOUTS = _layouts()
# (address length, NAT) -> the layout, for the encoder
_BY_FORM = {(lay.lengths[1], lay.nat): lay for lay in _LAYOUTS.values()}
_ENTRY_MSG_TYPES: dict[type, int] = {
    CtNew: int(MsgType.CT_NEW),
    CtNewResync: int(MsgType.CT_NEW_RESYNC),
}


def encode_ct_fast(msg: object) -> bytes:
    """`ct_messages.encode_ct`, with one pack for an entry record of the
    layouts above (the owner encodes one per new connection)."""
    msg_type = _ENTRY_MSG_TYPES.get(type(msg))
    if msg_type is None:
        return encode_ct(msg)
    assert isinstance(msg, CtNew | CtNewResync)
    if msg.helper or msg.seqadj:
        return encode_ct(msg)
    n = len(msg.orig_src)
    if msg.reply_src:
        lay = _BY_FORM[n, True]
        body = lay.layout.pack(
            1, 1, msg.proto, 2, n, msg.orig_src, 3, n, msg.orig_dst,
            4, 2, msg.orig_sport, 5, 2, msg.orig_dport, 6, 1, msg.state,
            7, 4, msg.status, 8, 4, msg.mark, 9, 2, msg.bucket,
            10, n, msg.reply_src[0], 11, n, msg.reply_dst[0],
            12, 2, msg.reply_sport[0], 13, 2, msg.reply_dport[0],
        )  # fmt: skip
    else:
        lay = _BY_FORM[n, False]
        body = lay.layout.pack(
            1, 1, msg.proto, 2, n, msg.orig_src, 3, n, msg.orig_dst,
            4, 2, msg.orig_sport, 5, 2, msg.orig_dport, 6, 1, msg.state,
            7, 4, msg.status, 8, 4, msg.mark, 9, 2, msg.bucket,
        )  # fmt: skip
    return MSG_HEADER.pack(msg_type, 0, len(body)) + body


def _entry_values(
    buf: bytes | memoryview, body: int, length: int
) -> tuple[bool, tuple[Any, ...]] | None:
    """(NAT, attribute values) of an entry body of a known layout, else None."""
    layout = _LAYOUTS.get(length)
    if layout is None:
        return None
    values = layout.layout.unpack_from(buf, body)
    if values[0::3] != layout.ids or values[1::3] != layout.lengths:
        return None
    return layout.nat, values[2::3]


def _fast_entry(
    view: memoryview, start: int, body: int, length: int, resync: bool
) -> EntryRecord | None:
    found = _entry_values(view, body, length)
    if found is None:
        return None
    nat, v = found
    proto, osrc, odst, osport, odport, state, status, mark, bucket = v[:9]
    if nat:
        rsrc, rdst, rsport, rdport = v[9:]
    else:
        rsrc, rdst = odst, osrc
        rsport, rdport = untranslated_reply_ports(proto, osport, odport)
    key = hashlib.blake2b(key_material(proto, osport, odport, osrc, odst), digest_size=8).digest()
    h = hash_fields(proto, state, status, mark, bucket, osrc, odst, osport, odport,
                    rsrc, rdst, rsport, rdport)  # fmt: skip
    return EntryRecord(key, bucket, h, bytes(view[start : body + length]), resync)


def decode_ct_payload(payload: bytes | memoryview) -> list[object]:
    """The messages of one reliable-broadcast payload, as `wire.decode_messages`
    decodes them (all or WireError, in order), except that entry records of the
    common layouts come out as `EntryRecord`s."""
    view = memoryview(payload)
    out: list[object] = []
    pos = 0
    end = len(view)
    head = MSG_HEADER.size
    while pos < end:
        if end - pos < head:
            raise WireError("truncated-message")
        msg_type, _flags, length = MSG_HEADER.unpack_from(view, pos)
        body = pos + head
        if length > end - body:
            raise WireError("truncated-message", f"type {msg_type}")
        resync = _ENTRY_TYPES.get(msg_type)
        if resync is not None:
            rec = _fast_entry(view, pos, body, length, resync)
            if rec is not None:
                out.append(rec)
                pos = body + length
                continue
        out.extend(decode_messages(view[pos : body + length]))
        pos = body + length
    return out


_PREFIX = struct.Struct("!QH")  # entry hash, bucket


class GroupIndex:
    """Keys by bucket, and per-group (count, sum of entry hashes mod 2**64)
    digests kept up to date on every change (never recomputed from scratch).
    Iteration: buckets in ascending order, keys of a bucket in insertion order
    (dicts, never sets of bytes, whose order changes with the per-process hash
    seed), so rounds and takeover lists are the same in every run."""

    __slots__ = ("_by_bucket", "_groups", "counts", "sums")

    def __init__(self, groups: int) -> None:
        self._groups = groups
        self._by_bucket: dict[int, dict[bytes, None]] = {}
        self.counts = [0] * groups
        self.sums = [0] * groups

    def _add(self, key: bytes, bucket: int, hash: int) -> None:
        self._by_bucket.setdefault(bucket, {})[key] = None
        g = bucket % self._groups
        self.counts[g] += 1
        self.sums[g] = (self.sums[g] + hash) % _MOD64

    def _discard(self, key: bytes, bucket: int, hash: int) -> None:
        keys = self._by_bucket[bucket]
        del keys[key]
        if not keys:
            del self._by_bucket[bucket]
        g = bucket % self._groups
        self.counts[g] -= 1
        self.sums[g] = (self.sums[g] - hash) % _MOD64

    def digests(self) -> list[tuple[int, int]]:
        return list(zip(self.counts, self.sums, strict=True))

    def keys_in_groups(self, groups: frozenset[int]) -> list[bytes]:
        out: list[bytes] = []
        for bucket in sorted(self._by_bucket):
            if bucket % self._groups in groups:
                out.extend(self._by_bucket[bucket])
        return out

    def keys_in_buckets(self, buckets: Iterable[int]) -> Iterator[bytes]:
        for bucket in sorted(buckets):
            yield from self._by_bucket.get(bucket, {})

    def count_in_buckets(self, buckets: Iterable[int]) -> int:
        return sum(len(self._by_bucket.get(b, ())) for b in buckets)


class PeerCache(GroupIndex):
    """One peer's entries as records (see the module docstring). Same surface
    and iteration orders as the local mirror's table (conntrack_sync._Table),
    which is its reference."""

    __slots__ = ("_records",)

    def __init__(self, groups: int) -> None:
        super().__init__(groups)
        self._records: dict[bytes, bytes] = {}  # key -> prefix + record

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: bytes) -> bool:
        return key in self._records

    def keys(self) -> Iterable[bytes]:
        return self._records.keys()

    def get(self, key: bytes) -> Connection | None:
        stored = self._records.get(key)
        return None if stored is None else _stored_connection(stored)

    def put(self, key: bytes, conn: Connection) -> None:
        self.put_record(key, conn.bucket, entry_hash(conn), encode_record(conn))

    def put_record(self, key: bytes, bucket: int, hash: int, record: bytes) -> None:
        """Cache a record whose key, bucket and entry hash are known; a known
        key is replaced."""
        self.remove(key)
        self._records[key] = _PREFIX.pack(hash, bucket) + record
        self._add(key, bucket, hash)

    def remove(self, key: bytes) -> bool:
        stored = self._records.pop(key, None)
        if stored is None:
            return False
        hash, bucket = _PREFIX.unpack_from(stored)
        self._discard(key, bucket, hash)
        return True

    def in_buckets(self, buckets: Iterable[int]) -> Iterator[tuple[bytes, Connection]]:
        for key in self.keys_in_buckets(buckets):
            yield key, _stored_connection(self._records[key])

    def connections(self) -> list[Connection]:
        return [_stored_connection(s) for s in self._records.values()]


def _stored_connection(stored: bytes) -> Connection:
    return record_connection(memoryview(stored)[_PREFIX.size :])
