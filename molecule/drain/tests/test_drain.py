"""drain: fw2 drained under traffic carried nothing and no connection was
lost (nor delivered twice); after join_node.yml it owns buckets again."""

from __future__ import annotations

from fwtest import (
    assert_nothing_lost_or_doubled,
    node,
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
