"""nat (issue 15): connections through the lab inventory's port forward and
masquerade were translated, kept across a rollout that restarted every agent
through a drain, and none was delivered twice; afterwards every node is a
member and every bucket is owned."""

from __future__ import annotations

import pytest
from fwtest import NODES, assert_nothing_lost_or_doubled, record, traffic


@pytest.mark.parametrize("kind", ["dnat", "masquerade"])
def test_nat_connections_kept_across_the_rollout(kind: str) -> None:
    assert_nothing_lost_or_doubled(f"nat {kind}", traffic(f"nat-{kind}"))


def test_the_traffic_was_translated() -> None:
    # Read while it flowed, after the rollout: without the port forward the
    # dnat traffic fails; without the masquerade it flows untranslated.
    recs = [record(f"nat-{name}") for name in NODES]
    dnat = sum(rec["dnat_entries"] for rec in recs)
    masquerade = sum(rec["masquerade_entries"] for rec in recs)
    print(f"nat: translated connections: {dnat} port-forwarded, {masquerade} masqueraded")
    assert dnat > 0 and masquerade > 0


@pytest.mark.parametrize("name", NODES)
def test_every_node_is_back_as_a_member(name: str) -> None:
    cluster = record(f"nat-{name}")["cluster"]
    assert cluster["state"] == "member" and cluster["owned_buckets"] > 0, cluster
    assert cluster["holes"] == 0, cluster
