"""The nftables backend notices its tables flushed and install() restores them,
on the real kernel (the namespaces of test_nftables_backend's Lab)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fwcluster_lab.nslab import inside, sh
from test_nftables_backend import (  # the same lab and config
    Lab,
    _config,
    lab,  # noqa: F401 -- the fixture
)

from availability_manager.dataplane.nft_monitor import RulesetMonitor
from availability_manager.dataplane.nft_ruleset import HANDOVER_CHAIN, TABLE
from availability_manager.dataplane.nftables import NftablesDataPlane
from availability_manager.node_events import Switch
from availability_manager.types import ClusterSettings

pytestmark = pytest.mark.lab


@pytest.fixture
def installed(lab: Lab) -> Iterator[tuple[Lab, NftablesDataPlane, RulesetMonitor]]:  # noqa: F811
    dp = NftablesDataPlane(_config(ClusterSettings(buckets=64, hash_seed=0x1234ABCD)))
    with inside(lab.fw):
        monitor = RulesetMonitor(TABLE, quiet_chains=frozenset({HANDOVER_CHAIN}))  # as main.py
        dp.install()
        dp.set_owned_buckets(frozenset(range(0, 64, 2)))
    try:
        yield lab, dp, monitor
    finally:
        monitor.close()
        with inside(lab.fw):
            dp.uninstall()


def notified(monitor: RulesetMonitor) -> bool:
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        if monitor.changed():
            return True
        time.sleep(0.01)
    return False


def test_flush_ruleset_is_seen_checked_and_restored(
    installed: tuple[Lab, NftablesDataPlane, RulesetMonitor],
) -> None:
    ns_lab, dp, monitor = installed
    notified(monitor)  # the install itself
    with inside(ns_lab.fw):
        assert dp.check() is None
        dp.set_owned_buckets(frozenset(range(1, 64, 2)))  # set elements only
        assert not notified(monitor)
        assert dp.check() is None
        # a handover's timed switches: rules of the handover chain (and their
        # anonymous sets), written and then cleared by the agent itself, are no
        # change to check (issue 19)
        at = float(int(time.time()) + 60)
        switch = Switch(buckets=frozenset({1, 3}), at=at, start=False)
        dp.set_owned_buckets(frozenset(range(1, 64, 2)), [switch])
        dp.set_owned_buckets(frozenset(range(1, 64, 2)))
        assert not notified(monitor)
        assert dp.check() is None
    sh("nft", "flush", "ruleset", ns=ns_lab.fw)
    assert notified(monitor)
    with inside(ns_lab.fw):
        problem = dp.check()
        # every chain, set, counter, rule and both tables are gone (the first five named)
        assert problem == (
            "the agent's nftables tables changed: missing chain arp output, "
            "chain inet cluster_traffic, chain inet handover, chain inet hash_fwd, "
            "chain inet hash_rev ..."
        )
        dp.install()
        assert dp.check() is None
        assert dp.programmed_owned() == list(range(1, 64, 2))


def test_a_deleted_rule_or_a_foreign_chain_in_the_table_is_a_change(
    installed: tuple[Lab, NftablesDataPlane, RulesetMonitor],
) -> None:
    ns_lab, dp, monitor = installed
    sh("nft", "add", "chain", "inet", TABLE, "intruder", ns=ns_lab.fw)
    assert notified(monitor)
    with inside(ns_lab.fw):
        problem = dp.check()
    assert problem is not None and "unexpected chain inet intruder" in problem
    sh("nft", "delete", "chain", "inet", TABLE, "intruder", ns=ns_lab.fw)
    sh("nft", "flush", "chain", "inet", TABLE, "input", ns=ns_lab.fw)
    with inside(ns_lab.fw):
        problem = dp.check()
    assert problem is not None and "missing rule inet input" in problem
