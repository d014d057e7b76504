"""The whole-inventory checks (filter inventory_problems): each wrong input is
one problem naming the host and the variable; a good cluster has none."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from ansible_collections.fwcluster.cluster.plugins.filter.inventory import FilterModule
from jinja2 import Undefined

problems_of = FilterModule().filters()["inventory_problems"]

ZONES = [
    {"name": "outside", "interface": "out0", "cluster_ips": ["192.0.2.1/24"]},
    {"name": "inside", "interface": "in0", "cluster_ips": ["203.0.113.1/24"]},
]
COMMON: dict[str, Any] = {
    "availability_manager_sync_network": "198.51.100.0/24",
    "availability_manager_zones": ZONES,
    "availability_manager_key": "ab" * 32,
}


def cluster(**per_host: dict[str, Any]) -> dict[str, dict[str, Any]]:
    hosts = {
        f"fw{n}": {
            **copy.deepcopy(COMMON),
            "availability_manager_sync_address": f"198.51.100.1{n}",
        }
        for n in (1, 2, 3)
    }
    for host, changes in per_host.items():
        for key, value in changes.items():
            if value is None:
                hosts[host].pop(key, None)
            else:
                hosts[host][key] = value
    return hosts


def ipv6_cluster(**extra: Any) -> dict[str, dict[str, Any]]:
    """Three nodes on an IPv6 sync network, with `extra` on every node."""
    return {
        host: {
            **vars_,
            "availability_manager_sync_network": "2001:db8:77::/64",
            "availability_manager_sync_address": f"2001:db8:77::{n}",
            **extra,
        }
        for n, (host, vars_) in enumerate(sorted(cluster().items()), 1)
    }


def problems(
    hosts: dict[str, dict[str, Any]], only: list[str] | None = None
) -> list[str]:
    found: list[str] = problems_of(hosts, only or sorted(hosts))
    return found


def test_a_good_cluster_has_no_problem() -> None:
    assert problems(cluster()) == []


def test_masquerading_nodes_with_their_own_slots_pass() -> None:
    nat = {"dataplane_masquerade": [{"from": "inside", "to": "outside"}]}
    hosts = cluster(
        fw1={**nat, "dataplane_nat_slot": 1},
        fw2={**nat, "dataplane_nat_slot": 2},
        fw3={**nat, "dataplane_nat_slot": "3"},
    )
    assert problems(hosts) == []


def test_ipv6_sync_network_with_integer_node_ids_passes() -> None:
    hosts = ipv6_cluster()
    for n, host in enumerate(sorted(hosts), 1):
        hosts[host]["availability_manager_node_id"] = n
    assert problems(hosts) == []


CASES: dict[str, tuple[dict[str, dict[str, Any]], list[str]]] = {
    "one sync address on three nodes": (
        cluster(
            fw2={"availability_manager_sync_address": "198.51.100.11"},
            fw3={"availability_manager_sync_address": "198.51.100.11"},
        ),
        [
            "fw2: availability_manager_sync_address 198.51.100.11 is also fw1's",
            "fw3: availability_manager_sync_address 198.51.100.11 is also fw1's",
        ],
    ),
    "sync address outside the sync network": (
        cluster(fw2={"availability_manager_sync_address": "203.0.113.12"}),
        ["fw2: availability_manager_sync_address 203.0.113.12 is outside"],
    ),
    "sync address missing": (
        cluster(fw3={"availability_manager_sync_address": None}),
        ["fw3: availability_manager_sync_address must be an IP address, got (not set)"],
    ),
    "weight above the agent's limit": (
        cluster(fw3={"availability_manager_weight": 5000}),
        [
            "fw3: availability_manager_weight must be an integer from 1 to 1000",
            "got 5000",
        ],
    ),
    "weight zero": (
        cluster(fw1={"availability_manager_weight": 0}),
        ["fw1: availability_manager_weight", "got 0"],
    ),
    "weight not a number": (
        cluster(fw1={"availability_manager_weight": True}),
        ["fw1: availability_manager_weight", "got True"],
    ),
    "node id other than the IPv4 sync address": (
        cluster(fw2={"availability_manager_node_id": "198.51.100.99"}),
        [
            "fw2: availability_manager_node_id 198.51.100.99 must be the node's sync address"
        ],
    ),
    "IPv6 sync network without node id": (
        ipv6_cluster(),
        ["fw1: availability_manager_node_id is required with an IPv6 sync network"],
    ),
    "IPv6 node id": (
        {
            "fw1": {
                **COMMON,
                "availability_manager_sync_network": "2001:db8:77::/64",
                "availability_manager_sync_address": "2001:db8:77::1",
                "availability_manager_node_id": "2001:db8:77::1",
            }
        },
        [
            "fw1: availability_manager_node_id 2001:db8:77::1 must be an IPv4 address or an integer"
        ],
    ),
    "two nodes with one integer node id": (
        ipv6_cluster(availability_manager_node_id=7),
        ["fw2: availability_manager_node_id 7 is also fw1's"],
    ),
    "DNAT naming an unknown zone": (
        cluster(
            fw1={
                "dataplane_dnat": [
                    {"zone": "dmz", "proto": "tcp", "dport": 443, "to": "203.0.113.10"}
                ]
            }
        ),
        ["fw1: dataplane_dnat[0]: zone dmz is not one of the zones"],
    ),
    "DNAT with a bad protocol, port and target": (
        cluster(
            fw1={
                "dataplane_dnat": [
                    {"zone": "outside", "proto": "sctp", "dport": 70000, "to": "web:80"}
                ]
            }
        ),
        [
            "fw1: dataplane_dnat[0]: proto must be tcp or udp",
            "fw1: dataplane_dnat[0]: dport must be a port from 1 to 65535, got 70000",
            "fw1: dataplane_dnat[0]: to must be an IPv4 address",
        ],
    ),
    "IPv6 DNAT answering on an IPv4 address, and an IPv6 port without brackets": (
        cluster(
            fw1={
                "dataplane_dnat": [
                    {"zone": "outside", "proto": "tcp", "dport": 443,
                     "to": "[2001:db8:2::10]:443", "address": "192.0.2.1"},
                    {"zone": "outside", "proto": "tcp", "dport": 443, "to": "2001:db8:2::10:443x"},
                ]
            }
        ),
        [
            "fw1: dataplane_dnat[0]: address (the destination it answers for) must be an IPv6 address like its target, got 192.0.2.1",
            "fw1: dataplane_dnat[1]: to must be an IPv4 address[:port] or an IPv6 address",
        ],
    ),
    "masquerading node without NAT slot": (
        cluster(fw2={"dataplane_masquerade": [{"from": "inside", "to": "outside"}]}),
        ["fw2: dataplane_nat_slot is not set"],
    ),
    "two nodes with one NAT slot": (
        cluster(
            fw1={
                "dataplane_masquerade": [{"from": "inside", "to": "outside"}],
                "dataplane_nat_slot": 2,
            },
            fw3={
                "dataplane_masquerade": [{"from": "inside", "to": "outside"}],
                "dataplane_nat_slot": 2,
            },
        ),
        ["fw3: dataplane_nat_slot 2 is also fw1's"],
    ),
    "NAT slot beyond the port space": (
        cluster(
            fw1={
                "dataplane_masquerade": [{"from": "inside", "to": "outside"}],
                "dataplane_nat_slot": 100,
            }
        ),
        ["fw1: dataplane_nat_slot 100", "65535"],
    ),
    "cluster-wide setting that differs": (
        cluster(fw3={"availability_manager_buckets": 512}),
        [
            "availability_manager_buckets differs between nodes",
            "512 on fw3",
            "256 on fw1, fw2",
        ],
    ),
    "different cluster keys": (
        cluster(fw3={"availability_manager_key": "cd" * 32}),
        ["availability_manager_key differs between nodes (2 different keys)"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_problem_names_host_and_variable(case: str) -> None:
    hosts, expected = CASES[case]
    found = problems(hosts)
    text = "\n".join(found)
    for words in expected:
        assert words in text, f"{case}: {words!r} not in\n{text}"


def test_key_material_never_appears_in_a_problem() -> None:
    found = problems(cluster(fw3={"availability_manager_key": "cd" * 32}))
    assert not any("cd" * 32 in p or "ab" * 32 in p for p in found)


def test_a_limited_run_still_compares_every_host() -> None:
    """The filter gets the group's hosts, not the play's: --limit fw3 still
    sees that fw1 holds fw3's slot."""
    nat = {
        "dataplane_masquerade": [{"from": "inside", "to": "outside"}],
        "dataplane_nat_slot": 1,
    }
    found = problems(cluster(fw1=nat, fw3=nat))
    assert any(p.startswith("fw3: dataplane_nat_slot 1 is also fw1's") for p in found)


def test_an_unreadable_variable_is_a_problem_not_a_crash() -> None:
    hosts = cluster(
        fw2={
            "availability_manager_key": Undefined(name="vault_availability_manager_key")
        }
    )
    found = problems(hosts)
    assert any(
        p.startswith("fw2: availability_manager_key cannot be read") for p in found
    ), found


def test_an_empty_group_is_a_problem() -> None:
    assert problems_of({}, []) == ["the cluster group has no hosts"]
