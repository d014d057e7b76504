"""Conntrack over raw netlink: the parser on crafted input, then the real
kernel in namespaces this test creates.

Single node:  client --veth-- fw --veth-- server
Two nodes:    client --[brin]-- fw1, fw2 --[brout]-- server  (bridges in a switch namespace)

The two-node lab reproduces the headline mechanism (NOTES.md): a live TCP
stream survives its owner's death once its entry, dumped with our code, is
injected with our code on the survivor; and it decides nf_conntrack_tcp_loose:
an unsynced stream is picked up by the owner of its bucket only with loose=1,
and never by a node that does not own the bucket.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import ipaddress
import os
import re
import socket
import struct
import time
from collections.abc import Iterator

import pytest
from fwcluster_lab.nslab import (
    NsLab,
    TcpStream,
    icmp_echoes,
    inside,
    sh,
    tcp_flows,
    udp_flows,
    wait_until,
)

from availability_manager.connection import (
    IPS_ASSURED,
    IPS_SEEN_REPLY,
    PROTO_TCP,
    TCP_ESTABLISHED,
    Connection,
    make_tuple,
)
from availability_manager.dataplane import netlink_attrs as nl
from availability_manager.dataplane.base import DataPlaneConfig, Zone
from availability_manager.dataplane.conntrack_netlink import (
    CTA_NAT_DST,
    CTA_NAT_PROTO,
    CTA_NAT_SRC,
    CTA_NAT_V4_MINIP,
    CTA_PROTOINFO,
    CTA_PROTONAT_PORT_MIN,
    IPCTNL_MSG_CT_DELETE,
    IPCTNL_MSG_CT_NEW,
    NFNL_SUBSYS_CTNETLINK,
    ConntrackSocket,
    EventsLost,
    default_timeout,
    encode_inject,
    nat_attributes,
    parse_events,
)
from availability_manager.dataplane.nftables import NftablesDataPlane
from availability_manager.types import ClusterSettings

CLIENT, SERVER = "192.0.2.10", "198.51.100.10"
CLUSTER_IN, CLUSTER_OUT = "192.0.2.1", "198.51.100.1"
MAC_IN, MAC_OUT = "03:fc:00:00:00:01", "03:fc:00:00:00:02"
SETTINGS = ClusterSettings(buckets=256, hash_seed=0x0BADC0DE)
TCP_CONN = Connection(
    PROTO_TCP,
    make_tuple(CLIENT, SERVER, 40000, 80),
    make_tuple(SERVER, CLIENT, 80, 40000),
    state=TCP_ESTABLISHED,
    status=IPS_ASSURED | IPS_SEEN_REPLY,
    mark=0x2A,
    bucket=0x29,
)


def event_datagram(
    conns: list[Connection], msg: int = IPCTNL_MSG_CT_NEW, flags: int = 0x600
) -> bytes:
    """What the kernel sends for these entries: our encoder writes the same
    attributes a kernel event carries (tuples, status, mark, protoinfo)."""
    mtype = (NFNL_SUBSYS_CTNETLINK << 8) | msg
    return b"".join(
        nl.message(mtype, flags, 0, struct.pack("!BBH", socket.AF_INET, 0, 0) + encode_inject(c))
        for c in conns
    )


# --- the parser on crafted input (no kernel) -------------------------------------------


def test_sequence_offsets_round_trip_through_an_event_and_an_injection() -> None:
    """CTA_SEQ_ADJ_ORIG/REPLY (what a NAT helper leaves after rewriting the
    stream) are read from events and written into injections."""
    rewritten = dataclasses.replace(TCP_CONN, seqadj=(1200, 0, 4294967292, 0, 0, 0))
    counts: collections.Counter[str] = collections.Counter()
    assert parse_events(event_datagram([rewritten]), 0xFFFF, counts) == [("new", rewritten)]
    assert not counts
    [(_, plain)] = parse_events(event_datagram([TCP_CONN]), 0xFFFF, counts)
    assert plain.seqadj == ()


def test_a_tcp_update_without_protoinfo_is_an_amend() -> None:
    """The kernel sends a TCP entry's state only in events that changed it:
    an UPDATE without CTA_PROTOINFO must not be read as state NONE."""
    counts: collections.Counter[str] = collections.Counter()
    data = bytearray(event_datagram([TCP_CONN], flags=0))  # an UPDATE
    at = data.index(struct.pack("=H", CTA_PROTOINFO | nl.NLA_F_NESTED), 20) - 2
    length = struct.unpack_from("=H", data, at)[0]
    del data[at : at + length]
    struct.pack_into("=I", data, 0, len(data))
    [(kind, conn)] = parse_events(bytes(data), 0xFFFF, counts)
    assert kind == "amend" and conn.orig == TCP_CONN.orig and not counts
    [(kind, _)] = parse_events(event_datagram([TCP_CONN], flags=0), 0xFFFF, counts)
    assert kind == "update"
    udp = dataclasses.replace(TCP_CONN, proto=17, state=0)
    [(kind, _)] = parse_events(event_datagram([udp], flags=0), 0xFFFF, counts)
    assert kind == "update"  # no TCP state to miss


def test_event_round_trip_gives_the_connection_and_its_bucket() -> None:
    counts: collections.Counter[str] = collections.Counter()
    events = parse_events(event_datagram([TCP_CONN]), 0xFFFF, counts)
    assert events == [("new", TCP_CONN)]
    update = parse_events(event_datagram([TCP_CONN], flags=0), 0xFFFF, counts)
    destroy = parse_events(event_datagram([TCP_CONN], msg=IPCTNL_MSG_CT_DELETE), 0xFFFF, counts)
    assert [k for k, _ in update + destroy] == ["update", "destroy"]
    assert not counts


def test_bucket_follows_the_mark_mask() -> None:
    shifted = Connection(TCP_CONN.proto, TCP_CONN.orig, TCP_CONN.reply, mark=(8 << 16) | 0x77)
    [(_, conn)] = parse_events(event_datagram([shifted]), 0xFFFF0000, collections.Counter())
    assert conn.bucket == 7
    unclassified = Connection(TCP_CONN.proto, TCP_CONN.orig, TCP_CONN.reply, mark=0x10000)
    [(_, conn)] = parse_events(event_datagram([unclassified]), 0xFFFF, collections.Counter())
    assert conn.bucket == 0 and conn.mark & 0xFFFF == 0


def test_every_truncation_is_counted_never_raised_never_partial() -> None:
    good = event_datagram([TCP_CONN])
    for cut in range(len(good)):
        data = bytearray(good[:cut])
        if cut >= 4:  # also lie about the length so the walker reaches the cut
            data[0:4] = struct.pack("=I", cut)
        counts: collections.Counter[str] = collections.Counter()
        events = parse_events(bytes(data), 0xFFFF, counts)
        # A cut between optional attributes (mark, timeout, protoinfo) is a
        # shorter valid message; any other cut is counted and yields nothing.
        if events:
            [(_kind, conn)] = events
            assert (conn.orig, conn.reply, conn.status) == (
                TCP_CONN.orig,
                TCP_CONN.reply,
                TCP_CONN.status,
            )
        elif cut:
            assert sum(counts.values()) >= 1, cut


def test_malformed_message_skipped_neighbours_kept() -> None:
    other = Connection(17, make_tuple(CLIENT, SERVER, 5, 6), make_tuple(SERVER, CLIENT, 6, 5))
    bad = bytearray(event_datagram([TCP_CONN]))
    # Corrupt the first attribute length inside the message (CTA_TUPLE_ORIG).
    struct.pack_into("=H", bad, 20, 0xFFF0)
    data = event_datagram([other]) + bytes(bad) + event_datagram([other])
    counts: collections.Counter[str] = collections.Counter()
    events = parse_events(data, 0xFFFF, counts)
    assert [c for _, c in events] == [other, other]
    assert counts == {"bad-attr-length": 1}


def test_wrong_address_length_and_foreign_messages_are_counted() -> None:
    counts: collections.Counter[str] = collections.Counter()
    data = bytearray(event_datagram([TCP_CONN]))
    # CTA_IP_V4_SRC value length 4 -> claim 3 (attr header at 28: nfgen 4, orig 4, ip 4)
    struct.pack_into("=H", data, 28, 7)
    assert parse_events(bytes(data), 0xFFFF, counts) == []
    foreign = nl.message((9 << 8) | 0, 0, 0, b"\0" * 8)
    assert parse_events(foreign, 0xFFFF, counts) == []
    assert counts["bad-ip-src-length"] == 1 and counts["unexpected-type"] == 1


def _nested(blob: bytes, atype: int) -> dict[int, tuple[int, int]]:
    top = nl.attrs(blob, 0, len(blob))
    return nl.nested(blob, top, atype, "x")


def test_nat_attributes_rebuild_snat_and_dnat_bindings() -> None:
    snat = Connection(
        PROTO_TCP,
        make_tuple(CLIENT, SERVER, 40000, 80),
        make_tuple(SERVER, "203.0.113.5", 80, 61000),
    )
    blob = nat_attributes(snat)
    src = _nested(blob, CTA_NAT_SRC)
    assert (
        nl.get_bytes(blob, src, CTA_NAT_V4_MINIP, 4, "ip")
        == ipaddress.ip_address("203.0.113.5").packed
    )
    port = nl.nested(blob, src, CTA_NAT_PROTO, "proto")
    assert nl.get_be16(blob, port, CTA_PROTONAT_PORT_MIN, "port") == 61000
    assert CTA_NAT_DST not in nl.attrs(blob, 0, len(blob))
    dnat = Connection(
        PROTO_TCP,
        make_tuple(CLIENT, CLUSTER_IN, 40000, 80),
        make_tuple(SERVER, CLIENT, 8080, 40000),
    )
    blob = nat_attributes(dnat)
    dst = _nested(blob, CTA_NAT_DST)
    assert nl.get_bytes(blob, dst, CTA_NAT_V4_MINIP, 4, "ip") == ipaddress.ip_address(SERVER).packed
    assert CTA_NAT_SRC not in nl.attrs(blob, 0, len(blob))
    assert nat_attributes(TCP_CONN) == b""


def test_default_timeouts_follow_the_state_class() -> None:
    assert default_timeout(TCP_CONN) == 432000
    assert default_timeout(TCP_CONN.with_state(7, TCP_CONN.status)) == 120  # TIME_WAIT
    udp = Connection(17, make_tuple(CLIENT, SERVER, 5, 6), make_tuple(SERVER, CLIENT, 6, 5))
    assert default_timeout(udp) == 30
    assert default_timeout(udp.with_state(0, IPS_ASSURED)) == 120


# --- single-node lab -------------------------------------------------------------------


class OneNode:
    def __init__(self) -> None:
        self.nslab = NsLab(f"fwdp-{os.getpid()}-ct-")
        lab = self.nslab
        self.client, self.fw, self.server = lab.ns("c"), lab.ns("f"), lab.ns("s")
        lab.veth(self.client, "eth0", self.fw, "in0")
        lab.veth(self.fw, "out0", self.server, "eth0")
        lab.addr(self.client, "eth0", f"{CLIENT}/24")
        lab.addr(self.fw, "in0", "192.0.2.2/24")
        lab.addr(self.fw, "out0", "198.51.100.2/24")
        lab.addr(self.server, "eth0", f"{SERVER}/24")
        lab.route(self.client, "198.51.100.0/24", CLUSTER_IN)
        lab.route(self.server, "192.0.2.0/24", CLUSTER_OUT)
        self.dp = NftablesDataPlane(_config())
        with inside(self.fw):
            self.dp.install()
            self.dp.set_owned_buckets(frozenset(range(SETTINGS.buckets)))


def _config(tcp_loose: bool = False) -> DataPlaneConfig:
    ip = ipaddress.ip_interface
    return DataPlaneConfig(
        node_id=1,
        settings=SETTINGS,
        zones=(
            Zone("inside", "in0", (ip(f"{CLUSTER_IN}/24"),), MAC_IN),
            Zone("outside", "out0", (ip(f"{CLUSTER_OUT}/24"),), MAC_OUT),
        ),
        tcp_loose=tcp_loose,
    )


@pytest.fixture
def one() -> Iterator[OneNode]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    lab = OneNode()
    try:
        yield lab
    finally:
        lab.nslab.destroy()


_LINE = re.compile(
    r"^(?P<proto>\w+)\s+(?P<num>\d+)\s+\d+\s+(?:(?P<state>[A-Z_]+)\s+)?"
    r"src=(?P<src>\S+) dst=(?P<dst>\S+)"
    r"(?: sport=(?P<sport>\d+) dport=(?P<dport>\d+))?"
    r"(?: type=(?P<type>\d+) code=(?P<code>\d+) id=(?P<id>\d+))?"
    r".*?mark=(?P<mark>\d+)"
)


def conntrack_tool_view(ns: str) -> set[tuple[int, str, str, int, int, int]]:
    """(proto, src, dst, sport, dport, mark) of every entry, per the conntrack tool."""
    rows = set()
    for line in sh("conntrack", "-L", ns=ns, check=False).splitlines():
        m = _LINE.match(line)
        if m:
            if m["type"] is not None:
                sport, dport = int(m["id"]), int(m["type"]) << 8 | int(m["code"])
            else:
                sport, dport = int(m["sport"] or 0), int(m["dport"] or 0)
            rows.add((int(m["num"]), m["src"], m["dst"], sport, dport, int(m["mark"])))
    return rows


def our_view(conns: list[Connection]) -> set[tuple[int, str, str, int, int, int]]:
    return {
        (
            c.proto,
            str(ipaddress.ip_address(c.orig.src)),
            str(ipaddress.ip_address(c.orig.dst)),
            c.orig.sport,
            c.orig.dport,
            c.mark,
        )
        for c in conns
    }


@pytest.mark.lab
def test_events_arrive_for_real_tcp_udp_icmp_flows(one: OneNode) -> None:
    with inside(one.fw):
        ct = ConntrackSocket()
    try:
        assert tcp_flows(one.client, one.server, CLIENT, SERVER, range(20000, 20010)) == 10
        udp_flows(one.client, CLIENT, SERVER, range(21000, 21010))
        icmp_echoes(one.client, SERVER, range(1, 11))
        events: list[tuple[str, Connection]] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len({c.orig for k, c in events if k == "new"}) < 30:
            events += ct.read_events()
            time.sleep(0.02)
        new = {(c.proto, c.orig.sport) for k, c in events if k == "new"}
        assert {(6, p) for p in range(20000, 20010)} <= new
        assert {(17, p) for p in range(21000, 21010)} <= new
        assert {(1, i) for i in range(1, 11)} <= new
        tcp_states = {c.state for k, c in events if k == "update" and c.proto == 6}
        assert TCP_ESTABLISHED in tcp_states
        assert all(c.mark & 0xFFFF for _, c in events)  # every flow was classified
        # Deleting entries produces destroy events.
        with inside(one.fw):
            udp = [c for c in ct.dump() if c.proto == 17]
            assert ct.delete(udp) == len(udp) >= 10
        destroyed: set[int] = set()

        def all_destroyed() -> bool:
            destroyed.update(c.orig.sport for k, c in ct.read_events() if k == "destroy")
            return set(range(21000, 21010)) <= destroyed

        assert wait_until(all_destroyed)
        assert not ct.malformed
    finally:
        ct.close()


@pytest.mark.lab
def test_the_mark_filter_keeps_unclassified_entries_out_in_the_kernel(one: OneNode) -> None:
    """only_marked: events of the node's own (unmarked) traffic never reach
    the socket; classified flows still do, and an unfiltered socket sees both."""
    with inside(one.fw):
        filtered = ConntrackSocket(only_marked=True)
        everything = ConntrackSocket()
    try:
        udp_flows(one.client, CLIENT, SERVER, range(21000, 21010))  # forwarded: classified
        udp_flows(one.fw, "192.0.2.2", CLIENT, range(23000, 23010))  # the node's own
        seen: list[tuple[str, Connection]] = []
        kept: list[tuple[str, Connection]] = []

        def all_seen() -> bool:
            seen.extend(everything.read_events())
            kept.extend(filtered.read_events())
            ports = {c.orig.sport for k, c in seen if k == "new"}
            return set(range(21000, 21010)) | set(range(23000, 23010)) <= ports

        assert wait_until(all_seen)
        time.sleep(0.2)
        kept.extend(filtered.read_events())
        own = [c for _, c in seen if c.orig.sport in range(23000, 23010)]
        assert own and not any(c.mark & 0xFFFF for c in own)  # the premise: unmarked
        assert {c.orig.sport for k, c in kept if k == "new"} == set(range(21000, 21010))
        assert all(c.mark & 0xFFFF for _, c in kept)
    finally:
        filtered.close()
        everything.close()


@pytest.mark.lab
def test_dump_equals_conntrack_tool(one: OneNode) -> None:
    tcp_flows(one.client, one.server, CLIENT, SERVER, range(20000, 20050))
    udp_flows(one.client, CLIENT, SERVER, range(21000, 21050))
    udp_flows(one.server, SERVER, CLIENT, range(22000, 22050))
    icmp_echoes(one.client, SERVER, range(1, 51))
    assert wait_until(lambda: len(conntrack_tool_view(one.fw)) >= 200)
    with inside(one.fw), ConntrackSocket(events=False) as ct:
        ours = our_view(ct.dump())
    theirs = conntrack_tool_view(one.fw)
    assert ours == theirs


@pytest.mark.lab
def test_inject_then_delete_and_delete_buckets(one: OneNode) -> None:
    with inside(one.fw), ConntrackSocket(events=False) as ct:
        assert ct.inject([TCP_CONN]) == 1
        line = sh("conntrack", "-L", "-p", "tcp", "--sport", "40000")
        assert "ESTABLISHED" in line and "[ASSURED]" in line and "mark=42" in line
        timeout = int(line.split()[2])
        assert 431000 < timeout <= 432000
        [got] = [c for c in ct.dump() if c.orig == TCP_CONN.orig]
        assert got == TCP_CONN
        # Inject is create-or-update: a second call changes the state in place.
        assert ct.inject([TCP_CONN.with_state(7, TCP_CONN.status)]) == 1
        assert "TIME_WAIT" in sh("conntrack", "-L", "-p", "tcp", "--sport", "40000")
        assert ct.delete([TCP_CONN]) == 1
        assert "40000" not in sh("conntrack", "-L", "-p", "tcp")
        assert ct.delete([TCP_CONN]) == 1  # already gone: not an error
        assert not ct.refused
        # delete_buckets removes exactly the entries whose mark records those buckets
        conns = [
            Connection(
                17,
                make_tuple(CLIENT, SERVER, p, 53),
                make_tuple(SERVER, CLIENT, 53, p),
                mark=p - 999,
            )
            for p in range(1000, 1010)
        ]  # buckets 0..9
        assert ct.inject(conns) == len(conns)
        ct.delete_buckets([2, 5])
        left = {c.bucket for c in ct.dump() if c.proto == 17 and c.orig.dport == 53}
        assert left == {0, 1, 3, 4, 6, 7, 8, 9}
        # Batches larger than one netlink round trip, IPv6 included.
        many = [
            Connection(
                17,
                make_tuple(f"2001:db8:1::{i // 256:x}", "2001:db8:2::10", 2000 + i % 256, 53),
                make_tuple("2001:db8:2::10", f"2001:db8:1::{i // 256:x}", 53, 2000 + i % 256),
                mark=100,
            )
            for i in range(1000)
        ]
        assert ct.inject(many) == 1000
        assert sum(1 for c in ct.dump() if c.family == 6 and c.bucket == 99) == 1000
        ct.delete_buckets([99])
        assert not [c for c in ct.dump() if c.family == 6]
        # The kernel refuses an ICMP entry of an unknown type: reported, not raised.
        bad = Connection(
            1, make_tuple(CLIENT, SERVER, 1, 0xFF00), make_tuple(SERVER, CLIENT, 1, 0xFF00)
        )
        assert ct.inject([bad]) == 0
        assert [c for c, _ in ct.refused] == [bad]


@pytest.mark.lab
def test_lookup_reads_one_entry_with_its_sequence_offsets(one: OneNode) -> None:
    """`lookup` (what the event path uses to read a master whose stream a NAT
    helper rewrote) returns the entry as the kernel has it, seqadj included,
    and None for an entry that does not exist."""
    rewritten = TCP_CONN.with_seqadj((1200, 0, 4294967292, 0, 0, 0))
    with inside(one.fw), ConntrackSocket(events=True) as ct:
        assert ct.inject([rewritten]) == 1
        assert ct.lookup(TCP_CONN.proto, TCP_CONN.orig) == rewritten
        missing = make_tuple(CLIENT, SERVER, 40999, 80)
        assert ct.lookup(TCP_CONN.proto, missing) is None
        assert ct.request_errors == {"lookup-No such file or directory": 1}
        assert ct.delete([rewritten]) == 1


@pytest.mark.lab
def test_lost_events_raise_events_lost(one: OneNode) -> None:
    with inside(one.fw):
        ct = ConntrackSocket(rcvbuf=4096)
    try:
        udp_flows(one.client, CLIENT, SERVER, range(25000, 25300))  # bounded burst
        time.sleep(0.1)
        with pytest.raises(EventsLost):
            for _ in range(50):
                ct.read_events()
        assert ct.events_lost == 1
        # The socket stays usable after the overrun.
        udp_flows(one.client, CLIENT, SERVER, range(26000, 26001))
        assert wait_until(lambda: any(c.orig.sport == 26000 for _, c in ct.read_events()))
    finally:
        ct.close()


# --- two-node lab: failover ------------------------------------------------------------


class TwoNodes:
    def __init__(self, tcp_loose: bool = False, snat: bool = False, dnat: bool = False) -> None:
        self.snat, self.dnat = snat, dnat
        self.nslab = lab = NsLab(f"fwdp-{os.getpid()}-tk-")
        self.switch = lab.ns("w")
        self.client, self.server = lab.ns("c"), lab.ns("s")
        self.fws = [lab.ns("f1"), lab.ns("f2")]
        lab.bridge(self.switch, "brin")
        lab.bridge(self.switch, "brout")
        lab.veth(self.client, "eth0", self.switch, "c0")
        lab.attach(self.switch, "c0", "brin")
        lab.veth(self.server, "eth0", self.switch, "s0")
        lab.attach(self.switch, "s0", "brout")
        lab.addr(self.client, "eth0", f"{CLIENT}/24")
        lab.addr(self.server, "eth0", f"{SERVER}/24")
        lab.route(self.client, "198.51.100.0/24", CLUSTER_IN)
        if not snat:
            lab.route(self.server, "192.0.2.0/24", CLUSTER_OUT)
        self.dps = []
        for n, fw in enumerate(self.fws, start=1):
            lab.veth(fw, "in0", self.switch, f"f{n}i")
            lab.veth(fw, "out0", self.switch, f"f{n}o")
            lab.attach(self.switch, f"f{n}i", "brin")
            lab.attach(self.switch, f"f{n}o", "brout")
            lab.addr(fw, "in0", f"192.0.2.{10 + n}/24")
            lab.addr(fw, "out0", f"198.51.100.{10 + n}/24")
            dp = NftablesDataPlane(_config(tcp_loose))
            with inside(fw):
                dp.install()
                if snat:  # the operator's own NAT policy, identical on every node
                    sh(
                        "nft",
                        "add table ip nat; add chain ip nat post "
                        "{ type nat hook postrouting priority srcnat; }; "
                        f"add rule ip nat post oif out0 snat to {CLUSTER_OUT}",
                    )
                if dnat:  # a service on the cluster IP, forwarded to the server
                    sh(
                        "nft",
                        "add table ip nat; add chain ip nat pre "
                        "{ type nat hook prerouting priority dstnat; }; "
                        f"add rule ip nat pre ip daddr {CLUSTER_IN} tcp dport 80 "
                        f"dnat to {SERVER}:8080",
                    )
            self.dps.append(dp)

    def own(self, n: int, buckets: range | frozenset[int]) -> None:
        with inside(self.fws[n]):
            self.dps[n].set_owned_buckets(frozenset(buckets))

    def kill(self, n: int) -> None:
        """The node drops off both networks (its switch ports go down)."""
        for side in "io":
            sh("ip", "-n", self.switch, "link", "set", f"f{n + 1}{side}", "down")


@pytest.fixture
def two_nodes(request: pytest.FixtureRequest) -> Iterator[TwoNodes]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    lab = TwoNodes(**getattr(request, "param", {}))
    try:
        yield lab
    finally:
        lab.nslab.destroy()


def _stream_entry(fw: str, sport: int) -> Connection:
    with inside(fw), ConntrackSocket(events=False) as ct:
        [entry] = [c for c in ct.dump() if c.proto == PROTO_TCP and c.orig.sport == sport]
    return entry


@pytest.mark.lab
@pytest.mark.parametrize(
    "two_nodes", [{}, {"snat": True}, {"dnat": True}], indirect=True, ids=["plain", "snat", "dnat"]
)
def test_stream_survives_owner_death_after_injection(two_nodes: TwoNodes) -> None:
    lab = two_nodes
    lab.own(0, range(SETTINGS.buckets))  # fw1 owns everything, fw2 nothing
    lab.own(1, ())
    dnat = lab.dnat
    stream = TcpStream(
        lab.client, lab.server, CLIENT, CLUSTER_IN if dnat else SERVER, 8080, 80 if dnat else 8080
    )
    try:
        assert stream.client_to_server(b"before" * 100)
        assert stream.server_to_client(b"reply" * 100)
        entry = _stream_entry(lab.fws[0], stream.sport)  # what the agent would have synced
        assert entry.state == TCP_ESTABLISHED and entry.mark & 0xFFFF
        assert entry.nat == (lab.dnat or lab.snat)
        with inside(lab.fws[1]), ConntrackSocket(events=False) as ct:
            assert not [c for c in ct.dump() if c.orig == entry.orig]  # fw2 never saw it
        lab.kill(0)
        with inside(lab.fws[1]), ConntrackSocket(events=False) as ct:
            assert ct.inject([entry]) == 1
        lab.own(1, range(SETTINGS.buckets))
        assert stream.client_to_server(b"after" * 1000, timeout=5.0)
        assert stream.server_to_client(b"still" * 1000, timeout=5.0)
        moved = _stream_entry(lab.fws[1], stream.sport)
        assert moved.orig == entry.orig and moved.reply == entry.reply
        assert moved.mark == entry.mark and moved.nat == entry.nat
    finally:
        stream.close()


@pytest.mark.lab
@pytest.mark.parametrize(
    ("two_nodes", "survivor_owns", "survives"),
    [
        ({"tcp_loose": True}, True, True),  # pickup by the bucket's new owner
        ({"tcp_loose": True}, False, False),  # a non-owner never picks it up
        ({"tcp_loose": False}, True, False),  # without loose, unsynced means lost
    ],
    indirect=["two_nodes"],
    ids=["loose-owner", "loose-non-owner", "strict-owner"],
)
def test_unsynced_stream_after_owner_death(
    two_nodes: TwoNodes, survivor_owns: bool, survives: bool
) -> None:
    lab = two_nodes
    lab.own(0, range(SETTINGS.buckets))
    lab.own(1, ())
    stream = TcpStream(lab.client, lab.server, CLIENT, SERVER, 8080)
    try:
        assert stream.client_to_server(b"before" * 100)
        lab.kill(0)  # nothing is injected on fw2
        lab.own(1, range(SETTINGS.buckets) if survivor_owns else ())
        # The server speaks first: the picked-up entry's original direction is
        # then outside -> inside, and the symmetric hash still gives the bucket.
        ok = stream.server_to_client(b"after" * 200, timeout=2.5)
        ok = ok and stream.client_to_server(b"again" * 200, timeout=2.5)
        assert ok == survives
        with inside(lab.fws[1]), ConntrackSocket(events=False) as ct:
            picked = [
                c
                for c in ct.dump()
                if c.proto == PROTO_TCP and stream.sport in (c.orig.sport, c.orig.dport)
            ]
        assert bool(picked) == survives
    finally:
        stream.close()


@pytest.mark.lab
def test_request_errors_are_reported_with_errno(one: OneNode) -> None:
    good = Connection(PROTO_TCP, make_tuple(CLIENT, SERVER, 1, 2), make_tuple(SERVER, CLIENT, 2, 1))
    bad = good.with_state(99, 0)  # no such TCP state: the attribute policy refuses it
    with inside(one.fw), ConntrackSocket(events=False) as ct:
        assert ct.inject([good, bad]) == 1
        assert [c.orig for c in ct.dump()] == [good.orig]  # the good one went in
        assert ct.refused == [(bad, os.strerror(errno.ERANGE))]
        assert ct.request_errors == {f"inject: {os.strerror(errno.ERANGE)}": 1}
