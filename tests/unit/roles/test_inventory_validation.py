"""Wrong inventory input fails early, and the message names the variable.

Each case runs the roles' validation tasks with ansible-playbook on localhost
(nothing is changed anywhere) with one variable broken in an otherwise valid
inventory, and checks that the run fails and that the failure names it.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
PLAYBOOK = Path(__file__).with_name("validate_playbook.yml")
BIN = Path(sys.executable).parent
# site.yml's first play that contacts a node (after the inventory checks).
FIRST_NODE_PLAY = "PLAY [Sort the nodes by whether their agent runs]"

GOOD: dict[str, Any] = {
    "availability_manager_sync_address": "198.51.100.11",
    "availability_manager_sync_network": "198.51.100.0/24",
    "availability_manager_key": "ab" * 32,
    "availability_manager_zones": [
        {
            "name": "outside",
            "interface": "out0",
            "cluster_ips": ["192.0.2.1/24"],
            "cluster_mac": "01:00:5e:7f:00:01",
        },
        {
            "name": "inside",
            "interface": "in0",
            "cluster_ips": ["203.0.113.1/24"],
            "cluster_mac": "01:00:5e:7f:00:02",
        },
    ],
    "dataplane_forward_allow": [{"from": "inside", "to": "outside"}],
    "dataplane_nat_slot": 1,
}


def ansible_playbook(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_LOCALHOST_WARNING="0",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
        PATH=f"{BIN}:{env.get('PATH', '')}",
    )
    argv = [str(BIN / "ansible-playbook"), *args]
    return subprocess.run(
        argv,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def failure_text(output: str) -> str:
    """The lines of a run's output that carry its failure message."""
    return "\n".join(
        line for line in output.splitlines() if "FAILED" in line or '"msg"' in line
    )


def run_validation(
    tmp_path: Path, variables: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps(variables))
    return ansible_playbook(
        "-i",
        "localhost,",
        "-e",
        f"ansible_python_interpreter={sys.executable}",
        "-e",
        f"@{extra}",
        str(PLAYBOOK),
    )


def broken(**changes: Any) -> dict[str, Any]:
    variables = copy.deepcopy(GOOD)
    for key, value in changes.items():
        if value is None:
            variables.pop(key, None)
        else:
            variables[key] = value
    return variables


def zones_with(index: int, **changes: Any) -> list[dict[str, Any]]:
    zones: list[dict[str, Any]] = copy.deepcopy(GOOD["availability_manager_zones"])
    for key, value in changes.items():
        if value is None:
            zones[index].pop(key)
        else:
            zones[index][key] = value
    return zones


def test_valid_inventory_passes(tmp_path: Path) -> None:
    proc = run_validation(tmp_path, GOOD)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "failed=0" in proc.stdout


CASES = {
    "missing key": (
        broken(availability_manager_key=None),
        ["availability_manager_key", "availability_manager_key_src"],
    ),
    "key not 64 hex digits": (
        broken(availability_manager_key="abc"),
        ["availability_manager_key"],
    ),
    "zone without cluster IP": (
        broken(availability_manager_zones=zones_with(1, cluster_ips=[])),
        ["availability_manager_zones[1]", "inside", "no cluster_ips"],
    ),
    "zone cluster IP without prefix": (
        broken(availability_manager_zones=zones_with(0, cluster_ips=["192.0.2.1"])),
        ["availability_manager_zones[0]", "cluster_ips"],
    ),
    "malformed MAC": (
        broken(availability_manager_zones=zones_with(0, cluster_mac="01:00:5e:7f:00")),
        ["availability_manager_zones[0]", "cluster_mac", "01:00:5e:7f:00"],
    ),
    "unicast MAC": (
        broken(
            availability_manager_zones=zones_with(1, cluster_mac="02:00:5e:7f:00:02")
        ),
        ["availability_manager_zones[1]", "cluster_mac", "multicast"],
    ),
    "node id not in the sync network": (
        broken(availability_manager_node_id="192.0.2.11"),
        ["availability_manager_node_id", "192.0.2.11", "198.51.100.0/24"],
    ),
    "sync address not in the sync network": (
        broken(availability_manager_sync_address="203.0.113.11"),
        ["availability_manager_sync_address", "203.0.113.11"],
    ),
    "missing sync network": (
        broken(availability_manager_sync_network=None),
        ["availability_manager_sync_network"],
    ),
    "no zones": (
        broken(availability_manager_zones=[]),
        ["availability_manager_zones"],
    ),
    "unknown data-plane backend": (
        broken(availability_manager_backend="ebpf"),
        ["availability_manager_backend", "ebpf"],
    ),
    "masquerade to an unknown zone": (
        broken(dataplane_masquerade=[{"from": "inside", "to": "dmz"}]),
        ["dataplane_masquerade[0]", "dmz"],
    ),
    "NAT port range beyond the port space": (
        broken(
            dataplane_masquerade=[{"from": "inside", "to": "outside"}],
            dataplane_nat_slot=100,
        ),
        ["dataplane_nat_slot 100", "65535"],
    ),
    "forward rule with an unknown action": (
        broken(dataplane_forward_allow=[{"from": "inside", "to": "outside", "action": "permit"}]),
        ["dataplane_forward_allow[0]", "permit"],
    ),
    "input rule naming an unknown set": (
        broken(dataplane_input_allow=[{"proto": "tcp", "dports": [22], "saddr": "@admins"}]),
        ["dataplane_input_allow[0]", "admins"],
    ),
    "forward rule with an unknown zone": (
        broken(dataplane_forward_allow=[{"from": "dmz", "to": "outside"}]),
        ["dataplane_forward_allow[0]", "dmz"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_wrong_inventory_fails_naming_the_variable(tmp_path: Path, case: str) -> None:
    variables, expected = CASES[case]
    proc = run_validation(tmp_path, variables)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"{case}: accepted\n{output}"
    text = failure_text(output)
    assert text, output
    for word in expected:
        assert word in text, f"{case}: {word!r} not in the failure\n{text}"


# The four wrong inputs, run through site.yml itself: its first play
# must stop the run before the rollout play reaches any node.
SITE_CASES = (
    "missing key",
    "zone without cluster IP",
    "malformed MAC",
    "node id not in the sync network",
)


def run_site(
    tmp_path: Path, variables: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    # The node's address is a closed loopback port: were the rollout play ever
    # reached, the run would end unreachable instead of failing in validation.
    host = {"ansible_host": "127.0.0.1", "ansible_port": 9, **variables}
    inventory = {"all": {"children": {"firewalls": {"hosts": {"fw1": host}}}}}
    path = tmp_path / "hosts.json"
    path.write_text(json.dumps(inventory))
    return ansible_playbook("-i", str(path), str(REPO / "playbooks" / "site.yml"))


@pytest.mark.parametrize("case", SITE_CASES)
def test_site_yml_stops_before_touching_a_node(tmp_path: Path, case: str) -> None:
    variables, expected = CASES[case]
    proc = run_site(tmp_path, variables)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"{case}: site.yml accepted it\n{output}"
    assert FIRST_NODE_PLAY not in output, output
    assert "unreachable=0" in output, output
    failure = failure_text(output)
    for word in expected:
        assert word in failure, f"{case}: {word!r} not in the failure\n{failure}"


# The whole-cluster wrong inputs, on a three-node inventory through
# site.yml (and once with --limit): the check play stops the run, the failure
# names the variable and the host, and no node is ever contacted.
def three_nodes(**per_host: dict[str, Any]) -> dict[str, dict[str, Any]]:
    hosts: dict[str, dict[str, Any]] = {}
    for n in (1, 2, 3):
        host = {k: v for k, v in GOOD.items() if k != "dataplane_nat_slot"}
        host.update(
            availability_manager_sync_address=f"198.51.100.1{n}",
            dataplane_nat_slot=n,
            ansible_host="127.0.0.1",
            ansible_port=9,
        )
        host.update(per_host.get(f"fw{n}", {}))
        hosts[f"fw{n}"] = host
    return hosts


def run_site_hosts(
    tmp_path: Path, hosts: dict[str, dict[str, Any]], *args: str
) -> subprocess.CompletedProcess[str]:
    inventory = {"all": {"children": {"firewalls": {"hosts": hosts}}}}
    path = tmp_path / "hosts.json"
    path.write_text(json.dumps(inventory))
    return ansible_playbook(
        "-i", str(path), *args, str(REPO / "playbooks" / "site.yml")
    )


CLUSTER_CASES: dict[str, tuple[dict[str, dict[str, Any]], list[str]]] = {
    "three nodes with one sync address": (
        three_nodes(
            fw2={"availability_manager_sync_address": "198.51.100.11"},
            fw3={"availability_manager_sync_address": "198.51.100.11"},
        ),
        ["fw2: availability_manager_sync_address 198.51.100.11 is also fw1's"],
    ),
    "weight of 5000": (
        three_nodes(fw3={"availability_manager_weight": 5000}),
        ["availability_manager_weight (5000)", "fw3"],
    ),
    "DNAT naming an unknown zone": (
        three_nodes(
            fw2={
                "dataplane_dnat": [
                    {"zone": "dmz", "proto": "tcp", "dport": 443, "to": "203.0.113.10"}
                ]
            }
        ),
        ["dataplane_dnat[0]", "dmz", "fw2"],
    ),
    "IPv6 sync network without node ids": (
        {
            h: {
                **v,
                "availability_manager_sync_network": "2001:db8:77::/64",
                "availability_manager_sync_address": f"2001:db8:77::{n}",
            }
            for n, (h, v) in enumerate(sorted(three_nodes().items()), 1)
        },
        ["availability_manager_node_id", "IPv6 sync network"],
    ),
}


def test_a_good_three_node_inventory_passes_the_check_play(tmp_path: Path) -> None:
    """The check play passes and the first play on the nodes is reached (the
    nodes are closed ports, so it ends unreachable there, after the checks)."""
    proc = run_site_hosts(tmp_path, three_nodes())
    output = proc.stdout + proc.stderr
    assert FIRST_NODE_PLAY in output, output


@pytest.mark.parametrize("case", sorted(CLUSTER_CASES))
def test_site_yml_refuses_a_wrong_cluster_before_any_node(
    tmp_path: Path, case: str
) -> None:
    hosts, expected = CLUSTER_CASES[case]
    proc = run_site_hosts(tmp_path, hosts)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"{case}: site.yml accepted it\n{output}"
    assert FIRST_NODE_PLAY not in output, output
    assert "unreachable=0" in output and "unreachable=1" not in output, output
    failure = failure_text(output)
    for word in expected:
        assert word in failure, f"{case}: {word!r} not in the failure\n{failure}"


def test_limit_cannot_hide_a_conflict_with_a_node_left_out(tmp_path: Path) -> None:
    """--limit fw3: fw3's slot equals fw1's, and fw1 is not in the play."""
    masq = {"dataplane_masquerade": [{"from": "inside", "to": "outside"}]}
    hosts = three_nodes(
        fw1={**masq, "dataplane_nat_slot": 1},
        fw2={**masq, "dataplane_nat_slot": 2},
        fw3={**masq, "dataplane_nat_slot": 1},
    )
    proc = run_site_hosts(tmp_path, hosts, "--limit", "fw3")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert FIRST_NODE_PLAY not in output, output
    assert "fw3: dataplane_nat_slot 1 is also fw1's" in failure_text(output)


EXAMPLE = REPO / "inventories" / "example"


def test_the_example_inventory_passes_the_check_play() -> None:
    """As shipped, with the vault example standing in for the encrypted vault file."""
    proc = ansible_playbook(
        "-i",
        str(EXAMPLE),
        "-e",
        f"@{EXAMPLE / 'vault.yml.example'}",
        str(REPO / "playbooks" / "check_inventory.yml"),
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    for host in ("fw1", "fw2", "fw3"):
        assert re.search(rf"^{host}\s+: ok=[1-9][0-9]* .*failed=0", output, re.MULTILINE), (
            output
        )


def test_the_example_inventory_without_its_vault_names_the_key() -> None:
    proc = ansible_playbook(
        "-i", str(EXAMPLE), str(REPO / "playbooks" / "check_inventory.yml")
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "availability_manager_key" in failure_text(output), output


def test_example_management_addresses_are_outside_every_zone() -> None:
    import ipaddress

    import yaml

    hosts = yaml.safe_load((EXAMPLE / "hosts.yml").read_text())["all"]["children"][
        "firewalls"
    ]["hosts"]
    group = yaml.safe_load(
        (EXAMPLE / "group_vars" / "firewalls" / "main.yml").read_text()
    )
    networks = [
        ipaddress.ip_interface(ip).network
        for zone in group["availability_manager_zones"]
        for ip in zone["cluster_ips"]
    ] + [ipaddress.ip_network(group["availability_manager_sync_network"])]
    slots = [h["dataplane_nat_slot"] for h in hosts.values()]
    assert len(set(slots)) == len(hosts)
    for name, host in hosts.items():
        mgmt = ipaddress.ip_address(host["ansible_host"])
        assert not any(mgmt in net for net in networks), (
            f"{name}: {mgmt} inside a cluster network"
        )
