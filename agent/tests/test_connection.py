"""Connection records: keys, untranslated replies, NAT detection."""

from __future__ import annotations

import pytest

from availability_manager.connection import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    Connection,
    make_tuple,
    untranslated_reply,
)
from availability_manager.ct_messages import helper_of, with_helper


def test_port_protocols_reply_is_the_inverse() -> None:
    orig = make_tuple("192.0.2.100", "203.0.113.100", 40000, 80)
    assert untranslated_reply(PROTO_TCP, orig) == make_tuple(
        "203.0.113.100", "192.0.2.100", 80, 40000
    )


@pytest.mark.parametrize(
    ("proto", "src", "dst", "query", "answer"),
    [
        (PROTO_ICMP, "192.0.2.100", "203.0.113.100", 8, 0),
        (PROTO_ICMP, "192.0.2.100", "203.0.113.100", 13, 14),
        (PROTO_ICMPV6, "2001:db8::1", "2001:db8:1::1", 128, 129),
    ],
)
def test_icmp_reply_keeps_the_id_and_answers_the_type(
    proto: int, src: str, dst: str, query: int, answer: int
) -> None:
    orig = make_tuple(src, dst, 4242, query << 8)
    reply = untranslated_reply(proto, orig)
    assert reply == make_tuple(dst, src, 4242, answer << 8)
    assert not Connection(proto, orig, reply).nat


def test_nat_is_a_reply_that_is_not_the_untranslated_one() -> None:
    orig = make_tuple("198.18.0.10", "203.0.113.100", 40000, 80)
    snat_reply = make_tuple("203.0.113.100", "192.0.2.1", 80, 61000)
    assert Connection(PROTO_TCP, orig, snat_reply).nat
    echo = make_tuple("198.18.0.10", "203.0.113.100", 7, 8 << 8)
    masq = make_tuple("203.0.113.100", "192.0.2.1", 7, 0)
    assert Connection(PROTO_ICMP, echo, masq).nat


def test_key_depends_on_protocol_and_original_tuple_only() -> None:
    orig = make_tuple("192.0.2.100", "203.0.113.100", 40000, 80)
    a = Connection(PROTO_TCP, orig, orig.inverse(), state=3, mark=7)
    b = Connection(PROTO_TCP, orig, orig.inverse(), state=5, mark=9)
    assert a.key == b.key and len(a.key) == 8
    assert Connection(17, orig, orig.inverse()).key != a.key


@pytest.mark.parametrize("helper", ["", "ftp"])
def test_with_state_keeps_everything_else_and_the_helper(helper: str) -> None:
    orig = make_tuple("192.0.2.1", "198.51.100.2", 1000, 80)
    c = with_helper(Connection(PROTO_TCP, orig, orig.inverse(), 1, 0, mark=9, bucket=3), helper)
    d = c.with_state(3, 6)
    assert (d.state, d.status) == (3, 6)
    assert type(d) is type(c) and helper_of(d) == helper
    assert (d.proto, d.orig, d.reply, d.mark, d.bucket, d.key) == (
        c.proto, c.orig, c.reply, c.mark, c.bucket, c.key
    )  # fmt: skip
    with pytest.raises(ValueError):
        c.with_state(256, 0)


def test_seqadj_is_empty_or_six_u32_and_survives_with_state() -> None:
    orig = make_tuple("192.0.2.1", "198.51.100.2", 1000, 21)
    c = Connection(PROTO_TCP, orig, orig.inverse(), 3, 0, seqadj=(7, 0, 4294967292, 0, 0, 0))
    assert c.with_state(4, 6).seqadj == c.seqadj
    assert c.with_seqadj(()).seqadj == () and c.with_seqadj(()) != c
    for bad in ((1, 2, 3), (0, 0, 0, 0, 0, 1 << 32), (-1, 0, 0, 0, 0, 0)):
        with pytest.raises(ValueError):
            c.with_seqadj(bad)
