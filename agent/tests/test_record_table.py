"""The peer's fast path and compact cache against their references.

- decode_ct_payload vs wire.decode_messages (plus to_connection, key and
  entry_hash of each entry record): same messages, same errors;
- RecordTable vs a table of Connections (ConnectionTable below, what the
  mirror was before it kept records): same digests, orders and entries;
- a ConntrackSync fed the fast items vs one fed the reference messages;
- the record encoder, the change test and the in-place UPDATE against the
  message class and the Connection comparisons they replace;
- an owner announcing from its record mirror vs the Connection rules
  (ReferenceOwner below): the same messages for any run of kernel events.
"""

from __future__ import annotations

import dataclasses
import random
import struct
from collections.abc import Iterable, Iterator

from hypothesis import given, settings
from hypothesis import strategies as st

from availability_manager import wire
from availability_manager.connection import (
    IPS_SYNC_MASK,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    Connection,
    Tuple,
    untranslated_reply,
)
from availability_manager.conntrack_sync import ConntrackSync
from availability_manager.ct_messages import (
    CtDelete,
    CtNew,
    CtNewResync,
    CtResyncDone,
    CtUpdate,
    encode_ct,
    helper_of,
    with_helper,
)
from availability_manager.record_table import (
    MORE,
    SAME,
    STATE_ONLY,
    UNKNOWN,
    EntryRecord,
    GroupIndex,
    RecordTable,
    decode_ct_payload,
    encode_ct_fast,
    encode_record,
    encode_record_generic,
    entry_hash,
    record_and_kind,
    record_change,
    record_connection,
    record_connection_generic,
)
from availability_manager.relevance import default_is_relevant

A, B = 1, 2
BUCKETS = 64
GROUPS = 8


class ConnectionTable(GroupIndex):
    """Entries as Connections, by key: the reference of RecordTable."""

    def __init__(self, groups: int) -> None:
        super().__init__(groups)
        self.entries: dict[bytes, Connection] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: bytes) -> Connection | None:
        return self.entries.get(key)

    def put(self, key: bytes, conn: Connection) -> None:
        self.remove(key)
        self.entries[key] = conn
        self._add(key, conn.bucket, entry_hash(conn))

    def remove(self, key: bytes) -> Connection | None:
        old = self.entries.pop(key, None)
        if old is not None:
            self._discard(key, old.bucket, entry_hash(old))
        return old

    def in_buckets(self, buckets: Iterable[int]) -> Iterator[tuple[bytes, Connection]]:
        for key in self.keys_in_buckets(buckets):
            yield key, self.entries[key]


@st.composite
def connections(draw: st.DrawFn) -> Connection:
    size = draw(st.sampled_from([4, 16]))
    addr = st.binary(min_size=size, max_size=size)
    proto = draw(st.sampled_from([PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_ICMPV6, 132, 47]))
    port = st.integers(0, 0xFFFF)
    orig = Tuple(draw(addr), draw(addr), draw(port), draw(port))
    nat = draw(st.booleans())
    reply = (
        Tuple(draw(addr), draw(addr), draw(port), draw(port))
        if nat
        else untranslated_reply(proto, orig)
    )
    conn = Connection(
        proto,
        orig,
        reply,
        state=draw(st.integers(0, 255)),
        status=draw(st.integers(0, 0xFFFFFFFF)),
        mark=draw(st.integers(0, 0xFFFFFFFF)),
        bucket=draw(st.integers(0, BUCKETS - 1)),
        seqadj=draw(st.sampled_from([(), (9, 0, 4, 0, 0, 0)])),
    )
    return with_helper(conn, draw(st.sampled_from(["", "", "ftp"])))


def ct_messages(conns: list[Connection], kinds: list[int], version: int) -> list[object]:
    out: list[object] = []
    for c, kind in zip(conns, kinds, strict=True):
        if kind == 0:
            out.append(CtNew.from_connection(c, version))
        elif kind == 1:
            out.append(CtNewResync.from_connection(c, version))
        elif kind == 2:
            out.append(CtUpdate(c.key, (c.state + 1) % 256, c.status & IPS_SYNC_MASK, c.mark))
        else:
            out.append(CtDelete(c.key))
    out.append(CtResyncDone(()))
    return out


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[object], int]:
    """CT messages as a sender of wire version 1 or 2 sends them, and the version."""
    conns = draw(st.lists(connections(), min_size=1, max_size=12))
    kinds = draw(st.lists(st.integers(0, 3), min_size=len(conns), max_size=len(conns)))
    version = draw(st.sampled_from([1, 2]))
    return ct_messages(conns, kinds, version), version


def check_same(fast: list[object], reference: list[object]) -> None:
    assert len(fast) == len(reference)
    for got, ref in zip(fast, reference, strict=True):
        if isinstance(got, EntryRecord):
            assert isinstance(ref, CtNew | CtNewResync)
            assert got.type_name == type(ref).__name__
            conn = ref.to_connection()
            assert got.to_connection() == conn
            assert type(got.to_connection()) is type(conn)
            assert (got.key, got.bucket, got.hash) == (conn.key, conn.bucket, entry_hash(conn))
        else:
            assert got == ref


@settings(max_examples=300, deadline=None)
@given(stream=streams())
def test_fast_payload_decode_equals_the_generic_decoder(stream: tuple[list[object], int]) -> None:
    msgs, _ = stream
    payload = b"".join(encode_ct(m) for m in msgs)
    fast = decode_ct_payload(payload)
    check_same(fast, wire.decode_messages(payload))
    # the fast path is taken for exactly the plain entries (no helper, no seqadj)
    plain = [isinstance(m, CtNew | CtNewResync) and not m.helper and not m.seqadj for m in msgs]
    assert [isinstance(m, EntryRecord) for m in fast] == plain


@settings(max_examples=150, deadline=None)
@given(stream=streams())
def test_fast_encoder_equals_the_generic_encoder(stream: tuple[list[object], int]) -> None:
    """encode_ct_fast writes a message as encode_ct does, and the entry
    records the fast decoder made back into the bytes they came from."""
    for msg in stream[0]:
        assert encode_ct_fast(msg) == encode_ct(msg)
        for item in decode_ct_payload(encode_ct(msg)):
            assert encode_ct_fast(item) == encode_ct(msg)


@settings(max_examples=400, deadline=None)
@given(
    conns=st.lists(connections(), min_size=1, max_size=4),
    cut=st.integers(0, 400),
    flips=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4),
)
def test_damaged_payloads_fail_alike_or_decode_alike(
    conns: list[Connection], cut: int, flips: list[tuple[int, int]]
) -> None:
    """Truncated or altered payloads: the fast path raises the reference's
    reason, or both decode to the same messages."""
    data = bytearray(b"".join(encode_ct(CtNew.from_connection(c)) for c in conns))
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    payload = bytes(data[: len(data) - cut % (len(data) + 1)])
    try:
        reference = wire.decode_messages(payload)
    except wire.WireError as exc:
        try:
            decode_ct_payload(payload)
        except wire.WireError as mine:
            assert mine.reason == exc.reason
        else:
            raise AssertionError(f"fast path accepted what the reference refuses: {exc}") from None
        return
    check_same(decode_ct_payload(payload), reference)


@settings(max_examples=150, deadline=None)
@given(
    pool=st.lists(connections(), min_size=1, max_size=20),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 19)), max_size=60),
    groups=st.sampled_from([frozenset({0}), frozenset({1, 3, 5}), frozenset(range(GROUPS))]),
)
def test_peer_cache_equals_the_reference_table(
    pool: list[Connection], ops: list[tuple[bool, int]], groups: frozenset[int]
) -> None:
    cache, table = RecordTable(GROUPS), ConnectionTable(GROUPS)
    for put, i in ops:
        c = pool[i % len(pool)]
        if put:
            cache.put(c.key, c)
            table.put(c.key, c)
        else:
            assert cache.remove(c.key) == (table.remove(c.key) is not None)
    assert len(cache) == len(table)
    assert cache.digests() == table.digests()
    assert cache.keys_in_groups(groups) == table.keys_in_groups(groups)
    buckets = range(BUCKETS)
    assert list(cache.in_buckets(buckets)) == list(table.in_buckets(buckets))
    for c in pool:
        assert cache.get(c.key) == table.get(c.key)
        assert (c.key in cache) == (table.get(c.key) is not None)


@settings(max_examples=100, deadline=None)
@given(stream=streams())
def test_a_receiver_fed_the_fast_path_ends_like_one_fed_the_reference(
    stream: tuple[list[object], int],
) -> None:
    msgs, version = stream
    payload = b"".join(encode_ct(m) for m in msgs)
    fast, ref = (
        ConntrackSync(
            B, BUCKETS, groups=GROUPS, wire_version=version, rng=random.Random(0), now=0.0
        )
        for _ in range(2)
    )
    for m in decode_ct_payload(payload):
        fast.receive(m, A, 0.0)
    for m in wire.decode_messages(payload):
        ref.receive(m, A, 0.0)
    assert fast.cache_entries(A) == ref.cache_entries(A)
    assert [type(c) for c in fast.cache_entries(A)] == [type(c) for c in ref.cache_entries(A)]
    assert fast.cache_digests(A) == ref.cache_digests(A)
    assert fast.stats == ref.stats
    assert fast.cached_in_buckets(frozenset(range(BUCKETS))) == ref.cached_in_buckets(
        frozenset(range(BUCKETS))
    )


@settings(max_examples=150, deadline=None)
@given(
    stream=streams(),
    buckets=st.sampled_from([BUCKETS, BUCKETS // 2]),
    limit=st.sampled_from([3, 1000]),
    source=st.sampled_from([A, B]),
)
def test_runs_of_records_received_at_once_end_like_one_by_one(
    stream: tuple[list[object], int], buckets: int, limit: int, source: int
) -> None:
    """receive_records (a payload's runs of plain entries at once) against
    receive per message, its reference: with records beyond the cluster's
    buckets, a cache at its limit and the node's own messages."""
    msgs, version = stream
    batched, single = (
        ConntrackSync(
            B, buckets, groups=GROUPS, wire_version=version, max_cache_entries=limit,
            rng=random.Random(0), now=0.0,
        )
        for _ in range(2)
    )  # fmt: skip
    decoded = decode_ct_payload(b"".join(encode_ct(m) for m in msgs))
    run: list[EntryRecord] = []
    for m in [*decoded, None]:
        if isinstance(m, EntryRecord):
            run.append(m)
            continue
        if run:
            batched.receive_records(run, source, 0.0)
            run = []
        if m is not None:
            batched.receive(m, source, 0.0)
    for m in decoded:
        single.receive(m, source, 0.0)
    assert batched.cache_entries(A) == single.cache_entries(A)
    assert batched.cache_digests(A) == single.cache_digests(A)
    assert batched.stats == single.stats
    assert batched.peers() == single.peers()


def test_a_bucket_beyond_the_cluster_is_rejected_on_the_fast_path_too() -> None:
    orig = Tuple(b"\xc6\x33\x64\x01", b"\xcb\x00\x71\x0a", 1000, 53)
    conn = Connection(PROTO_UDP, orig, orig.inverse(), bucket=BUCKETS)
    (rec,) = decode_ct_payload(encode_ct(CtNew.from_connection(conn)))
    assert isinstance(rec, EntryRecord)
    layer = ConntrackSync(B, BUCKETS, groups=GROUPS, rng=random.Random(0), now=0.0)
    layer.receive(rec, A, 0.0)
    assert layer.stats.rejected == {"bucket-out-of-range": 1}
    assert layer.cache_size(A) == 0


def test_the_four_layouts_are_the_encoder_s() -> None:
    """IPv4/IPv6, with and without NAT: the bodies this build sends are the
    lengths the fast path knows (60, 84, 88, 136 bytes)."""
    sizes = set()
    for size in (4, 16):
        orig = Tuple(bytes(size), bytes([1] * size), 1, 2)
        for reply in (orig.inverse(), Tuple(bytes([2] * size), bytes(size), 3, 4)):
            data = encode_ct(CtNew.from_connection(Connection(PROTO_TCP, orig, reply)))
            sizes.add(struct.unpack_from("!H", data, 2)[0])
            assert isinstance(decode_ct_payload(data)[0], EntryRecord)
    assert sizes == {60, 84, 88, 136}


@settings(max_examples=300, deadline=None)
@given(conn=connections(), swap=st.booleans())
def test_nat_equals_its_reference(conn: Connection, swap: bool) -> None:
    """Connection.nat compares fields; the reference builds the untranslated reply."""
    if swap:  # a reply that differs from the untranslated one only in its ports
        r = untranslated_reply(conn.proto, conn.orig)
        conn = Connection(conn.proto, conn.orig, Tuple(r.src, r.dst, r.dport, r.sport))
    assert conn.nat == (conn.reply != untranslated_reply(conn.proto, conn.orig))


@settings(max_examples=300, deadline=None)
@given(conn=connections())
def test_a_record_reads_back_as_the_generic_decoder_reads_it(conn: Connection) -> None:
    record = encode_record(conn)
    assert record_connection(record) == record_connection_generic(record) == conn
    assert type(record_connection(record)) is type(conn)
    assert record_connection(record).key == conn.key


# -- the owner's side: records against the Connection rules they replace ------


@settings(max_examples=300, deadline=None)
@given(conn=connections())
def test_the_record_encoder_equals_the_message_class(conn: Connection) -> None:
    record, kind = record_and_kind(conn)
    assert record == encode_record_generic(conn)
    # plain layouts exactly for entries without helper and offsets
    assert bool(kind) == (type(conn) is Connection and not conn.seqadj)


@st.composite
def variants(draw: st.DrawFn) -> tuple[Connection, Connection]:
    """Two states of one connection (same key), differing in any synced field."""
    old = draw(connections())
    new = dataclasses.replace(
        with_helper(old, ""),
        state=draw(st.sampled_from([old.state, (old.state + 1) % 256])),
        status=draw(st.sampled_from([old.status, old.status ^ 4])),
        mark=draw(st.sampled_from([old.mark, old.mark ^ 1])),
        bucket=draw(st.sampled_from([old.bucket, (old.bucket + 1) % BUCKETS])),
        seqadj=draw(st.sampled_from([old.seqadj, (), (9, 0, 4, 0, 0, 0)])),
        reply=draw(st.sampled_from([old.reply, untranslated_reply(old.proto, old.orig)])),
    )
    return old, with_helper(new, draw(st.sampled_from(["", "ftp", helper_of(old)])))


@settings(max_examples=250, deadline=None)
@given(pair=variants())
def test_the_change_test_on_records_equals_the_connection_comparison(
    pair: tuple[Connection, Connection],
) -> None:
    old, new = pair
    table = RecordTable(GROUPS)
    table.put(old.key, old)
    stored = table.stored(old.key)
    assert stored is not None
    record, kind = record_and_kind(new)
    change = record_change(stored, record, kind)
    state_only = (
        old.reply == new.reply
        and old.bucket == new.bucket
        and helper_of(old) == helper_of(new)
        and old.seqadj == new.seqadj
    )
    if old == new:
        assert change == SAME
    elif change == UNKNOWN:  # only for two generic records: the caller compares
        assert not record_and_kind(old)[1] and not kind
    else:
        assert change == (STATE_ONLY if state_only else MORE)


@settings(max_examples=300, deadline=None)
@given(conn=connections(), state=st.integers(0, 255), status=st.integers(0, 0xFFFFFFFF))
def test_an_update_patched_into_a_record_equals_the_decoded_way(
    conn: Connection, state: int, status: int
) -> None:
    fast, ref = RecordTable(GROUPS), ConnectionTable(GROUPS)
    for t in (fast, ref):
        t.put(conn.key, conn)
    patched = fast.restate(conn.key, state, status, conn.mark ^ 7)
    assert patched == bool(record_and_kind(conn)[1])  # in place for plain records only
    if patched:
        ref.put(conn.key, dataclasses.replace(conn, state=state, status=status,
                                              mark=conn.mark ^ 7))  # fmt: skip
        assert fast.get(conn.key) == ref.get(conn.key)
        assert fast.digests() == ref.digests()
        stored = fast.stored(conn.key)
        assert stored is not None and stored.endswith(encode_record(ref.entries[conn.key]))
    assert not RecordTable(GROUPS).restate(conn.key, state, status, 0)


class ReferenceOwner:
    """What an owner announces for kernel events, decided on Connections:
    the mirror's rules before it kept records (ConntrackSync._local_upsert,
    local_amend, local_destroy with the default relevance and status mask)."""

    def __init__(self) -> None:
        self.mirror: dict[bytes, Connection] = {}
        self.sent: list[tuple[object, ...]] = []

    def upsert(self, conn: Connection) -> None:
        key = conn.key
        if not default_is_relevant(conn):
            if self.mirror.pop(key, None) is not None:
                self.sent.append(("delete", key))
            return
        conn = conn.with_state(conn.state, conn.status & IPS_SYNC_MASK)
        old = self.mirror.get(key)
        if old is not None and old.seqadj and not conn.seqadj:
            conn = conn.with_seqadj(old.seqadj)
        if old == conn:
            return
        self.mirror[key] = conn
        if (
            old is not None
            and old.reply == conn.reply
            and old.bucket == conn.bucket
            and helper_of(old) == helper_of(conn)
            and old.seqadj == conn.seqadj
        ):
            self.sent.append(("update", key, conn.state, conn.status, conn.mark))
        else:
            self.sent.append(("new", conn))

    def amend(self, conn: Connection) -> None:
        old = self.mirror.get(conn.key)
        if old is not None:
            self.upsert(conn.with_state(old.state, conn.status))

    def destroy(self, conn: Connection) -> None:
        if self.mirror.pop(conn.key, None) is not None:
            self.sent.append(("delete", conn.key))


def sent_as_reference(msgs: list[object]) -> list[tuple[object, ...]]:
    """An owner's messages in ReferenceOwner's terms; an entry record must be
    byte for byte what the message class encodes."""
    out: list[tuple[object, ...]] = []
    for m in msgs:
        if isinstance(m, EntryRecord):
            conn = m.to_connection()
            assert m.record == encode_ct(CtNew.from_connection(conn))
            assert (m.key, m.bucket, m.hash, m.resync) == (conn.key, conn.bucket,
                                                           entry_hash(conn), False)  # fmt: skip
            out.append(("new", conn))
        elif isinstance(m, CtNew):
            out.append(("new", m.to_connection()))
        elif isinstance(m, CtUpdate):
            out.append(("update", m.key, m.state, m.status, m.mark))
        else:
            assert isinstance(m, CtDelete)
            out.append(("delete", m.key))
    return out


@settings(max_examples=200, deadline=None)
@given(
    states=st.lists(variants(), min_size=1, max_size=4),
    ops=st.lists(
        st.tuples(st.sampled_from(["new", "update", "amend", "destroy"]), st.integers(0, 7)),
        max_size=40,
    ),
)
def test_an_owner_announces_from_its_records_what_the_connection_rules_say(
    states: list[tuple[Connection, Connection]], ops: list[tuple[str, int]]
) -> None:
    """Kernel events over a few connections, each seen in two states (helpers,
    offsets, NAT, bucket, mark changes): the owner's messages, its mirror and
    its digests equal the reference's."""
    owner = ConntrackSync(A, BUCKETS, groups=GROUPS, rng=random.Random(0), now=0.0)
    ref = ReferenceOwner()
    for op, i in ops:
        conn = states[i % len(states)][i // len(states) % 2]
        if op in ("new", "update"):
            owner.local_new(conn, 0.0) if op == "new" else owner.local_update(conn, 0.0)
            ref.upsert(conn)
        elif op == "amend":
            owner.local_amend(conn, 0.0)
            ref.amend(conn)
        else:
            owner.local_destroy(conn, 0.0)
            ref.destroy(conn)
    assert sent_as_reference(list(owner.messages_to_send(0.0))) == ref.sent
    assert {c.key: c for c in owner.local_entries()} == ref.mirror
    reference = ConnectionTable(GROUPS)
    for key, conn in ref.mirror.items():
        reference.put(key, conn)
    assert owner.local_digests() == reference.digests()
