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
