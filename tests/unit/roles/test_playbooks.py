"""The operator playbooks: runnable by their collection names (underscores),
the hyphenated names kept as aliases, and remove_node asks before it acts.
The node is a closed loopback port: reaching the node play would end the
run unreachable, so "not reached" is visible in the recap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .test_inventory_validation import GOOD, REPO, ansible_playbook, failure_text

PLAYBOOKS = ("drain_node", "join_node", "remove_node", "rolling_upgrade", "rotate_key", "site")
ALIASES = {
    "drain-node": "drain_node",
    "join-node": "join_node",
    "remove-node": "remove_node",
    "rolling-upgrade": "rolling_upgrade",
}


def inventory(tmp_path: Path) -> str:
    host = {**GOOD, "ansible_host": "127.0.0.1", "ansible_port": 9, "ansible_connection": "ssh"}
    path = tmp_path / "hosts.json"
    path.write_text(json.dumps({"all": {"children": {"firewalls": {"hosts": {"fw1": host}}}}}))
    return str(path)


@pytest.mark.parametrize("name", PLAYBOOKS)
def test_runnable_by_collection_name(tmp_path: Path, name: str) -> None:
    proc = ansible_playbook("-i", inventory(tmp_path), "--syntax-check", f"fwcluster.cluster.{name}")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_hyphenated_names_are_aliases(alias: str) -> None:
    import yaml

    plays = yaml.safe_load((REPO / "playbooks" / f"{alias}.yml").read_text())
    assert [p.get("ansible.builtin.import_playbook") for p in plays] == [f"{ALIASES[alias]}.yml"]


def test_node_argument_is_required(tmp_path: Path) -> None:
    proc = ansible_playbook("-i", inventory(tmp_path), "fwcluster.cluster.drain_node")
    assert proc.returncode != 0
    assert "pass -e node=<inventory host>" in failure_text(proc.stdout + proc.stderr)


def test_remove_without_confirmation_touches_nothing(tmp_path: Path) -> None:
    """No terminal, no -e confirm=yes: the prompt gets no answer, nothing runs."""
    proc = ansible_playbook("-i", inventory(tmp_path), "-e", "node=fw1", "fwcluster.cluster.remove_node")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "not confirmed: fw1 is left as it is" in failure_text(output)
    assert "PLAY [Remove a firewall node from the cluster]" not in output


def test_remove_with_confirm_yes_goes_to_the_node(tmp_path: Path) -> None:
    proc = ansible_playbook(
        "-i", inventory(tmp_path), "-e", "node=fw1", "-e", "confirm=yes", "fwcluster.cluster.remove_node"
    )
    output = proc.stdout + proc.stderr
    assert "PLAY [Remove a firewall node from the cluster]" in output, output
    assert "unreachable=1" in output, output


@pytest.mark.parametrize(
    "name", ["is_multicast_mac", "is_ip_interface", "in_network", "first_ipv4", "inventory_problems"]
)
def test_filters_are_documented(name: str) -> None:
    import subprocess
    import sys

    doc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-doc"), "-t", "filter", "--json", f"fwcluster.cluster.{name}"],
        capture_output=True, text=True, check=False, cwd=REPO, timeout=120,
    )
    assert doc.returncode == 0, doc.stderr
    entry = json.loads(doc.stdout)[f"fwcluster.cluster.{name}"]
    assert entry["doc"]["short_description"] and entry["examples"]
