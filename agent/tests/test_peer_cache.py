"""The peer's fast path and compact cache against their references.

- decode_ct_payload vs wire.decode_messages (plus to_connection, key and
  entry_hash of each entry record): same messages, same errors;
- PeerCache vs the mirror's _Table: same digests, orders and entries;
- a ConntrackSync fed the fast items vs one fed the reference messages.
"""

from __future__ import annotations

import random
import struct

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
from availability_manager.conntrack_sync import ConntrackSync, _Table, entry_hash
from availability_manager.ct_messages import (
    CtDelete,
    CtNew,
    CtNewResync,
    CtResyncDone,
    CtUpdate,
    encode_ct,
    with_helper,
)
from availability_manager.peer_cache import (
    EntryRecord,
    PeerCache,
    decode_ct_payload,
    encode_ct_fast,
    encode_record,
    record_connection,
    record_connection_generic,
)

A, B = 1, 2
BUCKETS = 64
GROUPS = 8


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


@settings(max_examples=300, deadline=None)
@given(stream=streams())
def test_fast_encoder_equals_the_generic_encoder(stream: tuple[list[object], int]) -> None:
    for msg in stream[0]:
        assert encode_ct_fast(msg) == encode_ct(msg)


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
    cache, table = PeerCache(GROUPS), _Table(GROUPS)
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
