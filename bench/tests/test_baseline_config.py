"""The baseline's configs as rendered for a lab node: every placeholder
filled, the node-specific values where keepalived and conntrackd read them."""

from __future__ import annotations

from pathlib import Path

import pytest
from fwbench import baseline_config as cfg
from fwbench.baseline_cluster import node_spec
from fwbench.env import BASELINES
from fwcluster_lab.topology import build_topology


def spec(index: int, nodes: int = 3) -> cfg.NodeSpec:
    topo = build_topology(nodes, 1, 1, "fwz-")
    return node_spec(topo, topo.nodes[index], index)


def paths(tmp_path: Path) -> cfg.NodePaths:
    return cfg.NodePaths(tmp_path / "fw1")


def test_priorities_fall_with_the_node_index_so_fw1_starts_master() -> None:
    assert [cfg.priority(i) for i in range(3)] == [200, 190, 180]


@pytest.mark.parametrize("variant", cfg.VARIANTS)
def test_keepalived_conf_has_vips_priority_and_notify(
    variant: str, tmp_path: Path
) -> None:
    text = cfg.keepalived_conf(
        variant, spec(1), paths(tmp_path), tmp_path / "n.sh", 0.1
    )
    assert "$" not in text.replace("$(", "")  # every placeholder filled
    assert "priority 190" in text
    assert "interface sync0" in text
    assert "192.0.2.1/24 dev out0" in text and "203.0.113.1/24 dev in0" in text
    assert f'notify_master "{tmp_path / "n.sh"} primary' in text
    assert str(paths(tmp_path).track_file) in text


def test_variants_differ_in_vrrp_version_and_advert() -> None:
    p = cfg.NodePaths(BASELINES)
    default = cfg.keepalived_conf("default", spec(0), p, BASELINES / "x", 0.05)
    tuned = cfg.keepalived_conf("tuned", spec(0), p, BASELINES / "x", 0.05)
    assert "advert_int 1\n" in default and "vrrp_version" not in default
    assert "vrrp_version 3" in tuned and "advert_int 0.05\n" in tuned


def test_unknown_variant_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="variant"):
        cfg.keepalived_conf("fast", spec(0), paths(tmp_path), tmp_path / "n.sh", 0.1)


def test_conntrackd_conf_binds_the_sync_link_and_ignores_own_addresses(
    tmp_path: Path,
) -> None:
    text = cfg.conntrackd_conf(spec(2), paths(tmp_path))
    assert "Mode FTFW" in text
    assert "IPv4_interface 198.51.100.13" in text and "Interface sync0" in text
    for addr in (
        "192.0.2.13",
        "203.0.113.13",
        "192.0.2.1",
        "203.0.113.1",
        "198.51.100.0/24",
    ):
        assert f"IPv4_address {addr}\n" in text
    assert str(paths(tmp_path).unix_path) in text
    assert f"HashLimit {cfg.HASH_LIMIT}" in text


def test_firewall_accepts_new_tcp_only_with_syn() -> None:
    text = cfg.firewall_ruleset(spec(0))
    assert (
        'iifname "out0" oifname "in0" tcp flags & (fin | syn | rst | ack) == syn accept'
        in text
    )
    assert "policy drop" in text
