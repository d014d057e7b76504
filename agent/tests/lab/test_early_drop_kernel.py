"""The early chain on the real kernel: a foreign packet never reaches conntrack.

The lab of test_nftables_backend.py (client - fw - server); the fw owns no
bucket, so every packet it receives is foreign. A witness table of the test's
own counts, just after conntrack (prerouting -190), the packets sent to a
cluster MAC that got that far: for every class the early chain decides it
must stay at 0 (and the cluster chain's own counters too), while the same
traffic without the early chain reaches it (so the witness can fail). Every
class the early chain must leave alone reaches conntrack and is counted by
its early_* pass counter. An owner with a partial owned set forwards exactly
the flows the cluster chain alone forwards.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
from fwcluster_lab.nslab import icmp_echoes, inside, sh, udp_flows, wait_until
from test_nftables_backend import (  # the same lab, addresses and config
    CLIENT,
    CLIENT6,
    CLUSTER_IN,
    HAIRPIN,
    MAC_IN,
    MAC_OUT,
    SERVER,
    SERVER6,
    ZONES,
    Lab,
    _config,
    conntrack_entries,
    source_ports_received,
)

from availability_manager.dataplane.bucket import bucket_of
from availability_manager.dataplane.early_drop import EarlyDrop, parse_slow_path
from availability_manager.dataplane.nftables import NftablesDataPlane
from availability_manager.types import ClusterSettings

pytestmark = pytest.mark.lab

SETTINGS = ClusterSettings(buckets=64, hash_seed=0xE411D)
SLOW_PORT = 5001  # udp to SERVER:5001 is a slow_path entry (as a DNAT target would be)
WITNESS = f"""
table inet ed_witness {{
  counter past_conntrack {{}}
  chain seen {{
    type filter hook prerouting priority -190; policy accept;
    icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit }} return
    ether daddr {{ {MAC_IN}, {MAC_OUT} }} counter name past_conntrack
  }}
}}
"""


@pytest.fixture
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    lab = Lab()
    try:
        yield lab
    finally:
        lab.destroy()


def data_plane(lab: Lab, early: bool, owned: frozenset[int] = frozenset()) -> NftablesDataPlane:
    slow = parse_slow_path([{"network": SERVER, "protocol": "udp", "ports": SLOW_PORT}])
    cfg = dataclasses.replace(_config(SETTINGS), early_drop=EarlyDrop(early, slow))
    dp = NftablesDataPlane(cfg)
    with inside(lab.fw):
        dp.install()
        dp.set_owned_buckets(owned)
    subprocess.run(
        ["ip", "netns", "exec", lab.fw, "nft", "-f", "-"], input=WITNESS, text=True, check=True
    )
    # resolve the cluster IPs' MACs first (ARP and ND are not under test)
    udp_flows(lab.client, CLIENT, CLUSTER_IN, range(39000, 39001), dport=9)
    udp_flows(lab.client, CLIENT6, "2001:db8:1::1", range(39000, 39001), dport=9)
    sh("ping", "-c", "1", "-W", "1", "198.51.100.1", ns=lab.server, check=False)
    time.sleep(0.2)
    return dp


def counters(lab: Lab, dp: NftablesDataPlane) -> dict[str, int]:
    with inside(lab.fw):
        status = dp.status()
        witness = sh("nft", "-j", "list", "counter", "inet", "ed_witness", "past_conntrack")
    got = status["counters"]
    assert isinstance(got, dict)
    for item in json.loads(witness)["nftables"]:
        if "counter" in item:
            got["past_conntrack"] = int(item["counter"]["packets"])
    return dict(got)


# --- packet senders: each returns how many packets it sent to a cluster MAC -----------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _raw4(ns: str, proto: int, src: str, dst: str, payloads: list[bytes]) -> int:
    """Send transport payloads (with their header) as IPv4 packets of `proto`."""
    with inside(ns), socket.socket(socket.AF_INET, socket.SOCK_RAW, proto) as s:
        s.bind((src, 0))
        for p in payloads:
            s.sendto(p, (dst, 0))
    return len(payloads)


def udp_forward(lab: Lab) -> int:
    udp_flows(lab.client, CLIENT, SERVER, range(41000, 41040))
    return 40


def udp_reverse(lab: Lab) -> int:
    udp_flows(lab.server, SERVER, CLIENT, range(41100, 41140))
    return 40


def udp6_forward(lab: Lab) -> int:
    udp_flows(lab.client, CLIENT6, SERVER6, range(41200, 41240))
    return 40


def tcp_syns(lab: Lab) -> int:
    with inside(lab.client):
        for port in range(41300, 41330):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setblocking(False)
                s.bind((CLIENT, port))
                s.connect_ex((SERVER, 8080))  # the SYN leaves now; close sends nothing
    return 30


def tcp_midstream(lab: Lab) -> int:
    """ACK segments of connections the fw has never seen (INVALID there with
    tcp_loose=0: conntrack would allocate an entry and free it)."""
    src, dst = ipaddress.ip_address(CLIENT).packed, ipaddress.ip_address(SERVER).packed
    segments = []
    for port in range(41400, 41430):
        hdr = struct.pack("!HHIIBBHHH", port, 8080, 1000, 2000, 5 << 4, 0x10, 65535, 0, 0)
        pseudo = src + dst + struct.pack("!BBH", 0, 6, len(hdr))
        c = _checksum(pseudo + hdr)
        segments.append(hdr[:16] + struct.pack("!H", c) + hdr[18:])
    return _raw4(lab.client, socket.IPPROTO_TCP, CLIENT, SERVER, segments)


def icmp_requests(lab: Lab) -> int:
    icmp_echoes(lab.client, SERVER, range(1, 31))
    return 30


def icmp_replies(lab: Lab) -> int:
    """Echo replies from the server (to requests the fw never saw)."""
    msgs = []
    for ident in range(100, 130):
        body = struct.pack("!BBHHH", 0, 0, 0, ident, 1) + b"fwdp"
        msgs.append(body[:2] + struct.pack("!H", _checksum(body)) + body[4:])
    return _raw4(lab.server, socket.IPPROTO_ICMP, SERVER, CLIENT, msgs)


def icmp6_requests(lab: Lab) -> int:
    icmp_echoes(lab.client, SERVER6, range(1, 21))
    return 20


def fragmented_udp(lab: Lab) -> int:
    """Datagrams of 4000 bytes: three IPv4 fragments each on the wire,
    reassembled (nf_defrag, -400) before the early chain sees them."""
    with inside(lab.client):
        for port in range(41500, 41510):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((CLIENT, port))
                s.sendto(b"f" * 4000, (SERVER, 5000))
    return 10  # after reassembly


def to_cluster_ip(lab: Lab) -> int:
    udp_flows(lab.client, CLIENT, CLUSTER_IN, range(41600, 41620), dport=53)
    return 20


def to_slow_path_entry(lab: Lab) -> int:
    udp_flows(lab.client, CLIENT, SERVER, range(41700, 41720), dport=SLOW_PORT)
    return 20


def hairpin(lab: Lab) -> int:
    udp_flows(lab.client, CLIENT, HAIRPIN, range(41800, 41820))
    return 20


def icmp_errors(lab: Lab) -> int:
    """Port unreachable from the server about a datagram of the client's."""
    src, dst = ipaddress.ip_address(SERVER).packed, ipaddress.ip_address(CLIENT).packed
    inner_ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, 17, 0, dst, src)
    msgs = []
    for port in range(41900, 41920):
        inner = inner_ip + struct.pack("!HHHH", port, 5000, 8, 0)
        body = struct.pack("!BBHI", 3, 3, 0, 0) + inner
        msgs.append(body[:2] + struct.pack("!H", _checksum(body)) + body[4:])
    return _raw4(lab.server, socket.IPPROTO_ICMP, SERVER, CLIENT, msgs)


def gre(lab: Lab) -> int:
    """Another protocol (GRE): hashed on addresses only after conntrack."""
    return _raw4(lab.client, 47, CLIENT, SERVER, [b"\0\0\x08\0" + b"g" * 20] * 20)


DECIDED: dict[str, Callable[[Lab], int]] = {
    "udp": udp_forward,
    "udp-reverse": udp_reverse,
    "udp-ipv6": udp6_forward,
    "tcp-syn": tcp_syns,
    "tcp-midstream": tcp_midstream,
    "icmp-echo-request": icmp_requests,
    "icmp-echo-reply": icmp_replies,
    "icmpv6-echo-request": icmp6_requests,
    "fragments": fragmented_udp,
}
PASSED: dict[str, tuple[Callable[[Lab], int], str]] = {
    "to-cluster-ip": (to_cluster_ip, "early_undecided"),
    "slow-path-entry": (to_slow_path_entry, "early_slow_path"),
    "hairpin": (hairpin, "early_undecided"),
    "icmp-error": (icmp_errors, "early_undecided"),
    "other-protocol": (gre, "early_undecided"),
}


def settle(lab: Lab, dp: NftablesDataPlane, key: str, at_least: int) -> dict[str, int]:
    wait_until(lambda: counters(lab, dp).get(key, 0) >= at_least, timeout=3.0)
    time.sleep(0.1)
    return counters(lab, dp)


@pytest.mark.parametrize("early", [True, False], ids=["early", "without-early"])
@pytest.mark.parametrize("kind", list(DECIDED))
def test_foreign_packets_never_reach_conntrack(lab: Lab, kind: str, early: bool) -> None:
    dp = data_plane(lab, early)
    before = counters(lab, dp)
    sent = DECIDED[kind](lab)
    key = "early_not_owned" if early else "past_conntrack"
    after = settle(lab, dp, key, before.get(key, 0) + sent)
    reached = after["past_conntrack"] - before["past_conntrack"]
    late = sum(after[k] - before[k] for k in ("not_owned", "invalid", "not_owned_established"))
    if early:
        assert after["early_not_owned"] - before["early_not_owned"] == sent
        assert reached == 0, f"{reached} of {sent} foreign {kind} packets reached conntrack"
        assert late == 0
        assert not [e for e in conntrack_entries(lab.fw) if e["src"] in (CLIENT, SERVER)]
    else:  # the control: the witness sees them all, the cluster chain drops them
        assert reached == sent
        assert late == sent
    with inside(lab.fw):
        dp.uninstall()


@pytest.mark.parametrize("kind", list(PASSED))
def test_slow_path_classes_pass_the_early_chain(lab: Lab, kind: str) -> None:
    dp = data_plane(lab, True)
    send, counter = PASSED[kind]
    before = counters(lab, dp)
    sent = send(lab)
    after = settle(lab, dp, counter, before[counter] + sent)
    assert after[counter] - before[counter] == sent
    assert after["past_conntrack"] - before["past_conntrack"] == sent
    assert after["early_not_owned"] == before["early_not_owned"]
    with inside(lab.fw):
        dp.uninstall()


def test_known_connections_of_a_bucket_given_away_stop_before_conntrack(lab: Lab) -> None:
    """The fw forwards flows while owning every bucket (so it has their entries,
    as a node that got them by sync would), gives the buckets away (a drain),
    then takes them back: a known but foreign packet is dropped early and its
    entry is left alone; once owned again, the flows pass."""
    dp = data_plane(lab, True, frozenset(range(SETTINGS.buckets)))
    ports = range(42000, 42030)
    udp_flows(lab.client, CLIENT, SERVER, ports)
    assert wait_until(lambda: len(conntrack_entries(lab.fw)) >= len(ports))
    with inside(lab.fw):
        dp.set_owned_buckets(frozenset())
    before = counters(lab, dp)
    udp_flows(lab.client, CLIENT, SERVER, ports)
    after = settle(lab, dp, "early_not_owned", before["early_not_owned"] + len(ports))
    assert after["early_not_owned"] - before["early_not_owned"] == len(ports)
    assert after["past_conntrack"] == before["past_conntrack"]
    assert after["not_owned_established"] == before["not_owned_established"]
    with inside(lab.fw):
        dp.set_owned_buckets(frozenset(range(SETTINGS.buckets)))
    udp_flows(lab.client, CLIENT, SERVER, ports)
    final = settle(lab, dp, "past_conntrack", after["past_conntrack"] + len(ports))
    assert final["past_conntrack"] - after["past_conntrack"] == len(ports)
    assert final["early_not_owned"] == after["early_not_owned"]
    with inside(lab.fw):
        dp.uninstall()


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_an_owner_forwards_exactly_what_the_cluster_chain_alone_forwards(
    lab: Lab, direction: str
) -> None:
    owned = frozenset(range(0, SETTINGS.buckets, 3))
    ports = range(43000, 43150)
    (src, dst, src_ns, dst_ns) = (
        (CLIENT, SERVER, lab.client, lab.server)
        if direction == "forward"
        else (SERVER, CLIENT, lab.server, lab.client)
    )
    zones = ("inside", "outside") if direction == "forward" else ("outside", "inside")
    expected = {
        p
        for p in ports
        if bucket_of(
            SETTINGS,
            ZONES,
            in_zone=zones[0],
            out_zone=zones[1],
            proto=17,
            src=ipaddress.ip_address(src).packed,
            dst=ipaddress.ip_address(dst).packed,
            sport=p,
            dport=5000,
        )
        in owned
    }
    assert 0 < len(expected) < len(ports)
    dp = data_plane(lab, True, owned)
    before = counters(lab, dp)
    got = source_ports_received(dst_ns, dst, lambda: udp_flows(src_ns, src, dst, ports), expected)
    assert got == expected
    c = {k: v - before[k] for k, v in counters(lab, dp).items()}
    assert c["early_not_owned"] == len(ports) - len(expected)
    assert c["not_owned"] == 0 and c["accepted_new"] == len(expected)
    with inside(lab.fw):
        dp.uninstall()
