"""The test-host builder without booting anything: names, addresses, the
root's cache key, the staged agent source, the nspawn command line, and that
the static lab inventory matches what `testhosts up` builds."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import yaml

from testhosts import agent_source, layout, machine, network, rootfs

REPO = Path(__file__).resolve().parents[3]

INVENTORY = REPO / "inventories" / "lab"


def test_cache_key_follows_the_package_list_not_its_order() -> None:
    base = rootfs.cache_key(rootfs.PACKAGES)
    assert rootfs.cache_key(tuple(reversed(rootfs.PACKAGES))) == base
    assert rootfs.cache_key((*rootfs.PACKAGES, "tcpdump")) != base
    assert rootfs.rootfs_dir(Path("/c")).name == f"rootfs-{base}"


def test_a_root_without_its_marker_is_not_built(tmp_path: Path) -> None:
    root = rootfs.rootfs_dir(tmp_path)
    (root / "etc").mkdir(parents=True)
    assert not rootfs.is_built(root)
    (root / ".testhosts-complete").write_text("x\n")
    assert rootfs.is_built(root)


def test_nodes_get_lab_addresses_and_a_management_address() -> None:
    topo = layout.topology(3)
    nodes = layout.node_layouts(topo, Path("/cache"))
    assert [n.name for n in nodes] == ["fw1", "fw2", "fw3"]
    assert [str(n.mgmt_address) for n in nodes] == [
        "198.18.0.11/24",
        "198.18.0.12/24",
        "198.18.0.13/24",
    ]
    assert all(n.ns.startswith(layout.PREFIX) for n in nodes)
    assert nodes[1].merged == Path("/cache/nodes/fw2/merged")
    assert layout.MGMT_CONTROLLER.network == nodes[0].mgmt_address.network
    # Our own prefix: a developer's lab (fwl-) and the test hosts coexist.
    assert layout.PREFIX != "fwl-"


def test_static_lab_inventory_matches_the_built_hosts() -> None:
    hosts = yaml.safe_load((INVENTORY / "hosts.yml").read_text())["all"]["children"]["firewalls"][
        "hosts"
    ]
    group = yaml.safe_load((INVENTORY / "group_vars" / "firewalls.yml").read_text())
    topo = layout.topology(3)
    nodes = layout.node_layouts(topo)
    assert sorted(hosts) == [n.name for n in nodes]
    for n in nodes:
        assert hosts[n.name]["ansible_host"] == str(n.mgmt_address.ip)
        sync = n.host.link("sync").address
        assert hosts[n.name]["availability_manager_sync_address"] == str(sync.ip)
        assert ipaddress.ip_network(group["availability_manager_sync_network"]) == sync.network
    zones = {z["name"]: z for z in group["availability_manager_zones"]}
    for z in topo.zones:
        assert zones[z.name]["interface"] == z.node_ifname
        assert zones[z.name]["cluster_ips"] == [str(z.cluster_ip)]
        assert zones[z.name]["cluster_mac"] == z.cluster_mac
    assert group["ansible_ssh_private_key_file"].endswith(".cache/testhosts/ssh/id_ed25519")


def test_node_address_is_added_before_anything_else() -> None:
    topo = layout.topology(2)
    node = layout.node_layouts(topo)[0]
    lines = network.base_address_lines(node.host, node)
    adds = [line for line in lines if line.startswith("address add")]
    assert adds[0] == "address add 192.0.2.11/24 dev out0"
    assert "address add 198.18.0.11/24 dev mgmt0" in adds
    assert not any("route" in line for line in lines)  # nodes have no route out


def test_nspawn_boots_in_the_node_namespace_without_machined() -> None:
    node = layout.node_layouts(layout.topology(1))[0]
    argv = machine.nspawn_argv(node)
    for flag in ("--register=no", "--keep-unit", "--boot", "--private-network"):
        assert flag in argv
    assert f"--network-namespace-path=/run/netns/{node.ns}" in argv
    assert argv[argv.index("--directory") + 1] == str(node.merged)


def test_staged_agent_builds_without_files_outside_it(tmp_path: Path) -> None:
    dest = agent_source.stage(tmp_path / "src", local_version="rolling1")
    text = (dest / "pyproject.toml").read_text()
    assert '"../' not in text
    assert (dest / "README.md").is_file()
    original = (REPO / "agent" / "pyproject.toml").read_text()
    version = next(line for line in original.splitlines() if line.startswith("version ="))
    assert version.rstrip('"') + '+rolling1"' in text
    assert not (dest / "tests").exists()
    assert (dest / "availability_manager" / "__init__.py").is_file()


def test_forget_built_wheels_keeps_dependencies(tmp_path: Path) -> None:
    (tmp_path / "availability_manager-0.1.0-py3-none-any.whl").write_text("")
    (tmp_path / "availability_manager-0.1.0+rolling1-py3-none-any.whl").write_text("")
    (tmp_path / "pyyaml-6.0-cp311-cp311-linux_x86_64.whl").write_text("")
    agent_source.forget_built_wheels(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["pyyaml-6.0-cp311-cp311-linux_x86_64.whl"]


def test_nat_traffic_goes_where_the_lab_inventory_translates(tmp_path: Path) -> None:
    """`testhosts traffic --to dnat|masquerade` (the nat scenario's
    traffic) must hit the lab inventory's port forward and masquerade, or
    the scenario would measure untranslated traffic, or none."""
    from fwcluster_lab.netns import LabError
    from fwcluster_lab.state import LabState

    from testhosts import traffic

    group = yaml.safe_load((INVENTORY / "group_vars" / "firewalls.yml").read_text())
    state = LabState(tmp_path, layout.PREFIX, 3, 1, 1, agents=False)
    topo = state.topology()
    client, server = topo.clients[0], topo.servers[0]
    server_ip = str(server.links[0].address.ip)

    dnat = traffic.target(state, "dnat")
    assert (dnat.client, dnat.server) == (client.name, server.name)
    outside = next(z for z in group["availability_manager_zones"] if z["name"] == "outside")
    assert dnat.address == outside["cluster_ips"][0].split("/")[0]
    forwards = {(d["zone"], d["proto"], d["dport"], d["to"]) for d in group["dataplane_dnat"]}
    for proto in ("tcp", "udp"):
        assert ("outside", proto, dnat.port, f"{server_ip}:7001") in forwards, forwards

    masq = traffic.target(state, "masquerade")
    assert (masq.client, masq.server) == (server.name, client.name)
    assert masq.address == str(client.links[0].address.ip)
    assert {"from": "inside", "to": "outside"} in group["dataplane_masquerade"]
    allowed = [r for r in group["dataplane_forward_allow"] if (r["from"], r["to"]) == ("inside", "outside")]
    for proto in ("tcp", "udp"):
        assert any(r["proto"] == proto and masq.port in r["dports"] for r in allowed), allowed

    assert traffic.target(state, "ipv4").address == server_ip
    try:
        traffic.target(state, "ipv6")
    except LabError as exc:
        assert "ipv4, dnat, masquerade" in str(exc)
    else:
        raise AssertionError("an unknown kind of traffic was accepted")
