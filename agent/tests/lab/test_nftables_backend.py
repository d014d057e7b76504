"""The nftables backend on the real kernel, in namespaces this test creates.

client (zone inside) --veth-- fw --veth-- server (zone outside)

The fw namespace runs NftablesDataPlane. Real TCP, UDP and ICMP flows (IPv4
and IPv6, both directions, and to the cluster IP itself) cross it; the
conntrack marks the kernel writes are compared with the Python twin
(bucket.py), and with a partial owned set only the flows whose twin bucket is
owned get through.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import re
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from fwcluster_lab.nslab import (
    NsLab,
    icmp_echoes,
    inside,
    sh,
    tcp_flows,
    udp_flows,
    wait_until,
)

from availability_manager.daemon.transport import SyncSocket
from availability_manager.dataplane.base import DataPlaneConfig, Zone
from availability_manager.dataplane.bucket import bucket_of, bucket_of_mark
from availability_manager.dataplane.input_guard import InputGuard
from availability_manager.dataplane.nftables import NftablesDataPlane, _interface_maddrs
from availability_manager.dataplane.sysctl import read_sysctl
from availability_manager.types import ClusterSettings

pytestmark = pytest.mark.lab

MAC_IN = "03:fc:00:00:00:01"
MAC_OUT = "03:fc:00:00:00:02"
CLIENT, SERVER = "192.0.2.10", "198.51.100.10"
CLIENT6, SERVER6 = "2001:db8:1::10", "2001:db8:2::10"
CLUSTER_IN, CLUSTER_OUT = "192.0.2.1", "198.51.100.1"
CLUSTER_IN6 = "2001:db8:1::1"
HAIRPIN = "203.0.113.7"
ZONES = ("inside", "outside")


def ipv6_groups(macs: set[str]) -> set[str]:
    return {m for m in macs if m.startswith("33:33:")}


def source_ports_received(
    ns: str, addr: str, send: Callable[[], None], expected: set[int]
) -> set[int]:
    """The source ports of the UDP datagrams that reach addr:5000 in `ns`
    while `send` runs: waits until every expected one is in, then a little
    longer for a straggler that should not have passed."""
    with inside(ns):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind((addr, 5000))
        rx.setblocking(False)
    got: set[int] = set()

    def received_expected() -> bool:
        while True:
            try:
                got.add(rx.recvfrom(16)[1][1])
            except BlockingIOError:
                return got >= expected

    try:
        send()
        wait_until(received_expected)
        time.sleep(0.1)
        received_expected()
    finally:
        rx.close()
    return got


def _config(settings: ClusterSettings, tcp_loose: bool = False) -> DataPlaneConfig:
    ip = ipaddress.ip_interface
    return DataPlaneConfig(
        node_id=1,
        settings=settings,
        zones=(
            Zone("inside", "in0", (ip(f"{CLUSTER_IN}/24"), ip(f"{CLUSTER_IN6}/64")), MAC_IN),
            Zone("outside", "out0", (ip(f"{CLUSTER_OUT}/24"),), MAC_OUT),
        ),
        tcp_loose=tcp_loose,
    )


class Lab:
    def __init__(self) -> None:
        self.nslab = NsLab(f"fwdp-{os.getpid()}-nb-")
        lab = self.nslab
        self.client, self.fw, self.server = lab.ns("c"), lab.ns("f"), lab.ns("s")
        lab.veth(self.client, "eth0", self.fw, "in0")
        lab.veth(self.fw, "out0", self.server, "eth0")
        lab.addr(self.client, "eth0", f"{CLIENT}/24")
        lab.addr(self.client, "eth0", f"{CLIENT6}/64")
        lab.addr(self.fw, "in0", "192.0.2.2/24")  # node IPs first: they stay primary
        lab.addr(self.fw, "in0", "2001:db8:1::2/64")
        lab.addr(self.fw, "out0", "198.51.100.2/24")
        lab.addr(self.fw, "out0", "2001:db8:2::2/64")
        lab.addr(self.server, "eth0", f"{SERVER}/24")
        lab.addr(self.server, "eth0", f"{SERVER6}/64")
        lab.route(self.client, "198.51.100.0/24", CLUSTER_IN)
        lab.route(self.server, "192.0.2.0/24", CLUSTER_OUT)
        lab.route(self.client, "2001:db8:2::/64", CLUSTER_IN6)
        lab.route(self.server, "2001:db8:1::/64", "2001:db8:2::2")
        # Hairpin: the fw routes 203.0.113.0/24 back into zone inside (to the
        # client, which drops it); conntrack on the fw still records the flow.
        lab.route(self.fw, "203.0.113.0/24", CLIENT)
        lab.route(self.client, "203.0.113.0/24", CLUSTER_IN)

    def destroy(self) -> None:
        self.nslab.destroy()


@pytest.fixture
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    lab = Lab()
    try:
        yield lab
    finally:
        lab.destroy()


# --- reading conntrack with the conntrack tool (the independent witness) -------------

_ENTRY = re.compile(
    r"^(?P<l3>ipv[46])\s+\d+\s+(?P<proto>\w+)\s+(?P<num>\d+)\s.*?src=(?P<src>\S+) dst=(?P<dst>\S+)"
    r"(?: sport=(?P<sport>\d+) dport=(?P<dport>\d+))?"
    r"(?: type=(?P<type>\d+) code=\d+ id=(?P<id>\d+))?"
    r".*?mark=(?P<mark>\d+)"
)


def conntrack_entries(ns: str) -> list[dict[str, str]]:
    out = sh("conntrack", "-L", "-o", "extended", ns=ns, check=False)  # both families
    return [m.groupdict() for line in out.splitlines() if (m := _ENTRY.match(line))]


def twin_bucket(settings: ClusterSettings, e: dict[str, str]) -> int:
    src, dst = ipaddress.ip_address(e["src"]), ipaddress.ip_address(e["dst"])
    client_side = [
        ipaddress.ip_network("192.0.2.0/24"),
        ipaddress.ip_network("2001:db8:1::/64"),
        ipaddress.ip_network("203.0.113.0/24"),  # routed back into zone inside
    ]
    in_zone = "inside" if any(src in n for n in client_side) else "outside"
    local = str(dst) in (CLUSTER_IN, CLUSTER_OUT, CLUSTER_IN6)
    out_zone = None if local else ("inside" if any(dst in n for n in client_side) else "outside")
    if e["type"] is not None:
        sport, dport = int(e["id"]), int(e["type"]) << 8
    else:
        sport, dport = int(e["sport"] or 0), int(e["dport"] or 0)
    return bucket_of(
        settings,
        ZONES,
        in_zone=in_zone,
        out_zone=out_zone,
        proto=int(e["num"]),
        src=src.packed,
        dst=dst.packed,
        sport=sport,
        dport=dport,
    )


# --- tests ----------------------------------------------------------------------------


@pytest.mark.parametrize("hash_fields", ["addresses+ports", "addresses"])
def test_kernel_marks_equal_twin_for_real_flows(lab: Lab, hash_fields: str) -> None:
    settings = ClusterSettings(buckets=256, hash_seed=0x1234ABCD, hash_fields=hash_fields)
    dp = NftablesDataPlane(_config(settings))
    with inside(lab.fw):
        dp.install()
        dp.set_owned_buckets(frozenset(range(256)))
    deadline = time.monotonic() + 60
    assert tcp_flows(lab.client, lab.server, CLIENT, SERVER, range(20000, 20150)) == 150
    udp_flows(lab.client, CLIENT, SERVER, range(21000, 21150))
    udp_flows(lab.server, SERVER, CLIENT, range(22000, 22100))  # outside -> inside
    # local: a service on the cluster IP (a NEW connection to a port without a
    # socket is dropped before it is confirmed: see the test after this one)
    with inside(lab.fw):
        service = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        service.bind((CLUSTER_IN, 53))
    with service:
        udp_flows(lab.client, CLIENT, CLUSTER_IN, range(23000, 23030), dport=53)
    udp_flows(lab.client, CLIENT6, SERVER6, range(24000, 24080))
    udp_flows(lab.client, CLIENT, HAIRPIN, range(25000, 25050))  # inside -> inside
    icmp_echoes(lab.client, SERVER, range(1, 101))
    icmp_echoes(lab.client, SERVER6, range(1, 31))
    assert tcp_flows(lab.client, lab.server, CLIENT6, SERVER6, range(26000, 26030)) == 30
    assert time.monotonic() < deadline
    expected = 150 + 150 + 100 + 30 + 80 + 50 + 100 + 30 + 30

    def lab_entries() -> list[dict[str, str]]:
        entries = conntrack_entries(lab.fw)
        return [e for e in entries if e["src"] in (CLIENT, SERVER, CLIENT6)]

    wait_until(lambda: len(lab_entries()) >= expected)
    found = lab_entries()
    assert len(found) == expected, f"{len(found)} conntrack entries, expected {expected}"
    kinds = {(e["src"], e["dst"]) for e in found}
    assert {(CLIENT, HAIRPIN), (CLIENT, CLUSTER_IN), (SERVER, CLIENT), (CLIENT6, SERVER6)} <= kinds
    protos = {(e["l3"], e["proto"]) for e in found}
    assert {("ipv4", "tcp"), ("ipv4", "udp"), ("ipv4", "icmp")} <= protos
    assert {("ipv6", "tcp"), ("ipv6", "udp"), ("ipv6", "icmpv6")} <= protos
    wrong = [e for e in found if bucket_of_mark(int(e["mark"]), 0xFFFF) != twin_bucket(settings, e)]
    assert not wrong, f"{len(wrong)} of {len(found)} differ, e.g. {wrong[:3]}"
    with inside(lab.fw):
        dp.uninstall()


@contextlib.contextmanager
def closed_and_open_ports(lab: Lab, extra_closed: range = range(0)) -> Iterator[Callable[[], int]]:
    """The no_listener probe: a UDP service on the cluster IP's port 5353 in
    the fw, 20 new flows from the client to a closed port (20391) and 10 to
    5353, plus `extra_closed` source ports to the closed port. Yields a
    function that counts the ICMP messages the client has received."""
    with inside(lab.fw):
        service = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        service.bind((CLUSTER_IN, 5353))
    with inside(lab.client):
        icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        icmp.setblocking(False)

    def icmp_received() -> int:
        received = 0
        try:
            while True:
                icmp.recv(2048)
                received += 1
        except BlockingIOError:
            return received

    with service, icmp:
        udp_flows(lab.client, CLIENT, CLUSTER_IN, range(27000, 27020), dport=20391)  # closed
        udp_flows(lab.client, CLIENT, CLUSTER_IN, range(27100, 27110), dport=5353)  # open
        if extra_closed:
            udp_flows(lab.client, CLIENT, CLUSTER_IN, extra_closed, dport=20391)
        yield icmp_received


def entries_to_cluster_ip(lab: Lab) -> list[dict[str, str]]:
    return [e for e in conntrack_entries(lab.fw) if e["dst"] == CLUSTER_IN]


def test_new_connection_to_a_local_port_without_socket_is_dropped_silently(lab: Lab) -> None:
    """What a reply to a source-NATed connection looks like on a node that does
    not know the connection: NEW, to the cluster IP, in a bucket the node owns,
    to a port no socket listens on. No conntrack entry may be confirmed (it
    would collide with the synced one at the next takeover) and no
    port-unreachable may go back; a port with a socket still works."""
    settings = ClusterSettings(buckets=16, hash_seed=0xFACE)
    dp = NftablesDataPlane(_config(settings))
    with inside(lab.fw):
        dp.install()
        dp.set_owned_buckets(frozenset(range(16)))
    with closed_and_open_ports(lab) as icmp_received:
        assert wait_until(lambda: len(entries_to_cluster_ip(lab)) >= 10)
        time.sleep(0.2)
        assert sorted(e["dport"] for e in entries_to_cluster_ip(lab)) == ["5353"] * 10
        with inside(lab.fw):
            counters = dp.status()["counters"]
        assert isinstance(counters, dict) and counters["no_listener"] == 20
        assert icmp_received() == 0, "a port-unreachable came back"
    with inside(lab.fw):
        dp.uninstall()


def test_only_flows_in_owned_buckets_pass(lab: Lab) -> None:
    settings = ClusterSettings(buckets=64, hash_seed=0xC0FFEE)
    owned = frozenset(range(0, 64, 3))
    ports = range(30000, 30200)
    client, server = ipaddress.ip_address(CLIENT).packed, ipaddress.ip_address(SERVER).packed
    expected = {
        p
        for p in ports
        if bucket_of(
            settings,
            ZONES,
            in_zone="inside",
            out_zone="outside",
            proto=17,
            src=client,
            dst=server,
            sport=p,
            dport=5000,
        )
        in owned
    }
    assert 0 < len(expected) < len(ports)
    dp = NftablesDataPlane(_config(settings))
    with inside(lab.fw):
        dp.install()
        dp.set_owned_buckets(owned)
        assert dp.programmed_owned() == sorted(owned)
    got = source_ports_received(
        lab.server, SERVER, lambda: udp_flows(lab.client, CLIENT, SERVER, ports), expected
    )
    assert got == expected
    with inside(lab.fw):
        status = dp.status()
        dp.uninstall()
    counters = status["counters"]
    assert isinstance(counters, dict)
    assert counters["not_owned"] == len(ports) - len(expected)
    assert counters["accepted_new"] == len(expected)


LINKDOWN_IN = "net.ipv4.conf.in0.ignore_routes_with_linkdown"


def test_install_uninstall_restores_the_namespace(lab: Lab) -> None:
    settings = ClusterSettings()
    with inside(lab.fw):
        before_fwd = read_sysctl("net.ipv4.ip_forward")
        before_announce = read_sysctl("net.ipv4.conf.all.arp_announce")
        before_linkdown = read_sysctl(LINKDOWN_IN)
        before_addrs = sh("ip", "-br", "addr")
        # IPv6 groups (33:33:...) follow the kernel's own address state: ignored.
        before_maddr = _interface_maddrs("in0") - ipv6_groups(_interface_maddrs("in0"))
        # The operator's own policy, which the agent must leave alone.
        sh(
            "nft",
            "add table inet user; add chain inet user c { type filter hook prerouting "
            "priority 0; }; add rule inet user c meta mark 0x1234 accept",
        )
        user_before = sh("nft", "list", "table", "inet", "user")
        dp = NftablesDataPlane(_config(settings, tcp_loose=True))
        dp.install()
        dp.install()  # idempotent
        assert read_sysctl("net.ipv4.ip_forward") == "1"
        assert read_sysctl("net.ipv4.conf.all.arp_announce") == "2"
        assert read_sysctl("net.netfilter.nf_conntrack_tcp_loose") == "1"
        assert read_sysctl(LINKDOWN_IN) == "1"  # a zone link without carrier: no route
        assert CLUSTER_IN in sh("ip", "-br", "addr", "show", "dev", "in0")
        assert MAC_IN in sh("ip", "maddr", "show", "dev", "in0")
        primary = sh("ip", "-4", "-br", "addr", "show", "dev", "in0").split()[2]
        assert primary.startswith("192.0.2.2/")  # node IP stays primary
        tables = sh("nft", "list", "tables")
        assert "table inet fwcluster" in tables and "table arp fwcluster" in tables
        dp.set_owned_buckets(frozenset({1, 2, 3}))
        dp.set_owned_buckets(frozenset({7}))
        assert dp.programmed_owned() == [7]
        assert sh("nft", "list", "table", "inet", "user") == user_before
        dp.uninstall()
        assert "fwcluster" not in sh("nft", "list", "tables")
        assert sh("nft", "list", "table", "inet", "user") == user_before
        assert read_sysctl("net.ipv4.ip_forward") == before_fwd
        assert read_sysctl("net.ipv4.conf.all.arp_announce") == before_announce
        assert read_sysctl(LINKDOWN_IN) == before_linkdown
        assert sh("ip", "-br", "addr") == before_addrs
        after = _interface_maddrs("in0")
        assert after - ipv6_groups(after) == before_maddr
        assert MAC_IN not in after


def test_neighbour_advertisements_for_cluster_ipv6_carry_the_cluster_mac(lab: Lab) -> None:
    dp = NftablesDataPlane(_config(ClusterSettings()))
    with inside(lab.fw):
        dp.install()
    try:
        udp_flows(lab.client, CLIENT6, CLUSTER_IN6, range(40000, 40001))  # resolves it
        assert wait_until(
            lambda: "lladdr" in sh("ip", "-6", "neigh", "show", CLUSTER_IN6, ns=lab.client)
        )
        neigh = sh("ip", "-6", "neigh", "show", CLUSTER_IN6, ns=lab.client)
        # The node's own IPv6 address is still answered with its own MAC.
        udp_flows(lab.client, CLIENT6, "2001:db8:1::2", range(40001, 40002))
        assert wait_until(
            lambda: "lladdr" in sh("ip", "-6", "neigh", "show", "2001:db8:1::2", ns=lab.client)
        )
        own = sh("ip", "-6", "neigh", "show", "2001:db8:1::2", ns=lab.client)
    finally:
        with inside(lab.fw):
            dp.uninstall()
    assert MAC_IN in neigh
    assert MAC_IN not in own


def test_arp_replies_for_cluster_ip_carry_the_cluster_mac(lab: Lab) -> None:
    dp = NftablesDataPlane(_config(ClusterSettings()))
    with inside(lab.fw):
        dp.install()
    udp_flows(lab.client, CLIENT, CLUSTER_IN, range(40000, 40001))  # resolves the cluster IP
    wait_until(lambda: "lladdr" in sh("ip", "neigh", "show", CLUSTER_IN, ns=lab.client))
    neigh = sh("ip", "neigh", "show", CLUSTER_IN, ns=lab.client)
    with inside(lab.fw):
        dp.uninstall()
    assert MAC_IN in neigh


def test_input_guard_alone_drops_what_the_nftables_backend_drops(lab: Lab) -> None:
    """The clusterdev backend's input guard (input_guard.py) on a real kernel:
    with conntrack entries marked as the clusterdev module marks them (here by
    a table of the test's own), a NEW datagram to a closed port of the node is
    dropped without a port-unreachable and counted; an open port still works,
    unmarked traffic is not the guard's business, and uninstall removes it."""
    cfg = _config(ClusterSettings(buckets=16, hash_seed=0xFACE))
    mask = f"{cfg.mark_mask:#x}"
    sh("ip", "addr", "add", f"{CLUSTER_IN}/24", "dev", "in0", ns=lab.fw)
    sh("nft", "add table ip module_stand_in", ns=lab.fw)
    sh("nft", "add chain ip module_stand_in pre { type filter hook prerouting priority -150; }",
       ns=lab.fw)  # fmt: skip
    sh("nft", f"add rule ip module_stand_in pre udp sport < 27200 ct mark set ct mark or {mask}",
       ns=lab.fw)  # fmt: skip
    guard = InputGuard(cfg)
    with inside(lab.fw):
        guard.install()
        guard.install()  # idempotent: replaces itself
    unmarked = range(27300, 27305)
    with closed_and_open_ports(lab, extra_closed=unmarked) as icmp_received:
        assert wait_until(lambda: len(entries_to_cluster_ip(lab)) >= 15)
        time.sleep(0.2)
        kept = sorted((e["dport"], int(e["sport"]) < 27200) for e in entries_to_cluster_ip(lab))
        assert kept == [("20391", False)] * 5 + [("5353", True)] * 10
        with inside(lab.fw):
            assert guard.counters()["no_listener"] == 20
        assert icmp_received() == 5, "only the unmarked datagrams may be refused"
    with inside(lab.fw):
        guard.uninstall()
        guard.uninstall()  # nothing left: still fine
    assert "fwcluster" not in sh("nft", "list", "tables", ns=lab.fw)


def udp_forwarded(lab: Lab, ports: range, expect: bool = True) -> set[int]:
    """The source ports of UDP datagrams from the client (one per port) that
    the fw forwarded to the server; waits for all of them if `expect`."""

    def send() -> None:
        udp_flows(lab.client, CLIENT, SERVER, ports)

    return source_ports_received(lab.server, SERVER, send, set(ports) if expect else set())


def test_the_fence_stops_forwarding_when_the_agent_stops_refreshing_it(lab: Lab) -> None:
    """The dead man's switch (dataplane/fence.py): owning every bucket, the
    node forwards while keep_alive() comes, drops everything classified once
    it has not come for the fence timeout, and forwards again after it."""
    settings = ClusterSettings(buckets=16)
    config = dataclasses.replace(_config(settings), fence_timeout_s=0.2)
    dp = NftablesDataPlane(config)

    with inside(lab.fw):
        dp.install()
        dp.set_owned_buckets(frozenset(range(16)))
    try:
        alive = range(31000, 31010)
        with inside(lab.fw):
            dp.keep_alive()
        assert udp_forwarded(lab, alive) == set(alive)
        time.sleep(0.4)  # no keep_alive: the agent "hangs"
        hung = range(31100, 31110)
        assert udp_forwarded(lab, hung, expect=False) == set()
        with inside(lab.fw):
            fenced = dp.status()["counters"]
            dp.keep_alive()
        assert isinstance(fenced, dict) and fenced["fenced"] >= len(hung)
        back = range(31200, 31210)
        assert udp_forwarded(lab, back) == set(back)
        with inside(lab.fw):
            fence = dp.status()["fence"]
        assert isinstance(fence, dict) and fence["errors"] == {} and fence["refreshes"] >= 3
    finally:
        with inside(lab.fw):
            dp.uninstall()


def test_a_heartbeat_sent_with_the_fence_mark_keeps_the_node_forwarding(lab: Lab) -> None:
    """The fence refreshed by the heartbeat's own packets (fence.py): a
    datagram the agent's SyncSocket sends with `fence_mark` re-adds the
    fence's elements on its way out, with no keep_alive(); the same datagram
    unmarked does not; and the node falls silent a fence timeout after the
    last marked one."""
    settings = ClusterSettings(buckets=16)
    config = dataclasses.replace(_config(settings), fence_timeout_s=0.3)
    dp = NftablesDataPlane(config)

    def elements() -> str:
        return sh("nft", "list", "set", "inet", "fwcluster", "alive", ns=lab.fw)

    with inside(lab.fw):
        dp.install()
        dp.set_owned_buckets(frozenset(range(16)))
        sync = SyncSocket(
            "out0",
            ipaddress.ip_address("198.51.100.2"),
            7788,
            "unicast",
            peers=[ipaddress.ip_address(SERVER)],
        )
    try:
        assert dp.fence_mark != 0
        time.sleep(0.5)  # install's own refresh expired: fenced
        assert "elements" not in elements()
        assert sync.send(b"heartbeat", 0) is True
        assert "elements" not in elements(), "an unmarked datagram refreshed the fence"
        assert sync.send(b"heartbeat", dp.fence_mark) is True
        assert sync.marks_taken and sync.send_errors == 0
        listed = elements()
        assert "elements" in listed and "expires" in listed, listed
        assert udp_forwarded(lab, range(32000, 32010)) == set(range(32000, 32010))
        with inside(lab.fw):
            refreshes = dp.status()["fence"]
        time.sleep(0.5)  # no heartbeat since: the agent "hangs"
        assert udp_forwarded(lab, range(32100, 32110), expect=False) == set()
        with inside(lab.fw):
            assert dp.status()["fence"] == refreshes, "the heartbeat went by netlink"
    finally:
        sync.close()
        with inside(lab.fw):
            dp.uninstall()


def test_a_new_packet_of_an_entry_with_a_bucket_keeps_that_bucket(lab: Lab) -> None:
    """UDP is NEW until its first reply, so an injected entry (a takeover's)
    that is still unreplied sees NEW packets. Its bucket is the one its owner
    gave it, not always its tuple's hash (a helper's data connection has its
    master's): the node forwards by that bucket and leaves the mark alone. The
    entries are written with the conntrack tool, as the agent writes them."""
    settings = ClusterSettings(buckets=64, hash_seed=0x5EED)
    client, server = ipaddress.ip_address(CLIENT).packed, ipaddress.ip_address(SERVER).packed

    def own_hash(port: int) -> int:
        return bucket_of(settings, ZONES, in_zone="inside", out_zone="outside", proto=17,
                         src=client, dst=server, sport=port, dport=5000)  # fmt: skip

    ports = range(32000, 32040)
    given = {p: (own_hash(p) + 1 + p % 7) % 64 for p in ports}  # never the tuple's own bucket
    owned = frozenset(range(0, 64, 2))
    expected = {p for p in ports if given[p] in owned}
    assert 0 < len(expected) < len(ports)
    dp = NftablesDataPlane(_config(settings))
    with inside(lab.fw):
        dp.install()
        dp.set_owned_buckets(owned)
    try:
        for p in ports:
            sh("conntrack", "-I", "-p", "udp", "-s", CLIENT, "-d", SERVER,
               "--sport", str(p), "--dport", "5000", "--timeout", "60",
               "--mark", str(given[p] + 1), ns=lab.fw)  # fmt: skip
        got = source_ports_received(
            lab.server, SERVER, lambda: udp_flows(lab.client, CLIENT, SERVER, ports), expected
        )
        assert got == expected, f"forwarded by the tuple's hash: {sorted(got ^ expected)[:5]}"
        marks = {
            int(e["sport"]): bucket_of_mark(int(e["mark"]), 0xFFFF)
            for e in conntrack_entries(lab.fw)
            if e["src"] == CLIENT and e["sport"] and int(e["sport"]) in ports
        }
        assert marks == given, "an entry's bucket was rewritten by a NEW packet"
        with inside(lab.fw):
            counters = dp.status()["counters"]
        assert isinstance(counters, dict)
        assert counters["accepted_new"] == len(expected)
        assert counters["not_owned"] == len(ports) - len(expected)
    finally:
        with inside(lab.fw):
            dp.uninstall()
