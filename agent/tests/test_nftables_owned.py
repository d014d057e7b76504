import ipaddress

import pytest

from availability_manager.dataplane import nftables
from availability_manager.dataplane.base import DataPlaneConfig, Zone
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
    scripts: list[str] = []
    monkeypatch.setattr(nftables, "nft_apply", lambda script, check=False: scripts.append(script))
    dp.installed = True
    dp.set_owned_buckets(frozenset({1, 2, 3}))
    assert dp.owned == {1, 2, 3}

    def refuse(script: str, check: bool = False) -> None:
        raise nftables.DataPlaneError("nft -f - failed (exit 1): Operation not permitted")

    monkeypatch.setattr(nftables, "nft_apply", refuse)
    with pytest.raises(nftables.DataPlaneError):
        dp.set_owned_buckets(frozenset({3, 4}))  # 1 and 2 given away, 4 taken
    # what a restore (install) renders: neither a released bucket nor an unprogrammed one
    assert dp.owned == {3}
