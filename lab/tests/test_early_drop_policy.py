"""The lab's early-drop setting (FWLAB_EARLY_DROP=1): the agent accepts it,
and its slow path covers the traffic of the NAT and helper tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from availability_manager.daemon.config import parse_config

from fwcluster_lab import agent
from fwcluster_lab.nat_policy import DNAT_TARGET_PORT, FTP_PORT
from fwcluster_lab.topology import build_topology


def lab_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nat: bool) -> dict[str, Any]:
    monkeypatch.setenv("FWLAB_EARLY_DROP", "1")
    t = build_topology(nodes=2, ipv6=True, nat=nat)
    path = agent.write_config(t, t.node("fw1"), tmp_path)
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def test_off_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FWLAB_EARLY_DROP", raising=False)
    t = build_topology(nodes=2)
    assert "early_drop" not in yaml.safe_load(
        agent.write_config(t, t.node("fw1"), tmp_path).read_text()
    )
    assert "early_drop" not in agent.agent_config(t, t.node("fw1"), tmp_path, "clusterdev")


@pytest.mark.parametrize("nat", [False, True])
def test_the_agent_accepts_the_labs_early_drop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nat: bool
) -> None:
    data = lab_config(tmp_path, monkeypatch, nat)
    early = parse_config(data, tmp_path / "config.yml").early_drop
    assert early.enabled
    server = build_topology(nodes=2, ipv6=True, nat=nat).servers[0]
    nets = {str(e.network.network_address) for e in early.slow_path if e.network}
    assert nets == {str(server.links[0].address.ip), str(server.address6)}
    ports = {(e.protocol, e.ports) for e in early.slow_path}
    assert ("tcp", (32768, 60999)) in ports and ("udp", (32768, 60999)) in ports
    dnat = {("tcp", (DNAT_TARGET_PORT,) * 2), ("udp", (DNAT_TARGET_PORT,) * 2),
            ("tcp", (FTP_PORT,) * 2), ("icmp", None)}  # fmt: skip
    assert dnat <= ports if nat else not dnat & ports
