"""The config's `health` section: a valid one loads, each mistake names its key."""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import pytest
from test_config import GOOD, parse

from availability_manager.daemon.config import ConfigError, reload_incompatible
from availability_manager.health import CheckTiming

HEALTH: dict[str, Any] = {
    "nexthops": {
        "interval_ms": 200,
        "fall": 2,
        "targets": {"outside": ["192.0.2.254"], "inside": ["203.0.113.254", "2001:db8::fe"]},
    },
    "checks": [
        {"name": "proxy", "command": ["/bin/true", "-x"], "interval_ms": 500, "timeout_ms": 300},
        {"name": "disk", "command": ["/bin/false"], "action": "weight", "weight": 2},
    ],
}


def with_health(health: Any, weight: int = 3) -> dict[str, Any]:
    return {**copy.deepcopy(GOOD), "weight": weight, "health": health}


def test_a_full_health_section_loads_with_defaults_filled_in() -> None:
    cfg = parse(with_health(HEALTH)).health
    assert cfg.nexthops.timing == CheckTiming(interval=0.2, timeout=0.2, rise=5, fall=2)
    assert cfg.nexthops.only_if_a_peer_reaches is True
    assert cfg.nexthops.targets == (
        ("outside", (ipaddress.ip_address("192.0.2.254"),)),
        ("inside", (ipaddress.ip_address("203.0.113.254"), ipaddress.ip_address("2001:db8::fe"))),
    )
    proxy, disk = cfg.checks
    assert proxy.command == ("/bin/true", "-x") and proxy.action == "drain"
    assert proxy.timing == CheckTiming(interval=0.5, timeout=0.3, rise=2, fall=2)
    assert (disk.action, disk.weight, disk.timing.interval) == ("weight", 2, 2.0)


def test_no_health_section_means_no_checks() -> None:
    cfg = parse(GOOD).health
    assert cfg.checks == () and cfg.nexthops.targets == ()


def change(path: str, value: Any) -> dict[str, Any]:
    health = copy.deepcopy(HEALTH)
    cur: Any = health
    keys = path.split(".")
    for k in keys[:-1]:
        cur = cur[int(k)] if isinstance(cur, list) else cur[k]
    cur[keys[-1]] = value
    return health


@pytest.mark.parametrize(
    ("health", "names"),
    [
        (change("nexthops.targets.dmz", ["192.0.2.9"]), "health.nexthops.targets.dmz: not a zone"),
        (change("nexthops.targets.outside", []), "health.nexthops.targets.outside: expected a"),
        (change("nexthops.targets.outside", ["gw"]), "targets.outside[0]: expected an IP address"),
        (change("nexthops.targets.outside", ["192.0.2.1"]), "not a cluster or multicast"),
        (change("nexthops.targets.inside", ["2001:db8::1"]), "targets.inside[0]: expected a next"),
        (change("nexthops.timeout_ms", 500), "health.nexthops.timeout_ms: at most interval_ms"),
        (change("nexthops.fall", 0), "health.nexthops.fall: expected an integer from 1"),
        (change("nexthops.ping", 1), "health.nexthops.ping: unknown key"),
        (change("checks.0.command", "/bin/true -x"), "checks[0].command: expected a non-empty"),
        (change("checks.0.command", ["true"]), "checks[0].command[0]: expected an absolute path"),
        (change("checks.0.name", "a b"), "health.checks[0].name: expected letters"),
        (change("checks.1.name", "proxy"), "health.checks: check names must be unique"),
        (change("checks.0.action", "reboot"), "health.checks[0].action: expected one of drain"),
        (change("checks.0.weight", 1), "health.checks[0].weight: only with action: weight"),
        (change("checks.1.weight", 3), "checks[1].weight: expected below the node's weight"),
        (change("checks.1.timeout_ms", 2001), "checks[1].timeout_ms: at most interval_ms"),
        (change("checks", {"name": "x"}), "health.checks: expected a list of checks"),
    ],
)
def test_each_mistake_names_its_key(health: Any, names: str) -> None:
    with pytest.raises(ConfigError, match=r"^/etc/am\.yml: ") as err:
        parse(with_health(health))
    assert names in str(err.value)


def test_health_changes_apply_on_a_reload() -> None:
    old = parse(with_health(HEALTH))
    new = parse(with_health(change("nexthops.fall", 4)))
    assert old.health != new.health
    assert reload_incompatible(old, new) == []
