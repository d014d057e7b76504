"""The dual-stack, NAT and IPv6-sync options of the lab: addresses, routes, the
agent config they produce, the NAT policy with its per-node port ranges, and
the state round trip. Pure unit tests, plus `nft -c` of the NAT policy in a
throwaway namespace (marked lab)."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fwcluster_lab import agent, faults, nat_policy
from fwcluster_lab.netns import ns_run
from fwcluster_lab.state import LabState
from fwcluster_lab.topology import MASQ_NET, build_topology

DOC_NETS = [
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "198.18.0.0/15", "2001:db8::/32")
]


def test_default_lab_is_ipv4_only_and_has_no_nat() -> None:
    """Existing labs keep exactly what they had."""
    topo = build_topology()
    assert not topo.ipv6 and not topo.nat and not topo.sync6
    assert all(not link.more_addresses for h in topo.hosts for link in h.links)
    assert all(z.cluster_ips == (z.cluster_ip,) for z in topo.zones)
    cfg = agent.agent_config(topo, topo.nodes[0], Path("/run/x"))
    assert cfg["protocols"] == ["tcp", "udp", "icmp"]
    assert cfg["sync"]["address"] == "198.51.100.11" and cfg["sync"]["group"] == "239.255.77.1"


def test_dual_stack_addresses_read_like_their_ipv4_twins() -> None:
    topo = build_topology(nodes=3, ipv6=True)
    outside, inside = topo.zones
    assert str(outside.cluster_ip6) == "2001:db8:0:1::1/64"
    assert str(inside.cluster_ip6) == "2001:db8:0:2::1/64"
    fw2 = topo.node("fw2")
    assert str(fw2.link("outside").address6) == "2001:db8:0:1::12/64"
    assert str(fw2.link("inside").address6) == "2001:db8:0:2::12/64"
    assert fw2.link("sync").address6 is None  # the sync network stays IPv4 unless sync6
    assert str(topo.clients[0].address6) == "2001:db8:0:1::100"
    assert str(topo.servers[0].address6) == "2001:db8:0:2::100"
    # one route per family to the other side via the cluster address, never a default
    assert topo.clients[0].routes == (
        ("203.0.113.0/24", "192.0.2.1"),
        ("2001:db8:0:2::/64", "2001:db8:0:1::1"),
    )
    assert topo.servers[0].routes[-1] == ("2001:db8:0:1::/64", "2001:db8:0:2::1")


def test_every_new_address_is_from_documentation_prefixes() -> None:
    topo = build_topology(nodes=16, clients=4, servers=4, ipv6=True, nat=True, sync6=True)
    for h in topo.hosts:
        for link in h.links:
            for a in (link.address, *link.more_addresses):
                assert any(a.ip in n for n in DOC_NETS if n.version == a.version), a
        for dst, _via in h.routes:
            assert ipaddress.ip_network(dst).prefixlen > 0
    for z in topo.zones:
        for a in z.cluster_ips:
            assert any(a.ip in n for n in DOC_NETS if n.version == a.version), a


def test_agent_config_of_a_dual_stack_lab_with_ipv6_sync() -> None:
    topo = build_topology(nodes=3, ipv6=True, nat=True, sync6=True)
    cfg = agent.agent_config(topo, topo.node("fw3"), Path("/run/x"))
    assert cfg["zones"][0]["cluster_ips"] == ["192.0.2.1/24", "2001:db8:0:1::1/64", "198.18.0.1/24"]
    assert cfg["zones"][1]["cluster_ips"] == ["203.0.113.1/24", "2001:db8:0:2::1/64"]
    assert cfg["protocols"] == ["tcp", "udp", "icmp", "icmpv6"]
    # the node id stays the IPv4 sync address: the lab's settle check compares it
    assert cfg["node_id"] == "198.51.100.13"
    assert cfg["sync"]["address"] == "2001:db8:0:3::13" and cfg["sync"]["group"] == "ff02::77:1"


def test_nat_lab_gives_masquerade_a_subnet_where_the_cluster_address_is_alone() -> None:
    topo = build_topology(nodes=3, nat=True)
    outside = topo.zones[0]
    masq = [a for a in outside.cluster_ips if a.ip in MASQ_NET]
    assert [str(a) for a in masq] == ["198.18.0.1/24"]
    for node in topo.nodes:  # no node address there: masquerade must pick the cluster's
        assert all(a.ip not in MASQ_NET for a in node.link("outside").more_addresses)
    assert [str(a) for a in topo.clients[0].links[0].more_addresses] == ["198.18.0.100/24"]
    assert ("198.18.0.0/24", "203.0.113.1") in topo.servers[0].routes


def test_per_node_port_ranges_are_disjoint_and_below_the_ephemeral_range() -> None:
    ranges = [nat_policy.port_range(i) for i in range(1, 17)]
    ports = [p for lo, hi in ranges for p in range(lo, hi + 1)]
    assert len(ports) == len(set(ports)) == 16 * nat_policy.NAT_PORTS_PER_NODE
    assert min(ports) >= 1024 and max(ports) < 32768
    for bad in (0, 17):
        with pytest.raises(ValueError):
            nat_policy.port_range(bad)


def test_nat_policy_of_a_node_uses_its_own_range_and_the_cluster_addresses() -> None:
    topo = build_topology(nodes=3, nat=True)
    rules = {n.name: nat_policy.ruleset(topo, n) for n in topo.nodes}
    for i, name in enumerate(("fw1", "fw2", "fw3"), start=1):
        lo, hi = nat_policy.port_range(i)
        text = rules[name]
        assert f"snat to 192.0.2.1:{lo}-{hi}" in text
        assert (
            f"ip daddr 198.18.0.0/24 meta l4proto {{ tcp, udp, icmp }} masquerade to :{lo}-{hi}"
            in text
        )
        assert "th dport 8001 dnat to 203.0.113.100:7001" in text
        assert 'iif "out0" ip daddr 192.0.2.1 tcp dport 21 dnat to 203.0.113.100:21' in text
        # replies of the forward target never start a connection
        assert 'iif "in0" ip saddr 203.0.113.100 udp sport 7001 ct state new drop' in text
        # only its own table, replaced atomically
        assert text.startswith(
            f"table ip {nat_policy.TABLE} {{}}\ndelete table ip {nat_policy.TABLE}\n"
        )
        assert "fwcluster" not in text
    assert rules["fw1"] != rules["fw2"]


def test_state_keeps_the_lab_options(tmp_path: Path) -> None:
    LabState(tmp_path, "fwz-", 3, 1, 1, True, ipv6=True, nat=True, sync6=True).save()
    loaded = LabState.load(tmp_path)
    assert loaded is not None
    assert (loaded.ipv6, loaded.nat, loaded.sync6) == (True, True, True)
    assert loaded.topology().zones[0].cluster_ip6 is not None
    # a state file of an older lab (no such keys) loads as IPv4 without NAT
    LabState(tmp_path, "fwz-", 3, 1, 1, True).save()
    old = LabState.load(tmp_path)
    assert old is not None and (old.ipv6, old.nat, old.sync6) == (False, False, False)


def test_dead_node_table_drops_everything_and_revive_removes_it() -> None:
    dead = faults._dead_ruleset(True)
    assert "hook prerouting priority -500; policy drop;" in dead
    assert "hook output priority -500; policy drop;" in dead
    alive = faults._dead_ruleset(False)
    assert "policy drop" not in alive and f"delete table inet {faults.DEAD_TABLE}" in alive


@pytest.fixture
def netns() -> Iterator[str]:
    ns = f"fwn-u{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(
            ["ip", "-n", ns, "link", "add", "out0", "type", "veth", "peer", "name", "in0"],
            check=True,
        )
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.mark.lab
@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None, reason="needs root and nftables"
)
def test_nft_accepts_the_nat_policy(netns: str) -> None:
    topo = build_topology(nodes=3, nat=True)
    script = nat_policy.ruleset(topo, topo.node("fw2"))

    def nft_check(text: str) -> subprocess.CompletedProcess[str]:
        return ns_run(netns, ["nft", "-c", "-f", "-"], stdin=text, check=False)

    check = nft_check(script)
    assert check.returncode == 0, check.stderr
    assert nft_check(script.replace("snat to", "snat towards")).returncode != 0  # not lenient
