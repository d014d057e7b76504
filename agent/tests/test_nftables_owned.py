import ipaddress

import pytest

from availability_manager.dataplane import nftables
from availability_manager.dataplane.base import DataPlaneConfig, Zone
from availability_manager.dataplane.nft_batch import Batch, BatchRefused
from availability_manager.types import ClusterSettings


def test_a_refused_owned_update_never_brings_back_a_released_bucket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ip = ipaddress.ip_interface
    dp = nftables.NftablesDataPlane(
        DataPlaneConfig(
            node_id=1,
            settings=ClusterSettings(buckets=16, hash_seed=1),
            zones=(
                Zone("inside", "in0", (ip("192.0.2.1/24"),), "03:fc:00:00:00:01"),
                Zone("outside", "out0", (ip("198.51.100.1/24"),), "03:fc:00:00:00:02"),
            ),
        )
    )
    # Unit level: a stand-in for the netlink writer (the real one is tested on
    # the kernel in test_nft_ruleset.py: test_a_refused_batch_changes_nothing).
    writer = StandInWriter()
    dp.writer = writer  # type: ignore[assignment]
    dp.installed = True
    dp.set_owned_buckets(frozenset({1, 2, 3}))
    assert dp.owned == {1, 2, 3} and writer.applied == 1

    writer.refuse = True
    with pytest.raises(nftables.DataPlaneError, match="EPERM"):
        dp.set_owned_buckets(frozenset({3, 4}))  # 1 and 2 given away, 4 taken
    # what a restore (install) renders: neither a released bucket nor an unprogrammed one
    assert dp.owned == {3}


class StandInWriter:
    def __init__(self) -> None:
        self.applied = 0
        self.refuse = False

    def batch(self, table: str) -> Batch:
        return Batch(table, 1)

    def apply(self, batch: Batch) -> None:
        if self.refuse:
            raise BatchRefused("EPERM: Operation not permitted")
        self.applied += 1
