"""rotate_key: the cluster moved to a new key under traffic with no
connection lost or delivered twice, no agent dropped a datagram for an
unknown key or a bad tag, and every key file holds only the new key."""

from __future__ import annotations

import pytest
from fwtest import NODES, assert_nothing_lost_or_doubled, node, record, status, traffic

# The id rotate_key.yml gives the new key when the old one is id 0.
NEW_KEY_ID = "1"
KEY_DROPS = ("drop_unknown-key", "drop_bad-tag")
# The test key of the lab inventory (inventories/lab/group_vars/firewalls.yml).
LAB_KEY = "5eedf17e0c1a55e7000000000000000000000000000000000000000000005eed"


def test_no_connection_lost_nothing_delivered_twice() -> None:
    assert_nothing_lost_or_doubled("rotate_key", traffic("rotate_key"))


@pytest.mark.parametrize("name", NODES)
def test_no_datagram_dropped_for_its_key(name: str) -> None:
    rec = record(f"rotate_key-{name}")
    for counter in KEY_DROPS:
        before, after = rec["before"].get(counter, 0), rec["after"].get(counter, 0)
        print(f"rotate_key {name}: {counter} {before} -> {after}")
        assert after == before, f"{name}: {after - before} datagrams dropped ({counter})"
    assert rec["after"].get("reloads", 0) >= 3, rec["after"]
    assert rec["after"].get("reload_failed", 0) == rec["before"].get("reload_failed", 0)
    assert rec["members"] == len(NODES)


@pytest.mark.parametrize("name", NODES)
def test_only_the_new_key_is_left(name: str) -> None:
    assert record(f"rotate_key-{name}")["key_ids"] == [f"{NEW_KEY_ID} send"]


@pytest.mark.parametrize("name", NODES)
def test_rotated_back_to_the_inventory_key(name: str) -> None:
    """The second rotation ends with the lab inventory's key under id 0,
    written in the one-line format site.yml writes: a converge changes nothing."""
    text = node(name).file("/etc/availability-manager/cluster.key").content_string
    assert text.split() == [LAB_KEY]
    assert status(node(name))["stable"]
