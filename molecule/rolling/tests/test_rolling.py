"""rolling: every node runs the new agent, the cluster owns every bucket, and
the upgrade under traffic lost no connection and doubled no packet."""

from __future__ import annotations

import pytest
from fwtest import NODES, assert_nothing_lost_or_doubled, node, owned_union, status, traffic


def test_no_connection_lost_nothing_delivered_twice() -> None:
    assert_nothing_lost_or_doubled("rolling", traffic("rolling"))


@pytest.mark.parametrize("name", NODES)
def test_new_version_running(name: str) -> None:
    host = node(name)
    show = host.check_output("/opt/availability-manager/bin/pip show availability-manager")
    assert "+rolling1" in show, show
    assert host.service("availability-manager").is_running


def test_every_bucket_owned() -> None:
    statuses = [status(node(n)) for n in NODES]
    assert owned_union(statuses) == set(range(statuses[0]["buckets"]))
    assert all(st["stable"] for st in statuses)
