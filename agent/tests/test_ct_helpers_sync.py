"""Helper names and expectations in the conntrack sync (wire version 2).

ConntrackSync objects are connected by test_conntrack_sync's `Net` (real wire
codec, per-sender FIFO, fixed clock stepped by hand).
"""

from __future__ import annotations

import dataclasses

import pytest
from test_conntrack_sync import A, B, Net, conn

from availability_manager import wire
from availability_manager.connection import IPS_EXPECTED, PROTO_TCP, Connection, make_tuple
from availability_manager.ct_messages import (
    CtExpect,
    CtExpectDelete,
    CtNew,
    Expectation,
    HelperConnection,
    encode_ct,
    helper_of,
    with_helper,
)
from availability_manager.record_table import entry_hash

FTP_BUCKET = 5


def ftp_control(i: int = 0) -> Connection:
    return with_helper(conn(i, bucket=FTP_BUCKET), "ftp")


def pasv_expectation(master: Connection, port: int = 40000) -> Expectation:
    """What the FTP helper expects after a PASV reply: the client, from any
    port, to the server's announced port. Bucket unknown (0), as the kernel
    reports it."""
    m = master.orig
    return Expectation(
        master_proto=PROTO_TCP,
        master=m,
        proto=PROTO_TCP,
        expected=make_tuple("192.0.2.1", "198.51.100.80", 0, port),
        mask_src=b"\xff\xff\xff\xff",
        mask_sport=0,
        helper="ftp",
    )


def test_helper_connection_round_trips_and_equality_sees_the_helper() -> None:
    c = ftp_control()
    assert helper_of(c) == "ftp" and isinstance(c, HelperConnection)
    msg = wire.decode_message(encode_ct(CtNew.from_connection(c)))
    assert msg.to_connection() == c
    plain = with_helper(c, "")
    assert type(plain) is Connection and helper_of(plain) == ""
    assert plain != c and plain.key == c.key
    # the digest ignores the helper: v1 and v2 caches of one entry agree
    assert entry_hash(plain) == entry_hash(c)


def test_an_expectations_nat_round_trips_on_the_wire_and_is_validated() -> None:
    exp = dataclasses.replace(
        pasv_expectation(ftp_control()),
        nat_fn="nat-follow-master",
        nat_dir=1,
        nat_addr=bytes([192, 0, 2, 77]),
        nat_port=40001,
    )
    msg = CtExpect.from_expectation(exp)
    back = wire.decode_message(encode_ct(msg)).to_expectation()
    assert back == exp and back.nat_fn == "nat-follow-master" and back.nat_port == 40001
    plain = pasv_expectation(ftp_control())
    plain_msg = CtExpect.from_expectation(plain)
    assert (plain_msg.nat_fn, plain_msg.nat_dir, plain_msg.nat_addr) == ((), (), ())
    assert wire.decode_message(encode_ct(plain_msg)).to_expectation() == plain
    for bad in (
        dict(nat_fn="bad name!"),
        dict(nat_dir=2, nat_addr=bytes(4)),
        dict(nat_dir=1, nat_addr=bytes(16)),  # another family than the tuples
        dict(nat_addr=bytes(4)),  # an address without a direction
    ):
        with pytest.raises(ValueError):
            dataclasses.replace(plain, **bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):  # half a NAT on the wire
        dataclasses.replace(plain_msg, nat_dir=(1,))


def test_version_1_records_leave_the_helper_out() -> None:
    c = ftp_control()
    v1 = CtNew.from_connection(c, version=1)
    assert v1.helper == ()
    assert helper_of(wire.decode_message(encode_ct(v1)).to_connection()) == ""


@pytest.mark.parametrize(
    "change",
    [
        {"helper": b"f\xffp"},  # not ASCII
        {"helper": b"ftp helper"},  # not a name
        {"mask_src": b"\xff" * 16},  # mask of another family
        {"flags": 1 << 32},
    ],
)
def test_malformed_expectation_records_are_refused(change: dict[str, object]) -> None:
    good = CtExpect.from_expectation(pasv_expectation(ftp_control()))
    fields = {f.name: getattr(good, f.name) for f in dataclasses.fields(good)}
    fields.update(change)
    with pytest.raises((wire.WireError, ValueError)):
        # either the encoder refuses the value or the decoder does
        wire.decode_message(wire.encode_message(CtExpect(**fields)))  # type: ignore[arg-type]


def test_expectation_messages_are_optional_on_the_wire() -> None:
    exp = pasv_expectation(ftp_control())
    for msg in (CtExpect.from_expectation(exp), CtExpectDelete(exp.key)):
        encoded = encode_ct(msg)
        assert encoded[1] & wire.MSG_FLAG_OPTIONAL
        assert wire.decode_message(encoded) == msg


def test_helper_and_expectation_reach_the_peer_cache_with_the_masters_bucket() -> None:
    net = Net([A, B])
    net.join_all()
    a, b = net.nodes[A], net.nodes[B]
    master = ftp_control()
    a.local_new(master, net.now)
    a.local_expect_new(pasv_expectation(master), net.now)
    net.settle()
    assert [helper_of(c) for c in b.cache_entries(A)] == ["ftp"]
    (cached,) = b.cached_expectations(A)
    assert cached.bucket == FTP_BUCKET  # filled in from the master's entry
    assert b.cached_expectations_in_buckets(frozenset({FTP_BUCKET})) == [cached]
    assert b.cached_expectations_in_buckets(frozenset({FTP_BUCKET + 1})) == []


def test_a_helper_change_is_announced_as_a_new_record() -> None:
    # UPDATE does not carry the helper, so a helper attached later must be a NEW
    net = Net([A, B])
    net.join_all()
    plain = conn(1, bucket=FTP_BUCKET)
    net.nodes[A].local_new(plain, net.now)
    net.settle()
    net.nodes[A].local_update(with_helper(plain, "ftp"), net.now)
    net.settle()
    assert [helper_of(c) for c in net.nodes[B].cache_entries(A)] == ["ftp"]


def test_expectation_before_its_master_waits_for_it() -> None:
    # TFTP: the helper expects on the read request's first packet, before the
    # kernel confirms (and announces) the request's own entry
    net = Net([A, B])
    net.join_all()
    a = net.nodes[A]
    master = ftp_control()
    early = pasv_expectation(master)
    a.local_expect_new(early, net.now)
    net.settle()
    assert a.local_expectations() == [] and net.nodes[B].cached_expectations(A) == []
    a.local_new(master, net.now)
    net.settle()
    assert [e.bucket for e in net.nodes[B].cached_expectations(A)] == [FTP_BUCKET]
    # one whose master never comes (not synced) is never sent, and goes with its destroy
    orphan = pasv_expectation(ftp_control(9), 40009)
    a.local_expect_new(orphan, net.now)
    a.local_expect_destroy(orphan, net.now)
    a.local_new(ftp_control(9), net.now)
    net.settle()
    assert [e.expected.dport for e in net.nodes[B].cached_expectations(A)] == [40000]


def test_cached_expectations_go_with_their_own_delete_and_with_their_master() -> None:
    net = Net([A, B])
    net.join_all()
    a, b = net.nodes[A], net.nodes[B]
    m1, m2 = ftp_control(1), ftp_control(2)
    e1, e2 = pasv_expectation(m1, 40001), pasv_expectation(m2, 40002)
    for m, e in ((m1, e1), (m2, e2)):
        a.local_new(m, net.now)
        a.local_expect_new(e, net.now)
    net.settle()
    assert len(b.cached_expectations(A)) == 2
    a.local_expect_destroy(e1, net.now)  # used by its data connection
    net.settle()
    assert [e.expected.dport for e in b.cached_expectations(A)] == [40002]
    a.local_destroy(m2, net.now)  # the master goes, the kernel drops its expectations
    net.settle()
    assert b.cached_expectations(A) == []


def test_related_data_connection_is_synced_in_the_masters_bucket() -> None:
    net = Net([A, B])
    net.join_all()
    master = ftp_control()
    data = Connection(
        PROTO_TCP,
        make_tuple("192.0.2.1", "198.51.100.80", 51000, 40000),
        make_tuple("198.51.100.80", "192.0.2.1", 40000, 51000),
        status=IPS_EXPECTED,
        bucket=FTP_BUCKET,  # the kernel copied the master's mark
    )
    net.nodes[A].local_new(master, net.now)
    net.nodes[A].local_new(data, net.now)
    net.settle()
    assert {c.key for c in net.nodes[B].cache_entries(A)} == {master.key, data.key}


def ftp_at_version_1() -> tuple[Net, Connection]:
    """Two nodes speaking v1; A has an FTP control connection and its expectation."""
    net = Net([A, B], wire_version=1)
    net.join_all()
    master = ftp_control()
    net.nodes[A].local_new(master, net.now)
    net.nodes[A].local_expect_new(pasv_expectation(master), net.now)
    net.settle()
    return net, master


def test_at_version_1_nothing_new_is_sent_and_nothing_new_is_read() -> None:
    net, master = ftp_at_version_1()
    a, b = net.nodes[A], net.nodes[B]
    assert [helper_of(c) for c in b.cache_entries(A)] == [""]
    assert b.cached_expectations(A) == []
    assert a.stats.sent.get("CtExpect", 0) == 0
    # a v2 record reaching a node that speaks v1 is read as v1 reads it
    b.receive(CtNew.from_connection(master), A, net.now)
    b.receive(CtExpect.from_expectation(a.local_expectations()[0]), A, net.now)
    assert [helper_of(c) for c in b.cache_entries(A)] == [""]
    assert b.cached_expectations(A) == []
    assert b.stats.rejected["newer-than-cluster-version"] == 1


def test_rising_to_version_2_resends_helpers_and_expectations() -> None:
    net, _master = ftp_at_version_1()
    a, b = net.nodes[A], net.nodes[B]
    assert b.cached_expectations(A) == []
    for node in (a, b):
        node.set_wire_version(2, net.now)
    net.settle()
    assert a.stats.resyncs["wire-version"] == 1
    assert [helper_of(c) for c in b.cache_entries(A)] == ["ftp"]
    assert [e.bucket for e in b.cached_expectations(A)] == [FTP_BUCKET]
    # falling back to 1 starts nothing
    a.set_wire_version(1, net.now)
    assert a.stats.resyncs["wire-version"] == 1
