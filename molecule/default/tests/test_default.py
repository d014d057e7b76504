"""default: after converge (and an idempotent second run) every node runs the
agent with its data plane loaded, and the cluster owns every bucket."""

from __future__ import annotations

from typing import Any

import pytest
from fwtest import NODES, node, owned_union, status


@pytest.fixture(scope="module")
def statuses() -> list[dict[str, Any]]:
    return [status(node(n)) for n in NODES]


@pytest.mark.parametrize("name", NODES)
def test_agent_installed_and_config_valid(name: str) -> None:
    host = node(name)
    check = host.run("/opt/availability-manager/bin/availability-manager --check")
    assert check.rc == 0, check.stderr
    assert host.file("/etc/availability-manager/cluster.key").mode == 0o600


@pytest.mark.parametrize("name", NODES)
def test_agent_running_and_enabled(name: str) -> None:
    service = node(name).service("availability-manager")
    assert service.is_running
    assert service.is_enabled


@pytest.mark.parametrize("name", NODES)
def test_data_plane_and_policy_loaded(name: str) -> None:
    host = node(name)
    assert host.run("nft list table inet fwcluster").rc == 0, "agent table missing"
    assert host.run("nft list table inet fwpolicy").rc == 0, "operator policy missing"
    assert host.sysctl("net.ipv4.ip_forward") == 1


def test_every_bucket_owned(statuses: list[dict[str, Any]]) -> None:
    buckets = statuses[0]["buckets"]
    assert owned_union(statuses) == set(range(buckets))
    for st in statuses:
        assert st["stable"], st["node_id"]
        assert len(st["members"]) == len(NODES), st["members"]
        assert st["owned"], f"{st['node_id']} owns no bucket"


@pytest.mark.parametrize("name", NODES)
def test_policy_loaded_at_boot_without_flushing_the_agent(name: str) -> None:
    """Issue 15.5: nftables.service enabled, /etc/nftables.conf includes the
    policy and has no `flush ruleset`, and `systemctl restart nftables`
    leaves the agent's table in place and the policy loaded."""
    host = node(name)
    assert host.service("nftables").is_enabled
    conf = host.file("/etc/nftables.conf").content_string
    assert "flush ruleset" not in conf
    assert 'include "/etc/nftables.d/fwcluster-policy.nft"' in conf
    before = host.check_output("nft list table inet fwcluster | wc -l")
    restart = host.run("systemctl restart nftables")
    assert restart.rc == 0, restart.stderr
    assert host.run("nft list table inet fwcluster").rc == 0, "restart removed the agent's table"
    assert host.check_output("nft list table inet fwcluster | wc -l") == before
    assert host.run("nft list table inet fwpolicy").rc == 0, "policy not loaded again"
    assert status(host)["stable"]
