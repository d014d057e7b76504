"""The early chain (dataplane/early_drop.py, rendered by nft_ruleset.py):
its text, its configuration, and that it decides exactly as the cluster
chain would. The kernel behaviour is in tests/lab/test_early_drop_kernel.py."""

from __future__ import annotations

import copy
import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest
from test_config import GOOD  # a valid agent config

from availability_manager.daemon.config import ConfigError, parse_config
from availability_manager.dataplane.base import DataPlaneConfig, Zone
from availability_manager.dataplane.early_drop import (
    EarlyDrop,
    SlowPathEntry,
    parse_slow_path,
)
from availability_manager.dataplane.nft_ruleset import EARLY_COUNTERS, render_ruleset
from availability_manager.types import ClusterSettings

IP = ipaddress.ip_interface
ZONES = (
    Zone("inside", "in0", (IP("192.0.2.1/24"), IP("2001:db8:1::1/64")), "03:fc:00:00:00:01"),
    Zone("dmz", "dmz0", (IP("203.0.113.1/24"),), "03:fc:00:00:00:03"),
    Zone("outside", "out0", (IP("198.51.100.1/24"),), "03:fc:00:00:00:02"),
)
SLOW = parse_slow_path(
    [
        {"network": "203.0.113.100"},
        {"network": "2001:db8:2::/64", "protocol": "tcp", "ports": "30000-30100"},
        {"protocol": "tcp", "ports": 20},
    ]
)


def config(
    enabled: bool = True, hash_fields: str = "addresses+ports", zones: int = 3
) -> DataPlaneConfig:
    return DataPlaneConfig(
        1,
        ClusterSettings(hash_fields=hash_fields),
        ZONES[:zones],
        early_drop=EarlyDrop(enabled, SLOW),
    )


def chain(text: str, name: str) -> list[str]:
    m = re.search(rf"chain {name} {{\n(.*?)\n  }}", text, re.S)
    assert m, name
    return [line.strip() for line in m.group(1).splitlines()]


def test_off_by_default_renders_no_early_chain() -> None:
    text = render_ruleset(DataPlaneConfig(1, ClusterSettings(), ZONES))
    assert "early" not in text
    assert "early" not in render_ruleset(config(enabled=False))


def test_early_chain_runs_after_defrag_and_before_conntrack() -> None:
    text = render_ruleset(config())
    hook = chain(text, "early")[0]
    prio = int(re.search(r"hook prerouting priority (-?\d+);", hook).group(1))  # type: ignore[union-attr]
    assert -400 < prio < -200  # nf_defrag_ipv4/6 at -400, conntrack at -200
    for name in ("early", "early_cluster", "early_fwd", "early_rev"):
        for rule in chain(text, name):
            assert not re.search(r"\bct\b|notrack", rule), rule  # nothing of conntrack yet
            assert not rule.endswith("accept"), rule  # only drop or pass on (return)
    for name in EARLY_COUNTERS:
        assert f"counter {name} {{}}" in text


def test_one_fib_lookup_then_slow_path_before_any_hash() -> None:
    text = render_ruleset(config())
    rules = chain(text, "early_cluster")
    assert [r for r in rules if "fib" in r] == [rules[0]]  # the orientation map only
    assert rules[0].startswith("iif . fib daddr oif vmap")
    # local destinations, no zone pair (hairpin, unknown interface, no route): passed on
    assert rules[-1] == 'counter name "early_undecided"'
    for name in ("early_fwd", "early_rev"):
        rules = chain(text, name)
        slow = [r for r in rules if "early_slow_path" in r]
        assert len(slow) == 2 * len(SLOW)  # each entry: from it and to it
        assert rules[: len(slow)] == slow  # before any hash
        assert 'ip saddr 203.0.113.100/32 counter name "early_slow_path" return' in slow
        assert (
            "ip6 daddr 2001:db8:2::/64 meta l4proto tcp th dport 30000-30100 counter name "
            '"early_slow_path" return'
        ) in slow
        assert 'meta l4proto tcp th sport 20 counter name "early_slow_path" return' in slow


def test_orientation_is_the_cluster_chains_for_every_pair_of_zones() -> None:
    text = render_ruleset(config())
    found = re.findall(
        r'"(\w+)" \. "(\w+)" : goto (early_\w+)', "\n".join(chain(text, "early_cluster"))
    )
    early = {(a, b): target for a, b, target in found}
    cluster_rev = set(
        re.findall(r'"(\w+)" \. "(\w+)" : goto hash_rev', "\n".join(chain(text, "cluster_traffic")))
    )
    ifs = [z.interface for z in ZONES]
    assert set(early) == {(a, b) for a in ifs for b in ifs if a != b}  # no same-zone pair
    for pair, target in early.items():
        assert (target == "early_rev") == (pair in cluster_rev), pair


@pytest.mark.parametrize("hash_fields", ["addresses+ports", "addresses"])
def test_early_hashes_are_the_cluster_chains_for_the_classes_it_decides(hash_fields: str) -> None:
    text = render_ruleset(config(hash_fields=hash_fields), range(0, 256, 3))
    for early_name, late_name in (("early_fwd", "hash_fwd"), ("early_rev", "hash_rev")):
        early = chain(text, early_name)
        late = chain(text, late_name)
        hashes = [r.split(" @owned")[0] for r in early if "@owned return" in r]
        late_accepts = [r.split(" @owned")[0] for r in late if "@owned" in r]
        assert len(hashes) == 4  # port protocols and echo, IPv4 and IPv6
        for h in hashes:
            expr = h[h.index("jhash") :]
            # the same expression (fields, modulus, seed) decides NEW there
            assert any(expr in a for a in late_accepts), (h, late_accepts)
        drops = [r for r in early if r.endswith("drop")]
        assert all('counter name "early_not_owned" drop' in r for r in drops)
        # only what was hashed is dropped: port protocols and echo, nothing else
        assert [r.split(" counter")[0] for r in drops] == [
            "meta l4proto { tcp, udp, dccp, sctp, udplite }",
            "icmp type { echo-request, echo-reply }",
            "icmpv6 type { echo-request, echo-reply }",
        ]
        assert early.index(drops[0]) > max(early.index(r) for r in early if "@owned" in r)
        assert early[-1] == 'counter name "early_undecided"'


@pytest.mark.parametrize(
    ("items", "error"),
    [
        ("10.0.0.0/8", "expected a list"),
        ([{"network": "192.0.2.1/24"}], "slow_path[0].network"),  # host bits set
        ([{"network": "nonsense"}], "slow_path[0].network"),
        ([{"ports": 21}], "ports need one of tcp"),
        ([{"protocol": "icmp", "ports": 1, "network": "192.0.2.0/24"}], "ports need one of"),
        ([{"protocol": "gre", "network": "192.0.2.0/24"}], "slow_path[0]: slow_path protocol"),
        ([{"protocol": "tcp", "ports": "9-2"}], "a range within 1-65535"),
        ([{"protocol": "tcp", "ports": "x"}], "ports: a port or a range"),
        ([{"protocol": "tcp"}], "needs a network, ports, or both"),
        ([{"network": "192.0.2.0/24", "port": 1}], "slow_path[0].port: unknown key"),
        (["192.0.2.0/24"], "slow_path[0]: expected a mapping"),
    ],
)
def test_bad_slow_path_entries_are_refused_naming_the_entry(items: Any, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        parse_slow_path(items)


def test_slow_path_entry_rules_cover_both_directions() -> None:
    e = SlowPathEntry(ipaddress.ip_network("192.0.2.0/24"), "udp", (69, 69))
    assert e.rules() == [
        "ip saddr 192.0.2.0/24 meta l4proto udp th sport 69",
        "ip daddr 192.0.2.0/24 meta l4proto udp th dport 69",
    ]
    icmp = SlowPathEntry(ipaddress.ip_network("2001:db8::5/128"), "icmpv6")
    assert icmp.rules() == [
        "ip6 saddr 2001:db8::5/128 meta l4proto icmpv6",
        "ip6 daddr 2001:db8::5/128 meta l4proto icmpv6",
    ]


def test_agent_config_reads_early_drop() -> None:
    data = copy.deepcopy(GOOD)
    assert parse_config(data, Path("/a.yml")).early_drop == EarlyDrop()
    data["early_drop"] = {
        "enabled": True,
        "slow_path": [{"network": "203.0.113.100"}, {"protocol": "tcp", "ports": 20}],
    }
    got = parse_config(data, Path("/a.yml")).early_drop
    assert got.enabled and got.slow_path == parse_slow_path(data["early_drop"]["slow_path"])


def test_agent_config_early_drop_for_clusterdev() -> None:
    """The same switch and slow path for the kernel module's receive handler."""
    data = copy.deepcopy(GOOD) | {
        "early_drop": {"enabled": True, "slow_path": [{"network": "203.0.113.100"}]},
        "cluster": {"backend": "clusterdev"},
    }
    got = parse_config(data, Path("/a.yml")).early_drop
    assert got.enabled and len(got.slow_path) == 1


@pytest.mark.parametrize(
    ("early", "cluster", "error"),
    [
        ({"enabled": "yes"}, {}, "early_drop.enabled: expected true or false"),
        ({"enabled": True, "slow_path": [{"ports": 1}]}, {}, "early_drop: slow_path[0]"),
        ({"enable": True}, {}, "early_drop.enable: unknown key"),
        (
            {"enabled": True, "slow_path": [{"network": f"192.0.2.{i}"} for i in range(65)]},
            {"backend": "clusterdev"},
            "early_drop.slow_path: expected at most 64 entries with the clusterdev backend",
        ),
    ],
)
def test_agent_config_errors_name_the_key(
    early: dict[str, Any], cluster: dict[str, Any], error: str
) -> None:
    data = copy.deepcopy(GOOD) | {"early_drop": early, "cluster": cluster}
    with pytest.raises(ConfigError, match=re.escape(error)):
        parse_config(data, Path("/a.yml"))
