"""reboot: fw2 power-cycled under traffic boots with the operator's policy
loaded by nftables.service (the firewall does not fail open), its agent
starts by itself, rebuilds its table and rejoins; no connection lost or
delivered twice."""

from __future__ import annotations

from fwtest import NODES, assert_nothing_lost_or_doubled, node, owned_union, record, status, traffic


def test_no_connection_lost_nothing_delivered_twice() -> None:
    assert_nothing_lost_or_doubled("reboot", traffic("reboot"))


def test_policy_and_agent_table_back_after_the_boot() -> None:
    rec = record("reboot-state")
    print(f"reboot fw2: {rec['tables']}, nftables.service {rec['nftables_active']}")
    assert "table inet fwpolicy" in rec["tables"], "the operator's policy was not loaded at boot"
    assert "table inet fwcluster" in rec["tables"], "the agent did not rebuild its table"
    assert rec["nftables_active"] == "active"
    assert rec["cluster"]["state"] == "member" and rec["cluster"]["owned_buckets"] > 0


def test_cluster_whole_again() -> None:
    statuses = [status(node(n)) for n in NODES]
    assert owned_union(statuses) == set(range(statuses[0]["buckets"]))
    assert all(len(st["members"]) == len(NODES) for st in statuses)
