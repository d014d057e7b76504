"""Tables of conntrack entries in wire form (peers' caches and this node's
own mirror), and the peer's fast path from payload to cache.

Every peer caches every other node's connections, and every owner mirrors
its own, so the cost per record and the memory per entry decide the
cluster's connection rate (docs/benchmarks.md, "Sync path: where the time
goes"). A `RecordTable` holds each entry as its CT record (the encoded
CT_NEW / CT_NEW_RESYNC message), keyed by `Connection.key`, behind an
11-byte prefix with what the digests, the bucket index and the owner's
change test need (the entry hash, the bucket, the record's layout). Nothing
is decoded until a Connection is asked for: takeover, drain, late
injection, status views.

The owner encodes each new state of a connection once (`encode_record`);
the record is both what the mirror keeps and what goes to the peers, and
comparing it with the mirrored one tells "unchanged", "state only" (an
UPDATE) and "more" (a new announcement) without decoding.

`decode_ct_payload` is `wire.decode_messages` for reliable-broadcast payloads,
with one fast path: a CT_NEW / CT_NEW_RESYNC body laid out exactly as this
build encodes an entry without helper or sequence offsets (IPv4 or IPv6, with
or without NAT) becomes an `EntryRecord` (key, bucket, entry hash and the
record bytes) after one `unpack_from` and two hashes, without building the
message, its two Tuples and its Connection. Such a body passes every check
the generic decoder and the message's validation make (the layout fixes
every attribute's id and length, and every value of those kinds is in
range), so the reference (decode, `to_connection`, `key`, `entry_hash`)
gives the same; the property tests in test_record_table.py hold both to it.
Any other message takes the generic decoder, with its errors, in order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from collections.abc import Iterable, Iterator
from typing import Any

from .connection import (
    Connection,
    connection_unchecked,
    key_material,
    tuple_unchecked,
    untranslated_reply_ports,
)
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
    """The CT_NEW record of `conn` as a table keeps it and wire version 2
    carries it: decoding it gives `conn` back, helper and sequence offsets
    included. A plain entry (no helper, no offsets) is packed in one go."""
    return record_and_kind(conn)[0]


def encode_record_generic(conn: Connection) -> bytes:
    """`encode_record` through the message class (its reference)."""
    return _encode_message(CtNew.from_connection(conn, VERSION_HELPERS))


def record_and_kind(conn: Connection) -> tuple[bytes, int]:
    """(record, layout kind): kind 0 for a record only the generic decoder reads."""
    if type(conn) is not Connection or conn.seqadj:
        return encode_record_generic(conn), 0
    o, r = conn.orig, conn.reply
    n = len(o.src)
    if conn.nat:
        lay = _BY_FORM[n, True]
        body = lay.layout.pack(
            1, 1, conn.proto, 2, n, o.src, 3, n, o.dst, 4, 2, o.sport, 5, 2, o.dport,
            6, 1, conn.state, 7, 4, conn.status, 8, 4, conn.mark, 9, 2, conn.bucket,
            10, n, r.src, 11, n, r.dst, 12, 2, r.sport, 13, 2, r.dport,
        )  # fmt: skip
    else:
        lay = _BY_FORM[n, False]
        body = lay.layout.pack(
            1, 1, conn.proto, 2, n, o.src, 3, n, o.dst, 4, 2, o.sport, 5, 2, o.dport,
            6, 1, conn.state, 7, 4, conn.status, 8, 4, conn.mark, 9, 2, conn.bucket,
        )  # fmt: skip
    return lay.head + body, lay.kind


def record_connection(record: bytes | memoryview) -> Connection:
    """The Connection a cached record describes (it was validated when cached);
    a record of the common layouts is read with one unpack (what a takeover
    pays per injected entry)."""
    _type, _flags, length = MSG_HEADER.unpack_from(record)
    found = _entry_values(record, MSG_HEADER.size, length)
    if found is None or len(record) != MSG_HEADER.size + length:
        return record_connection_generic(record)
    layout, v = found
    proto, osrc, odst, osport, odport, state, status, mark, bucket = v[:9]
    if layout.nat:
        reply = tuple_unchecked(*v[9:])
    else:
        reply = tuple_unchecked(odst, osrc, *untranslated_reply_ports(proto, osport, odport))
    # the layout fixes every length and range the constructors would check
    orig = tuple_unchecked(osrc, odst, osport, odport)
    return connection_unchecked(proto, orig, reply, state, status, mark, bucket)


def record_connection_generic(record: bytes | memoryview) -> Connection:
    """`record_connection` by the generic decoder (its reference)."""
    msg = decode_message(record)
    assert isinstance(msg, CtNew | CtNewResync)  # what was cached: an entry record
    return msg.to_connection()


class EntryRecord:
    """A CT_NEW / CT_NEW_RESYNC taken by the fast path: what a cache needs,
    and the record itself (decoded only if a Connection is asked for)."""

    __slots__ = ("bucket", "hash", "key", "kind", "record", "resync")

    def __init__(
        self, key: bytes, bucket: int, hash: int, record: bytes, resync: bool, kind: int
    ) -> None:
        self.key = key
        self.bucket = bucket
        self.hash = hash
        self.record = record
        self.resync = resync
        self.kind = kind  # which of the plain layouts (never 0)

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
    kind: int  # 1..4, kept in a table's prefix (0 there: no plain layout)
    head: bytes  # the CT_NEW message header of a record of this layout
    # Where state, status and mark (ids 6-8, values and attribute headers)
    # lie in the record: two records of this layout that agree outside it
    # differ by what an UPDATE carries.
    state_window: slice


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
            start = MSG_HEADER.size + sum(4 + size for size in lengths[:5])
            out[layout.size] = _Layout(
                layout, tuple(range(1, count + 1)), tuple(lengths), nat,
                kind=len(out) + 1,
                head=MSG_HEADER.pack(int(MsgType.CT_NEW), 0, layout.size),
                state_window=slice(start, start + sum(4 + size for size in lengths[5:8])),
            )  # fmt: skip
    assert len(out) == 4  # the four body lengths differ
    return out


_LAYOUTS = _layouts()
# (address length, NAT) -> the layout, for the encoder
_BY_FORM = {(lay.lengths[1], lay.nat): lay for lay in _LAYOUTS.values()}
_BY_KIND = {lay.kind: lay for lay in _LAYOUTS.values()}
_RESYNC_TYPE = bytes([int(MsgType.CT_NEW_RESYNC)])


def encode_ct_fast(msg: object) -> bytes:
    """`ct_messages.encode_ct`, except that an `EntryRecord` is its record
    already (the owner's entries go out encoded once, by `encode_record`)."""
    if type(msg) is EntryRecord:
        return msg.record
    return encode_ct(msg)


def entry_record(
    key: bytes, bucket: int, hash: int, record: bytes, kind: int, resync: bool
) -> EntryRecord:
    """The owner's announcement of a plain record from `encode_record`
    (`kind` not 0): CT_NEW, or CT_NEW_RESYNC within a resync round."""
    return EntryRecord(key, bucket, hash, _RESYNC_TYPE + record[1:] if resync else record,
                       resync, kind)  # fmt: skip


def _entry_values(
    buf: bytes | memoryview, body: int, length: int
) -> tuple[_Layout, tuple[Any, ...]] | None:
    """(layout, attribute values) of an entry body of a known layout, else None."""
    layout = _LAYOUTS.get(length)
    if layout is None:
        return None
    values = layout.layout.unpack_from(buf, body)
    if values[0::3] != layout.ids or values[1::3] != layout.lengths:
        return None
    return layout, values[2::3]


def _values_hash(layout: _Layout, v: tuple[Any, ...]) -> int:
    """The entry hash of a plain record from its attribute values."""
    proto, osrc, odst, osport, odport, state, status, mark, bucket = v[:9]
    if layout.nat:
        rsrc, rdst, rsport, rdport = v[9:]
    else:
        rsrc, rdst = odst, osrc
        rsport, rdport = untranslated_reply_ports(proto, osport, odport)
    return hash_fields(proto, state, status, mark, bucket, osrc, odst, osport, odport,
                       rsrc, rdst, rsport, rdport)  # fmt: skip


def _fast_entry(
    view: memoryview, start: int, body: int, length: int, resync: bool
) -> EntryRecord | None:
    found = _entry_values(view, body, length)
    if found is None:
        return None
    layout, v = found
    proto, osrc, odst, osport, odport = v[:5]
    key = hashlib.blake2b(key_material(proto, osport, odport, osrc, odst), digest_size=8).digest()
    bucket, h = v[8], _values_hash(layout, v)
    return EntryRecord(key, bucket, h, bytes(view[start : body + length]), resync, layout.kind)


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


_PREFIX = struct.Struct("!QHB")  # entry hash, bucket, layout kind (0: generic)
_P = _PREFIX.size


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


class RecordTable(GroupIndex):
    """Entries as records (see the module docstring): a peer's cache, or the
    owner's mirror. Same surface and iteration orders as a table of
    Connections (the reference in test_record_table.py)."""

    __slots__ = ("_records",)

    def __init__(self, groups: int) -> None:
        super().__init__(groups)
        self._records: dict[bytes, bytes] = {}  # key -> prefix + record

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: bytes) -> bool:
        return key in self._records

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._records)

    def keys(self) -> Iterable[bytes]:
        return self._records.keys()

    def get(self, key: bytes) -> Connection | None:
        stored = self._records.get(key)
        return None if stored is None else stored_connection(stored)

    def stored(self, key: bytes) -> bytes | None:
        """The entry as kept (prefix and record), for `record_change` and
        `stored_connection`; None if the key is not here."""
        return self._records.get(key)

    def bucket_of(self, key: bytes) -> int | None:
        stored = self._records.get(key)
        return None if stored is None else _PREFIX.unpack_from(stored)[1]

    def put(self, key: bytes, conn: Connection) -> None:
        record, kind = record_and_kind(conn)
        self.put_record(key, conn.bucket, entry_hash(conn), record, kind)

    def put_record(self, key: bytes, bucket: int, hash: int, record: bytes, kind: int) -> None:
        """Keep a record whose key, bucket, entry hash and layout kind are
        known; a known key is replaced."""
        self.remove(key)
        self._records[key] = _PREFIX.pack(hash, bucket, kind) + record
        self._add(key, bucket, hash)

    def restate(self, key: bytes, state: int, status: int, mark: int) -> bool:
        """An UPDATE applied to a plain record in place (its bytes patched, its
        hash recomputed, nothing decoded into objects); False if the key is
        unknown or its record is not plain (the caller takes the generic way)."""
        stored = self._records.get(key)
        if stored is None:
            return False
        hash, bucket, kind = _PREFIX.unpack_from(stored)
        if not kind:
            return False
        lay = _BY_KIND[kind]
        w = lay.state_window
        record = b"".join((
            stored[_P : _P + w.start],
            _STATE_ATTRS.pack(6, 1, state, 7, 4, status, 8, 4, mark),
            stored[_P + w.stop :],
        ))  # fmt: skip
        new_hash = _values_hash(lay, lay.layout.unpack_from(record, MSG_HEADER.size)[2::3])
        self._discard(key, bucket, hash)
        self._records[key] = _PREFIX.pack(new_hash, bucket, kind) + record
        self._add(key, bucket, new_hash)
        return True

    def remove(self, key: bytes) -> bool:
        stored = self._records.pop(key, None)
        if stored is None:
            return False
        hash, bucket, _kind = _PREFIX.unpack_from(stored)
        self._discard(key, bucket, hash)
        return True

    def in_buckets(self, buckets: Iterable[int]) -> Iterator[tuple[bytes, Connection]]:
        for key in self.keys_in_buckets(buckets):
            yield key, stored_connection(self._records[key])

    def connections(self) -> list[Connection]:
        return [stored_connection(s) for s in self._records.values()]


_STATE_ATTRS = struct.Struct("!HHBHHIHHI")  # state, status, mark with their headers

# What a new record of an entry changes against the one kept (record_change)
SAME, STATE_ONLY, MORE, UNKNOWN = "same", "state-only", "more", "unknown"


def record_change(stored: bytes, record: bytes, kind: int) -> str:
    """How `record` (kind `kind`, from `encode_record`) differs from the kept
    entry `stored`: SAME; STATE_ONLY (state, status or mark: an UPDATE says
    it); MORE (the tuples, bucket, helper or offsets: announce the entry
    again); UNKNOWN when both are generic records (decode and compare)."""
    if len(stored) == _P + len(record) and stored.endswith(record):
        return SAME
    old_kind = stored[_P - 1]
    if not old_kind and not kind:
        return UNKNOWN
    if old_kind != kind:
        return MORE  # a plain record against a generic one: helper or offsets differ
    w = _BY_KIND[kind].state_window
    if stored[_P : _P + w.start] == record[: w.start] and stored[_P + w.stop :] == record[w.stop :]:
        return STATE_ONLY
    return MORE


def stored_plain(stored: bytes) -> bool:
    """Whether a kept entry's record is of a plain layout (no helper, no offsets)."""
    return stored[_P - 1] != 0


def stored_entry_record(key: bytes, stored: bytes, resync: bool) -> EntryRecord:
    """The announcement of a kept plain entry (a resync round re-sends it)."""
    hash, bucket, kind = _PREFIX.unpack_from(stored)
    return entry_record(key, bucket, hash, stored[_P:], kind, resync)


def stored_connection(stored: bytes) -> Connection:
    """The Connection a kept entry describes."""
    return record_connection(memoryview(stored)[_P:])
