"""The listing filter of `clusterctl cache` and `kernel` (conn_filter.py)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from availability_manager.conn_filter import (
    TCP_STATES,
    ConnFilter,
    FilterError,
    entry_row,
)
from availability_manager.connection import (
    IPS_ASSURED,
    IPS_SEEN_REPLY,
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ESTABLISHED,
    TCP_TIME_WAIT,
    Connection,
    make_tuple,
)


def tcp(
    src: str = "198.51.100.7",
    dst: str = "203.0.113.10",
    sport: int = 40000,
    dport: int = 443,
    *,
    state: int = TCP_ESTABLISHED,
    bucket: int = 17,
    reply_src: str | None = None,
) -> Connection:
    orig = make_tuple(src, dst, sport, dport)
    reply = make_tuple(reply_src or dst, src, dport, sport)
    return Connection(PROTO_TCP, orig, reply, state, IPS_SEEN_REPLY | IPS_ASSURED, 0, bucket)


def f(**fields: object) -> ConnFilter:
    return ConnFilter.from_request(fields, buckets=256)


def test_an_empty_filter_matches_everything() -> None:
    assert ConnFilter.from_request(None).matches(tcp(), 17, ["192.0.2.1"])
    assert f().matches(tcp(), None)
    assert f().empty and not f(proto=["tcp"]).empty


@pytest.mark.parametrize(
    ("fields", "hit"),
    [
        ({"src": ["198.51.100.0/24"]}, True),
        ({"src": ["198.51.101.0/24"]}, False),
        ({"src": ["198.51.100.7"]}, True),
        ({"dst": ["203.0.113.10/32"]}, True),
        ({"dst": ["198.51.100.7"]}, False),  # the source is not the destination
        ({"addr": ["198.51.100.7"]}, True),
        ({"addr": ["203.0.113.0/24"]}, True),
        ({"addr": ["2001:db8::/32"]}, False),  # another family never matches
        ({"port": ["443"]}, True),
        ({"port": ["40000"]}, True),
        ({"port": ["80-442"]}, False),
        ({"sport": ["40000-40010"]}, True),
        ({"sport": ["443"]}, False),
        ({"dport": ["443"]}, True),
        ({"proto": ["tcp"]}, True),
        ({"proto": ["UDP", "icmp"]}, False),
        ({"proto": ["6"]}, True),
        ({"state": ["established"]}, True),
        ({"state": ["time_wait", "close"]}, False),
        ({"bucket": ["17"]}, True),
        ({"bucket": ["0-16", "18-255"]}, False),
        ({"owner": ["192.0.2.1"]}, True),
        ({"owner": ["192.0.2.2"]}, False),
        ({"proto": ["tcp"], "dport": ["443"], "src": ["198.51.100.0/28"]}, True),
        ({"proto": ["tcp"], "dport": ["80"], "src": ["198.51.100.0/28"]}, False),  # all must
    ],
)
def test_each_field_selects_what_it_names(fields: dict[str, list[str]], hit: bool) -> None:
    assert f(**fields).matches(tcp(), 17, ["192.0.2.1"]) is hit


def test_addr_sees_the_translated_side_of_a_nat_connection() -> None:
    natted = tcp(reply_src="192.0.2.80")  # DNAT: the server answers from another address
    assert f(addr=["192.0.2.80"]).matches(natted, 17)
    assert not f(dst=["192.0.2.80"]).matches(natted, 17)  # dst is the original tuple's


def test_state_and_bucket_filters_leave_out_what_lacks_them() -> None:
    udp = Connection(PROTO_UDP, make_tuple("198.51.100.7", "203.0.113.10", 5000, 53),
                     make_tuple("203.0.113.10", "198.51.100.7", 53, 5000), 0, 0, 0, 3)  # fmt: skip
    assert not f(state=["none"]).matches(udp, 3)  # TCP states only
    assert not f(bucket=["0-255"]).matches(tcp(), None)  # never classified
    assert f(owner=["none"]).matches(tcp(), 17, [])  # a bucket nobody owns
    assert not f(owner=["none"]).matches(tcp(), 17, ["192.0.2.1"])
    assert f(bucket=["10-20"]).matches_bucket(17) and not f(bucket=["10-16"]).matches_bucket(17)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"src": ["not-an-address"]}, "src: expected an address or CIDR"),
        ({"port": ["70000"]}, "port: '70000' is outside 0..65535"),
        ({"port": ["90-80"]}, "reversed"),
        ({"sport": ["x"]}, "sport: expected N or N-M"),
        ({"bucket": ["256"]}, "bucket: '256' is outside 0..255"),
        ({"proto": ["sctpx"]}, "proto: expected icmp, tcp, udp, icmpv6 or 0..255"),
        ({"state": ["open"]}, "state: expected one of none, syn_sent"),
        ({"colour": ["red"]}, "unknown field 'colour'"),
        ({"port": []}, "port: expected 1 to 64 values"),
        ({"port": [True]}, "port: values must be strings or integers"),
    ],
)
def test_bad_values_are_refused_by_field(fields: dict[str, object], message: str) -> None:
    with pytest.raises(FilterError, match=message.replace("(", r"\(")):
        f(**fields)
    with pytest.raises(FilterError, match="expected an object"):
        ConnFilter.from_request(["src"])


def test_the_request_form_round_trips() -> None:
    flt = f(src=["198.51.100.0/24"], port=[443], state="established")
    again = ConnFilter.from_request(flt.to_request(), buckets=256)
    assert again == flt
    assert flt.to_request() == {"src": ["198.51.100.0/24"], "port": ["443"],
                                "state": ["established"]}  # fmt: skip


def test_entry_row_names_every_field() -> None:
    row = entry_row(tcp(reply_src="192.0.2.80"), "local", 17, ["192.0.2.2", "192.0.2.1"])
    assert row == {
        "table": "local", "proto": "tcp", "src": "198.51.100.7", "dst": "203.0.113.10",
        "sport": 40000, "dport": 443, "reply_src": "192.0.2.80", "reply_dst": "198.51.100.7",
        "reply_sport": 443, "reply_dport": 40000, "state": "established",
        "status": ["seen_reply", "assured"], "mark": 0, "bucket": 17,
        "owner": ["192.0.2.1", "192.0.2.2"],
    }  # fmt: skip
    icmp = Connection(PROTO_ICMP, make_tuple("198.51.100.7", "203.0.113.10", 9, 8 << 8),
                      make_tuple("203.0.113.10", "198.51.100.7", 9, 0), 0, 0, 0, 1)  # fmt: skip
    assert entry_row(icmp, "kernel", None, [])["state"] == "-"


# -- the fast CIDR test against ipaddress's own (the reference) -----------------------

addresses = st.one_of(
    st.integers(0, 2**32 - 1).map(lambda i: ipaddress.IPv4Address(i)),
    st.integers(0, 2**128 - 1).map(lambda i: ipaddress.IPv6Address(i)),
)


@given(
    addresses,
    addresses,
    st.integers(0, 128),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.sampled_from(range(len(TCP_STATES))),
)
def test_matches_agrees_with_a_reference(
    a: ipaddress.IPv4Address | ipaddress.IPv6Address,
    b: ipaddress.IPv4Address | ipaddress.IPv6Address,
    prefix: int,
    sport: int,
    lo: int,
    hi: int,
    state: int,
) -> None:
    prefix = min(prefix, a.max_prefixlen)
    net = ipaddress.ip_network(f"{b}/{min(prefix, b.max_prefixlen)}", strict=False)
    dst = type(a)(int(a) ^ 1)  # another address of the same family
    conn = Connection(PROTO_TCP, make_tuple(str(a), str(dst), sport, 80),
                      make_tuple(str(dst), str(a), 80, sport), state, 0, 0, 0)  # fmt: skip
    lo, hi = min(lo, hi), max(lo, hi)
    flt = f(src=[str(net)], sport=[f"{lo}-{hi}"], state=[TCP_STATES[state]])
    expected = a in net and lo <= sport <= hi  # the state always matches here
    assert flt.matches(conn, 0) is expected
    other_state = TCP_STATES[(state + 1) % len(TCP_STATES)]
    assert not f(state=[other_state]).matches(conn, 0)
    assert f(addr=[str(net)]).matches(conn, 0) is (a in net or dst in net)


def test_time_wait_is_a_state_name() -> None:
    assert f(state=["time_wait"]).matches(tcp(state=TCP_TIME_WAIT), 17)
