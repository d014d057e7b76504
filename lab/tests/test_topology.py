"""Names, addresses, agent config and fault rules of a lab, without creating one."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml

from fwcluster_lab import agent, faults, standalone
from fwcluster_lab.netns import LabError
from fwcluster_lab.state import LabState
from fwcluster_lab.topology import build_topology

DOC_NETS = [
    ipaddress.IPv4Network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "198.18.0.0/15")
]


def test_names_and_addresses() -> None:
    topo = build_topology(nodes=3)
    assert topo.namespaces == (
        "fwl-sw",
        "fwl-fw1",
        "fwl-fw2",
        "fwl-fw3",
        "fwl-client",
        "fwl-server",
    )
    fw2 = topo.node("fw2")
    assert [(link.ifname, str(link.address)) for link in fw2.links] == [
        ("out0", "192.0.2.12/24"),
        ("in0", "203.0.113.12/24"),
        ("sync0", "198.51.100.12/24"),
    ]
    assert str(topo.clients[0].links[0].address) == "192.0.2.100/24"
    assert str(topo.servers[0].links[0].address) == "203.0.113.100/24"
    assert topo.clients[0].routes == (("203.0.113.0/24", "192.0.2.1"),)
    assert topo.servers[0].routes == (("192.0.2.0/24", "203.0.113.1"),)


def test_every_address_is_from_documentation_prefixes_and_no_default_route() -> None:
    topo = build_topology(nodes=16, clients=4, servers=4)
    for h in topo.hosts:
        for link in h.links:
            assert any(link.address.ip in n for n in DOC_NETS), link
        for dst, _via in h.routes:
            assert dst != "0.0.0.0/0"
    for z in topo.zones:
        assert int(z.cluster_mac.split(":")[0], 16) & 1, "cluster MAC must be multicast"


def test_names_are_unique_and_fit_interface_limits() -> None:
    topo = build_topology(nodes=16, clients=16, servers=16)
    sw_ports = [link.sw_ifname for h in topo.hosts for link in h.links]
    assert len(sw_ports) == len(set(sw_ports))
    assert all(len(p) <= 15 for p in sw_ports)
    assert len(set(topo.namespaces)) == len(topo.namespaces)
    assert topo.clients[1].name == "client2"


@pytest.mark.parametrize(
    "kwargs", [{"nodes": 0}, {"nodes": 17}, {"clients": 0}, {"prefix": "no-dash"}, {"prefix": ""}]
)
def test_bad_topologies_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        build_topology(**kwargs)  # type: ignore[arg-type]


def test_lookup_errors() -> None:
    topo = build_topology()
    with pytest.raises(KeyError):
        topo.node("client")
    with pytest.raises(KeyError):
        topo.host("fw9")
    assert topo.host("fwl-fw1").name == "fw1"


def test_agent_config_has_the_fixed_schema(tmp_path: Path) -> None:
    topo = build_topology(nodes=2)
    path = agent.write_config(topo, topo.node("fw2"), tmp_path)
    cfg = yaml.safe_load(path.read_text())
    assert list(cfg) == [
        "node_id",
        "sync",
        "zones",
        "cluster",
        "heartbeat",
        "key_file",
        "protocols",
        "control_socket",
        "metrics",
        "state_dir",
    ]
    assert cfg["node_id"] == "198.51.100.12"
    assert cfg["sync"] == {
        "interface": "sync0",
        "address": "198.51.100.12",
        "transport": "multicast",
        "group": "239.255.77.1",
        "port": 7788,
    }
    assert cfg["zones"][0] == {
        "name": "outside",
        "interface": "out0",
        "cluster_ips": ["192.0.2.1/24"],
        "cluster_mac": "01:00:5e:7f:00:01",
    }
    assert cfg["zones"][1]["cluster_ips"] == ["203.0.113.1/24"]
    assert cfg["cluster"] == {
        "buckets": 256,
        "hash_seed": 0x5EEDF17E,
        "hash_fields": "addresses+ports",
        "backend": "nftables",
    }
    assert cfg["heartbeat"] == {"interval_ms": 50, "misses": 3}
    assert cfg["control_socket"] == str(tmp_path / "fw2" / "control.sock")
    assert cfg["protocols"] == ["tcp", "udp", "icmp"]
    assert cfg["state_dir"] == str(tmp_path / "fw2" / "state")


def test_key_is_written_once(tmp_path: Path) -> None:
    first = agent.write_key(tmp_path).read_text()
    assert len(bytes.fromhex(first.strip())) == 32
    assert agent.write_key(tmp_path).read_text() == first
    assert (tmp_path / "cluster.key").stat().st_mode & 0o777 == 0o600


def _state(tmp_path: Path) -> LabState:
    return LabState(tmp_path, "fwl-", nodes=3, clients=1, servers=1)


def test_partition_rules_cut_exactly_the_group(tmp_path: Path) -> None:
    state = _state(tmp_path)
    state.partitions = [{"plane": "sync", "nodes": ["fw1", "fw2"]}]
    rules = faults.ruleset(state)
    assert 'iifname { "fw1-sync", "fw2-sync" } oifname { "fw3-sync" } drop' in rules
    assert 'iifname { "fw3-sync" } oifname { "fw1-sync", "fw2-sync" } drop' in rules
    assert "fw1-out" not in rules and "client-out" not in rules


def test_zone_partition_separates_the_node_from_clients_and_servers(tmp_path: Path) -> None:
    state = _state(tmp_path)
    state.partitions = [{"plane": "zone", "nodes": ["fw1"]}]
    rules = faults.ruleset(state)
    assert '"fw1-out", "fw1-in"' in rules
    assert '"client-out"' in rules and '"server-in"' in rules
    assert "sync" not in rules.split("chain loss")[0]


def test_loss_rule_only_when_nonzero(tmp_path: Path) -> None:
    state = _state(tmp_path)
    assert "numgen" not in faults.ruleset(state)
    state.sync_loss_percent = 25
    rules = faults.ruleset(state)
    assert 'oifname { "fw1-sync", "fw2-sync", "fw3-sync" } numgen random mod 100 < 25 drop' in rules


def test_fault_inputs_are_validated_before_any_change(tmp_path: Path) -> None:
    state = _state(tmp_path)
    with pytest.raises(KeyError):
        faults.partition(state, "sync", ["fw1", "fw9"])
    with pytest.raises(LabError):
        faults.partition(state, "bogus", ["fw1"])
    with pytest.raises(LabError):
        faults.loss(state, "sync", 101)
    assert state.partitions == [] and state.sync_loss_percent == 0
    assert not (tmp_path / "state.json").exists()


def test_standalone_rules_mangle_arp_and_accept_the_cluster_mac() -> None:
    rules = standalone.ruleset(build_topology())
    assert "arp saddr ip 192.0.2.1 arp saddr ether set 01:00:5e:7f:00:01" in rules
    assert "arp saddr ip 203.0.113.1 arp saddr ether set 01:00:5e:7f:00:02" in rules
    assert "ether daddr 01:00:5e:7f:00:02 meta pkttype set host" in rules


def test_state_round_trip(tmp_path: Path) -> None:
    from fwcluster_lab.netns import Proc

    state = _state(tmp_path)
    state.procs["agent:fw1"] = Proc(123, 456, "fwl-fw1", "agent:fw1")
    state.partitions = [{"plane": "sync", "nodes": ["fw1"]}]
    state.save()
    loaded = LabState.load(tmp_path)
    assert loaded is not None
    assert loaded.procs == state.procs
    assert loaded.partitions == state.partitions
    (tmp_path / "state.json").write_text("{not json")
    assert LabState.load(tmp_path) is None
