"""Helpers shared by the molecule verifiers: the test hosts as testinfra
hosts (paramiko backend, addresses from the lab inventory, the key of
`testhosts up`), the agent's status, and the traffic summaries the side
effects wrote.

Not testinfra's ansible backend: it reads the inventory without templating,
and the lab inventory's key path is a template relative to the inventory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import testinfra
import yaml

REPO = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[3]))
INVENTORY = REPO / "inventories" / "lab" / "hosts.yml"
RESULTS = REPO / ".cache" / "testhosts" / "results"
SSH_KEY = REPO / ".cache" / "testhosts" / "ssh" / "id_ed25519"
NODES = ("fw1", "fw2", "fw3")


def _addresses() -> dict[str, str]:
    data = yaml.safe_load(INVENTORY.read_text())
    hosts = data["all"]["children"]["firewalls"]["hosts"]
    return {name: str(h["ansible_host"]) for name, h in hosts.items()}


def node(name: str) -> Any:
    address = _addresses()[name]
    return testinfra.get_host(f"paramiko://root@{address}", ssh_identity_file=str(SSH_KEY))


def status(host: Any) -> dict[str, Any]:
    """`clusterctl status --json` of a node, parsed."""
    out = host.check_output("clusterctl status --json")
    data: dict[str, Any] = json.loads(out)
    return data


def owned_union(statuses: list[dict[str, Any]]) -> set[int]:
    owned: set[int] = set()
    for st in statuses:
        owned |= set(st["owned"])
    return owned


def traffic(name: str) -> dict[str, Any]:
    """The traffic summary a side effect saved as results/<name>.json."""
    path = RESULTS / f"{name}.json"
    assert path.exists(), f"no traffic summary {path}: did the side effect run?"
    summary: dict[str, Any] = json.loads(path.read_text())
    return summary


def record(name: str) -> dict[str, Any]:
    """A JSON record a side effect saved (results/<name>.json)."""
    return traffic(name)


def assert_nothing_lost_or_doubled(scenario: str, summary: dict[str, Any]) -> None:
    """Every measured connection established and kept, no packet delivered
    twice (a frame forwarded by two nodes while buckets moved)."""
    print(
        f"{scenario}: connections={summary['connections']} "
        f"established={summary['established']} lost={summary['lost']} "
        f"duplicates={summary['duplicates']} lost_packets={summary['lost_packets']} "
        f"longest_stall_ms={summary['longest_stall_ms']}"
    )
    assert summary["connections"] > 0, "no connection was measured"
    assert summary["established"] == summary["connections"], summary
    assert summary["lost"] == 0, f"{summary['lost']} connections lost"
    assert summary["duplicates"] == 0, f"{summary['duplicates']} duplicate deliveries"
