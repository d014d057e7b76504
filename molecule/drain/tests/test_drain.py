"""drain: fw2 drained under traffic carried nothing and no connection was
lost (nor delivered twice); after join_node.yml it owns buckets again. remove:
fw3 removed under traffic (remove_node.yml) left the cluster, its agent
stopped and disabled, fw1 and fw2 own every bucket, no connection lost."""

from __future__ import annotations

from fwtest import (
    assert_nothing_lost_or_doubled,
    node,
    owned_union,
    record,
    status,
    traffic,
)


def test_no_connection_lost_nothing_delivered_twice() -> None:
    assert_nothing_lost_or_doubled("drain", traffic("drain"))


def test_drained_node_carried_nothing() -> None:
    drained = record("drain-state")
    print(
        f"drained fw2: {drained['cluster']['owned_buckets']} buckets, "
        f"{drained['forwarded_connections']} forwarded connections"
    )
    assert drained["cluster"]["state"] == "draining"
    assert drained["cluster"]["owned_buckets"] == 0
    assert drained["cluster"]["holes"] == 0
    assert drained["forwarded_connections"] == 0


def test_joined_again() -> None:
    statuses = [status(node(n)) for n in ("fw1", "fw2")]
    fw2 = statuses[1]
    assert fw2["state"] == "member"
    assert fw2["owned"], "fw2 owns no bucket after join_node.yml"


def test_removal_lost_no_connection_and_delivered_nothing_twice() -> None:
    assert_nothing_lost_or_doubled("remove", traffic("remove"))


def test_removed_node_left_and_the_others_own_every_bucket() -> None:
    fw3 = node("fw3")
    assert not fw3.service("availability-manager").is_running
    assert not fw3.service("availability-manager").is_enabled
    statuses = [status(node(n)) for n in ("fw1", "fw2")]
    assert owned_union(statuses) == set(range(statuses[0]["buckets"]))
    removed_id = "198.51.100.13"
    for st in statuses:
        owners = {o for bucket in st["owners"] for o in bucket}
        assert removed_id not in owners, (
            f"{st['node_id']} still sees fw3 owning a bucket"
        )
        members = [m["node"] for m in st["members"]]
        assert removed_id not in members, members
