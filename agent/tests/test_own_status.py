import pytest

from availability_manager.daemon.own_status import OwnStatus


def test_the_node_is_up_only_when_every_watcher_is_content() -> None:
    status = OwnStatus()
    assert status.up
    assert status.set("links", "interfaces down: eth1")
    assert not status.set("health", "check 'gw' failing")  # already down
    assert not status.set("links", None)  # health still says no
    assert not status.up
    assert status.faults() == {"health": "check 'gw' failing"}
    assert status.set("health", None)
    assert status.up and status.faults() == {}


def test_a_repeated_verdict_changes_nothing() -> None:
    status = OwnStatus()
    assert status.set("kernel", "nft transaction failed 3 times")
    assert not status.set("kernel", "nft transaction failed 4 times")
    assert status.faults() == {"kernel": "nft transaction failed 4 times"}


def test_the_weight_is_the_lowest_cap_and_never_above_the_configured_one() -> None:
    status = OwnStatus()
    assert status.weight(5) == 5
    status.set_weight_cap("check:disk", 2)
    status.set_weight_cap("check:load", 3)
    assert status.weight(5) == 2 and status.weight(1) == 1
    assert status.weight_caps() == {"check:disk": 2, "check:load": 3}
    status.set_weight_cap("check:disk", None)
    assert status.weight(5) == 3
    assert status.up  # a cap is no fault
    with pytest.raises(ValueError, match="check:x: a weight cap must be at least 1"):
        status.set_weight_cap("check:x", 0)
