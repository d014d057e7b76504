"""The `health` section of the agent's config: next-hop targets per zone and
operator checks, validated with the same precise errors as the rest
(`config.py` calls `parse_health` with its reader).

    health:
      nexthops:                 # ICMP echo from the node's own address, per zone
        interval_ms: 100        # one round of echoes per interval
        timeout_ms: 100         # a round without any reply by then fails (<= interval)
        rise: 5                 # rounds in a row to count a lost next hop as back
        fall: 3                 # rounds in a row to count it as lost
        only_if_a_peer_reaches: true   # step back only while another node reaches its own
        targets:                # zone name -> addresses; a zone is fine if any answers
          outside: [192.0.2.254]
          inside: [203.0.113.254, "2001:db8:0:2::fe"]
      checks:
        - name: proxy           # letters, digits, - _ . (1-32): the fault "check:proxy"
          command: [/usr/local/bin/check-proxy, --quick]   # run without a shell
          interval_ms: 2000
          timeout_ms: 1000      # killed (with its process group) after this; <= interval
          rise: 2
          fall: 2
          action: drain         # drain: step back (give every bucket away);
                                # weight: lower the node's weight to `weight`
          weight: 1             # with action weight only: below the node's weight
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..dataplane.base import Zone
from ..health import CheckTiming

if TYPE_CHECKING:
    from .config import _Reader

ACTIONS = ("drain", "weight")
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclasses.dataclass(frozen=True)
class NexthopConfig:
    timing: CheckTiming = dataclasses.field(
        default_factory=lambda: CheckTiming(interval=0.1, timeout=0.1, rise=5, fall=3)
    )
    only_if_a_peer_reaches: bool = True
    targets: tuple[tuple[str, tuple[Address, ...]], ...] = ()  # (zone name, addresses)


@dataclasses.dataclass(frozen=True)
class CheckConfig:
    name: str
    command: tuple[str, ...]
    timing: CheckTiming
    action: str = "drain"
    weight: int = 1  # the node's weight while failing (action weight)


@dataclasses.dataclass(frozen=True)
class HealthConfig:
    nexthops: NexthopConfig = dataclasses.field(default_factory=NexthopConfig)
    checks: tuple[CheckConfig, ...] = ()


def parse_health(
    r: _Reader, m: Mapping[str, Any], zones: Sequence[Zone], node_weight: int
) -> HealthConfig:
    r.check_keys(m, "health", {"nexthops", "checks"})
    nexthops = _parse_nexthops(
        r, r.get(m, "nexthops", "health", lambda v, k: r.mapping(v, k), {}), zones
    )
    checks_raw = r.get(m, "checks", "health", lambda v, k: v, [])
    if not isinstance(checks_raw, list):
        raise r.fail("health.checks", "a list of checks", checks_raw)
    checks = tuple(
        _parse_check(r, c, f"health.checks[{i}]", node_weight) for i, c in enumerate(checks_raw)
    )
    names = [c.name for c in checks]
    if len(set(names)) != len(names):
        raise r.fail("health.checks", f"check names must be unique (have {names})")
    return HealthConfig(nexthops, checks)


def _timing(
    r: _Reader, m: Mapping[str, Any], key: str, interval: int, rise: int, fall: int
) -> CheckTiming:
    interval_ms = r.get(m, "interval_ms", key, r.integer(10, 3_600_000), interval)
    timeout_ms = r.get(m, "timeout_ms", key, r.integer(10, 3_600_000), interval_ms)
    if timeout_ms > interval_ms:
        raise r.fail(
            f"{key}.timeout_ms", f"at most interval_ms ({interval_ms}): runs never overlap"
        )
    return CheckTiming(
        interval=interval_ms / 1000.0,
        timeout=timeout_ms / 1000.0,
        rise=r.get(m, "rise", key, r.integer(1, 100), rise),
        fall=r.get(m, "fall", key, r.integer(1, 100), fall),
    )


def _parse_nexthops(r: _Reader, m: Mapping[str, Any], zones: Sequence[Zone]) -> NexthopConfig:
    key = "health.nexthops"
    r.check_keys(
        m, key, {"interval_ms", "timeout_ms", "rise", "fall", "only_if_a_peer_reaches", "targets"}
    )
    targets_raw = r.mapping(r.get(m, "targets", key, lambda v, k: v, {}), f"{key}.targets")
    by_name = {z.name: z for z in zones}
    targets = []
    for zone_name, addrs in targets_raw.items():
        where = f"{key}.targets.{zone_name}"
        zone = by_name.get(zone_name)
        if zone is None:
            raise r.fail(where, f"not a zone of this config (zones: {', '.join(by_name)})")
        if not isinstance(addrs, list) or not addrs:
            raise r.fail(where, "a non-empty list of IP addresses", addrs)
        parsed = tuple(r.address(a, f"{where}[{i}]") for i, a in enumerate(addrs))
        shared = {ip.ip for ip in zone.cluster_ips}
        for i, a in enumerate(parsed):
            # the cluster's own address answers on every node: it proves nothing
            if a in shared or a.is_multicast or a.is_unspecified:
                raise r.fail(f"{where}[{i}]", "a next hop, not a cluster or multicast address", a)
        targets.append((zone_name, parsed))
    return NexthopConfig(
        timing=_timing(r, m, key, interval=100, rise=5, fall=3),
        only_if_a_peer_reaches=r.get(m, "only_if_a_peer_reaches", key, r.boolean, True),
        targets=tuple(targets),
    )


def _parse_check(r: _Reader, value: object, key: str, node_weight: int) -> CheckConfig:
    m = r.mapping(value, key)
    r.check_keys(
        m, key, {"name", "command", "interval_ms", "timeout_ms", "rise", "fall", "action", "weight"}
    )
    name = r.get(m, "name", key, r.string)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", name):
        raise r.fail(f"{key}.name", "letters, digits, '-', '_', '.' (1-32 characters)", name)
    command = r.get(m, "command", key, lambda v, k: v)
    if (
        not isinstance(command, list)
        or not command
        or not all(isinstance(a, str) and a for a in command)
    ):
        raise r.fail(f"{key}.command", "a non-empty list of strings (run without a shell)", command)
    if not command[0].startswith("/"):
        raise r.fail(f"{key}.command[0]", "an absolute path to the program", command[0])
    action = r.get(m, "action", key, r.choice(ACTIONS), "drain")
    weight = r.get(m, "weight", key, r.integer(1, 1000), 1)
    if "weight" in m and action != "weight":
        raise r.fail(f"{key}.weight", "only with action: weight")
    if action == "weight" and weight >= node_weight:
        raise r.fail(
            f"{key}.weight",
            f"below the node's weight ({node_weight}), or the action changes nothing",
            weight,
        )
    return CheckConfig(
        name=name,
        command=tuple(command),
        timing=_timing(r, m, key, interval=2000, rise=2, fall=2),
        action=action,
        weight=weight,
    )
