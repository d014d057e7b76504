"""failover: fw2 lost power under traffic; fw1 and fw3 own every bucket and
not one connection was lost, nothing was delivered twice."""

from __future__ import annotations

from fwtest import assert_nothing_lost_or_doubled, node, owned_union, status, traffic

SURVIVORS = ("fw1", "fw3")
VICTIM_ID = "198.51.100.12"


def test_no_connection_lost_nothing_delivered_twice() -> None:
    assert_nothing_lost_or_doubled("failover", traffic("failover"))


def test_survivors_own_every_bucket() -> None:
    statuses = [status(node(n)) for n in SURVIVORS]
    assert owned_union(statuses) == set(range(statuses[0]["buckets"]))
    for st in statuses:
        assert st["stable"], st["node_id"]
        owners = {o for bucket in st["owners"] for o in bucket}
        assert VICTIM_ID not in owners, f"{st['node_id']} still sees the dead node owning buckets"
