"""Conntrack helpers and expectations over raw netlink: the parser on crafted
input, then the real kernel's FTP helper in namespaces this test creates
(test_conntrack_netlink's single-node lab: client -- fw -- server).

What the kernel test establishes, for docs/stateful.md:
- a related (expected) connection inherits its master's conntrack mark, so
  it lands in the master's bucket whatever its own tuple hashes to;
- an entry we inject with CTA_HELP gets the helper, and that helper parses
  the next PASV reply on the moved control connection by itself;
- an expectation we dump can be injected again on its master.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import socket
import struct
from collections.abc import Iterator

import pytest
from fwcluster_lab.netns import ns_run
from fwcluster_lab.nslab import TcpStream, inside, wait_until
from test_conntrack_netlink import CLIENT, SERVER, SETTINGS, TCP_CONN, OneNode, event_datagram

from availability_manager.connection import IPS_EXPECTED, PROTO_TCP, make_tuple
from availability_manager.ct_messages import Expectation, helper_of, with_helper
from availability_manager.dataplane import netlink_attrs as nl
from availability_manager.dataplane.bucket import bucket_of_connection
from availability_manager.dataplane.conntrack_netlink import (
    IPCTNL_MSG_EXP_DELETE,
    IPCTNL_MSG_EXP_NEW,
    NFNL_SUBSYS_CTNETLINK_EXP,
    ConntrackSocket,
    encode_expectation,
    parse_events,
)

# The operator's policy: nftables assigns helpers only where a rule says so.
HELPER_POLICY = """
table inet fwp_helpers {
  ct helper ftp-standard { type "ftp" protocol tcp; }
  chain forward {
    type filter hook forward priority 0; policy accept;
    tcp dport 21 ct helper set "ftp-standard"
  }
}
"""

CONTROL = with_helper(
    dataclasses.replace(
        TCP_CONN,
        orig=make_tuple(CLIENT, SERVER, 40000, 21),
        reply=make_tuple(SERVER, CLIENT, 21, 40000),
    ),
    "ftp",
)
PASV_EXP = Expectation(
    master_proto=PROTO_TCP,
    master=CONTROL.orig,
    proto=PROTO_TCP,
    expected=make_tuple(CLIENT, SERVER, 0, 40000),
    mask_src=b"\xff\xff\xff\xff",
    mask_sport=0,
    helper="ftp",
)


def exp_datagram(exps: list[Expectation], msg: int = IPCTNL_MSG_EXP_NEW) -> bytes:
    """What the kernel sends for these expectations (our encoder writes the
    attributes an event carries; the kernel adds ids we ignore)."""
    mtype = (NFNL_SUBSYS_CTNETLINK_EXP << 8) | msg
    return b"".join(
        nl.message(
            mtype, 0x600, 0, struct.pack("!BBH", socket.AF_INET, 0, 0) + encode_expectation(e)
        )
        for e in exps
    )


# --- crafted input ----------------------------------------------------------------------


def test_helper_name_round_trips_through_an_event() -> None:
    counts: collections.Counter[str] = collections.Counter()
    [(kind, conn)] = parse_events(event_datagram([CONTROL]), 0xFFFF, counts)
    assert kind == "new" and conn == CONTROL and helper_of(conn) == "ftp"
    assert not counts


def test_expectation_events_new_and_destroy() -> None:
    counts: collections.Counter[str] = collections.Counter()
    events = parse_events(
        exp_datagram([PASV_EXP]) + exp_datagram([PASV_EXP], IPCTNL_MSG_EXP_DELETE), 0xFFFF, counts
    )
    assert events == [("new", PASV_EXP), ("destroy", PASV_EXP)]
    assert not counts


# What nf_nat_ftp leaves on the expectation of a source-NATed client's PORT:
# the server's data connection to the translated address is mapped back to
# the client's own address and port, in the reply direction.
PORT_EXP_NAT = dataclasses.replace(
    PASV_EXP,
    expected=make_tuple(SERVER, "192.0.2.1", 0, 20005),
    nat_fn="nat-follow-master",
    nat_dir=1,
    nat_addr=socket.inet_aton(CLIENT),
    nat_port=40001,
)


def test_an_expectations_nat_round_trips_through_an_event() -> None:
    counts: collections.Counter[str] = collections.Counter()
    [(kind, exp)] = parse_events(exp_datagram([PORT_EXP_NAT]), 0xFFFF, counts)
    assert kind == "new" and exp == PORT_EXP_NAT and not counts
    assert (exp.nat_fn, exp.nat_dir, exp.nat_addr, exp.nat_port) == (
        "nat-follow-master", 1, socket.inet_aton(CLIENT), 40001,
    )  # fmt: skip
    [(_, plain)] = parse_events(exp_datagram([PASV_EXP]), 0xFFFF, counts)
    assert plain.nat_dir is None and plain.nat_fn == "" and plain != PORT_EXP_NAT


def test_a_bad_expectation_nat_is_counted() -> None:
    good = exp_datagram([PORT_EXP_NAT])
    # CTA_EXPECT_NAT_DIR (be32) 1 -> 7, a direction that does not exist
    at = good.index(struct.pack("=HH", 8, 1) + struct.pack("!I", 1))
    bad = bytearray(good)
    struct.pack_into("!I", bad, at + 4, 7)
    counts: collections.Counter[str] = collections.Counter()
    assert parse_events(bytes(bad), 0xFFFF, counts) == []
    assert counts == {"bad-expect-nat": 1}


def test_every_truncated_expectation_is_counted_never_raised() -> None:
    good = exp_datagram([PASV_EXP])
    for cut in range(20, len(good)):
        data = bytearray(good[:cut])
        struct.pack_into("=I", data, 0, cut)  # the header agrees with the cut
        counts: collections.Counter[str] = collections.Counter()
        events = parse_events(bytes(data), 0xFFFF, counts)
        assert events == [] or events == [("new", PASV_EXP)]  # a cut at an attribute edge
        assert events or sum(counts.values()) == 1


# --- the real kernel --------------------------------------------------------------------


@pytest.fixture
def ftp_lab() -> Iterator[OneNode]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    lab = OneNode()
    try:
        ns_run(lab.fw, ["nft", "-f", "-"], stdin=HELPER_POLICY)
        yield lab
    finally:
        lab.nslab.destroy()


def _pasv(stream: TcpStream, port: int) -> None:
    assert stream.client_to_server(b"PASV\r\n")
    hi, lo = divmod(port, 256)
    reply = f"227 Entering Passive Mode ({SERVER.replace('.', ',')},{hi},{lo}).\r\n"
    assert stream.server_to_client(reply.encode())


@pytest.mark.lab
def test_ftp_helper_expectations_marks_and_injection(ftp_lab: OneNode) -> None:
    fw = ftp_lab.fw
    with inside(fw):
        ct = ConntrackSocket()
    control = TcpStream(ftp_lab.client, ftp_lab.server, CLIENT, SERVER, 21)
    try:
        # the helper reads a line only after it saw the end of the one before
        assert control.server_to_client(b"220 ready\r\n")
        _pasv(control, 40000)
        seen: list[Expectation] = []

        def expectation_event() -> bool:
            seen.extend(e for k, e in ct.read_events() if k == "new" and isinstance(e, Expectation))
            return bool(seen)

        assert wait_until(expectation_event)
        with inside(fw):
            master = next(c for c in ct.dump() if c.orig.dport == 21)
            [exp] = ct.dump_expectations()
        assert helper_of(master) == "ftp" and master.mark & 0xFFFF
        assert exp == seen[0]
        assert exp.master == master.orig and exp.helper == "ftp"
        assert exp.expected.dport == 40000 and exp.mask_sport == 0

        # The data connection is RELATED and carries the master's mark.
        data = TcpStream(ftp_lab.client, ftp_lab.server, CLIENT, SERVER, 40000)
        assert data.client_to_server(b"x" * 4096)
        with inside(fw):
            d = next(c for c in ct.dump() if c.orig.dport == 40000)
            assert ct.dump_expectations() == []  # used up
        assert d.status & IPS_EXPECTED
        assert (d.mark, d.bucket) == (master.mark, master.bucket)
        hashed = bucket_of_connection(
            SETTINGS, ("inside", "outside"), d, in_zone="inside", out_zone="outside"
        )
        data.close()
        if hashed == master.bucket:
            pytest.skip("the data tuple hashed into its master's bucket by chance")

        # A failover of the control connection: the entry leaves and comes back
        # from our injection, with its helper, which then does its job alone.
        with inside(fw):
            assert ct.delete([master]) == 1
            assert ct.inject([master]) == 1
            [back] = [c for c in ct.dump() if c.key == master.key]
        assert helper_of(back) == "ftp"
        _pasv(control, 40001)
        with inside(fw):
            assert wait_until(lambda: [e.expected.dport for e in ct.dump_expectations()] == [40001])
            # and an expectation of ours is taken on that master
            ours = dataclasses.replace(exp, expected=make_tuple(CLIENT, SERVER, 0, 40002))
            assert ct.inject_expectations([ours]) == 1
            assert 40002 in [e.expected.dport for e in ct.dump_expectations()]
            # without its master there is nothing to attach it to
            assert ct.delete([master]) == 1
            assert ct.inject_expectations([ours]) == 0
            assert ct.request_errors
        assert not ct.malformed
    finally:
        control.close()
        ct.close()
