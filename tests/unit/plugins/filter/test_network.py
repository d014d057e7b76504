"""The address checks behind the roles' inventory validation."""

from __future__ import annotations

import pytest
from ansible_collections.fwcluster.cluster.plugins.filter.network import FilterModule

F = FilterModule().filters()


@pytest.mark.parametrize(
    ("mac", "ok"),
    [
        ("01:00:5e:7f:00:01", True),
        ("03:00:00:00:00:01", True),
        ("01:00:5E:7F:00:01", True),
        ("02:00:5e:7f:00:01", False),  # unicast (group bit clear)
        ("01:00:5e:7f:00", False),  # five octets
        ("01-00-5e-7f-00-01", False),
        ("01:00:5e:7f:00:0g", False),
        ("", False),
    ],
)
def test_multicast_mac(mac: str, ok: bool) -> None:
    assert F["is_multicast_mac"](mac) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("192.0.2.1/24", True),
        ("2001:db8::1/64", True),
        ("192.0.2.1", False),  # no prefix length
        ("192.0.2.1/33", False),
        ("not-an-address/24", False),
    ],
)
def test_ip_interface(value: str, ok: bool) -> None:
    assert F["is_ip_interface"](value) is ok


def test_in_network() -> None:
    assert F["in_network"]("198.51.100.11", "198.51.100.0/24")
    assert not F["in_network"]("192.0.2.11", "198.51.100.0/24")
    assert not F["in_network"]("198.51.100.11", "")
    assert not F["in_network"]("garbage", "198.51.100.0/24")


@pytest.mark.parametrize(
    ("interfaces", "address"),
    [
        (["192.0.2.1/24"], "192.0.2.1"),
        (["2001:db8::1/64", "198.18.0.1/24"], "198.18.0.1"),  # the first IPv4 one
        (["2001:db8::1/64"], ""),
        (["not-an-address/24", "192.0.2.9/24"], "192.0.2.9"),
        ([], ""),
    ],
)
def test_first_ipv4(interfaces: list[str], address: str) -> None:
    assert F["first_ipv4"](interfaces) == address


@pytest.mark.parametrize(
    ("interfaces", "address"),
    [
        (["192.0.2.1/24", "2001:db8::1/64"], "2001:db8::1"),  # the first IPv6 one
        (["192.0.2.1/24"], ""),
        ([], ""),
    ],
)
def test_first_ipv6(interfaces: list[str], address: str) -> None:
    assert F["first_ipv6"](interfaces) == address


@pytest.mark.parametrize(
    ("target", "split"),
    [
        ("203.0.113.10:443", {"address": "203.0.113.10", "port": "443", "family": "ip"}),
        ("203.0.113.10", {"address": "203.0.113.10", "port": "", "family": "ip"}),
        ("[2001:db8::10]:443", {"address": "2001:db8::10", "port": "443", "family": "ip6"}),
        ("[2001:db8::10]", {"address": "2001:db8::10", "port": "", "family": "ip6"}),
        ("2001:db8::10", {"address": "2001:db8::10", "port": "", "family": "ip6"}),
        ("web:80", {}),  # a name
        ("203.0.113.10:0", {}),
        ("203.0.113.10:65536", {}),
        ("[203.0.113.10]:80", {}),  # brackets are for IPv6
        ("[2001:db8::10]:http", {}),
        ("", {}),
    ],
)
def test_nat_target(target: str, split: dict[str, str]) -> None:
    assert F["nat_target"](target) == split
