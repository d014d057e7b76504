"""remove: fw3 removed under traffic (remove_node.yml) left the cluster, its
agent stopped and disabled, fw1 and fw2 left no bucket without owner, no connection
lost or delivered twice; then fw3, made a new host, added with `site.yml
--limit fw3` under traffic: a member owning buckets, seen by the others,
every bucket owned, again no connection lost or delivered twice."""

from __future__ import annotations

from typing import Any

from fwtest import (
    assert_nothing_lost_or_doubled,
    node,
    owned_union,
    record,
    status,
    traffic,
)

FW3 = "198.51.100.13"


def member_ids(view: dict[str, Any]) -> list[str]:
    return [m["node"] for m in view["members"]]


def test_removal_lost_no_connection_and_delivered_nothing_twice() -> None:
    assert_nothing_lost_or_doubled("remove", traffic("remove"))


def test_removed_node_left_and_no_bucket_was_left_without_owner() -> None:
    unit = record("remove-unit")
    assert unit == {"active": "inactive", "enabled": "disabled"}, unit
    views = record("remove-state")
    assert views["fw3"] == {"running": False}, views["fw3"]
    for name in ("fw1", "fw2"):
        view = views[name]
        assert view["state"] == "member" and view["holes"] == 0, view
        assert FW3 not in member_ids(view), f"{name} still lists fw3: {member_ids(view)}"


def test_join_lost_no_connection_and_delivered_nothing_twice() -> None:
    assert_nothing_lost_or_doubled("join", traffic("join"))


def test_the_new_host_is_a_member_and_every_bucket_is_owned() -> None:
    fw3 = node("fw3")
    assert fw3.service("availability-manager").is_running
    assert fw3.service("availability-manager").is_enabled
    statuses = [status(node(n)) for n in ("fw1", "fw2", "fw3")]
    assert statuses[2]["state"] == "member" and statuses[2]["owned"], statuses[2]
    assert owned_union(statuses) == set(range(statuses[0]["buckets"]))
    for st in statuses:
        assert FW3 in [m["node"] for m in st["members"]], st["members"]
        assert all(st["owners"]), f"{st['node_id']} sees a bucket without owner"
