"""The agent's configuration file: schema, validation, defaults.

One YAML file (default /etc/availability-manager/config.yml). Every error
names the file, the key path and what was expected, and is raised as
`ConfigError` before anything is changed: a bad file at start stops the
daemon with that message, a bad file on SIGHUP keeps the running config.

Which keys may change on a reload is decided here too (`reload_incompatible`):
cluster-wide settings and the node id need a restart through a drain.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ..connection import PROTO_NAMES
from ..dataplane.base import Zone
from ..dataplane.early_drop import EarlyDrop, parse_slow_path
from ..types import BACKENDS, HASH_FIELDS, MAX_NODE_ID, ClusterSettings
from ..wire import WIRE_VERSION, WIRE_VERSION_MIN

DEFAULT_PATH = Path("/etc/availability-manager/config.yml")
TRANSPORTS = ("multicast", "broadcast", "unicast")


class ConfigError(Exception):
    """A configuration problem a person can fix; the message says where and what."""


@dataclasses.dataclass(frozen=True)
class SyncConfig:
    interface: str
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    transport: str = "multicast"
    group: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    port: int = 7788
    peers: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()


@dataclasses.dataclass(frozen=True)
class HeartbeatConfig:
    interval_ms: int = 50
    misses: int = 3
    zone_heartbeats: bool = True
    # make-before-break handovers (ranges.py): the giver forwards until this
    # long after the taker's claim, the taker from then on; 0 = the old
    # break-before-make (a gap of one message latency)
    handover_delay_ms: int = 100


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    address: str = "127.0.0.1"
    port: int = 9477
    enabled: bool = True


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    path: Path
    node_id: int
    sync: SyncConfig
    zones: tuple[Zone, ...]
    cluster: ClusterSettings
    heartbeat: HeartbeatConfig
    key_file: Path
    protocols: frozenset[int]
    control_socket: Path
    metrics: MetricsConfig
    weight: int = 1
    mark_mask: int = 0x0000FFFF
    tcp_loose: bool = False
    early_drop: EarlyDrop = dataclasses.field(default_factory=EarlyDrop)
    leave_timeout_s: float = 30.0
    state_dir: Path = Path("/var/lib/availability-manager")
    realtime: bool = True
    # Below the build's wire version only to behave as an older release during
    # a rolling upgrade (and in its tests); see wire.py.
    max_wire_version: int = WIRE_VERSION


def reload_incompatible(old: AgentConfig, new: AgentConfig) -> list[str]:
    """Keys whose change a SIGHUP cannot apply (they need a drained restart)."""
    fixed = (
        "node_id", "sync", "zones", "cluster", "control_socket", "mark_mask", "metrics",
        "early_drop",
    )  # fmt: skip
    return [k for k in fixed if getattr(old, k) != getattr(new, k)]


# -- validation helpers --------------------------------------------------------

T = TypeVar("T")


class _Reader:
    """Walks the parsed YAML with the current key path, for precise errors."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, expected: str, got: object = dataclasses.MISSING) -> ConfigError:
        where = f"{self.path}: {key}" if key else str(self.path)
        if got is dataclasses.MISSING:
            return ConfigError(f"{where}: {expected}")
        return ConfigError(f"{where}: expected {expected}, got {got!r}")

    def mapping(self, value: object, key: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(key, "a mapping", value)
        return value

    def check_keys(self, m: Mapping[str, Any], key: str, allowed: set[str]) -> None:
        unknown = sorted(set(m) - allowed)
        if unknown:
            where = f"{key}." if key else ""
            raise self.fail(
                f"{where}{unknown[0]}",
                f"unknown key (allowed here: {', '.join(sorted(allowed))})",
            )

    def get(
        self,
        m: Mapping[str, Any],
        key: str,
        prefix: str,
        convert: Callable[[Any, str], T],
        default: T | object = dataclasses.MISSING,
    ) -> T:
        full = f"{prefix}.{key}" if prefix else key
        if key not in m or m[key] is None:
            if default is dataclasses.MISSING:
                raise self.fail(full, "is required")
            return default  # type: ignore[return-value]
        return convert(m[key], full)

    # converters: (value, key path) -> typed value
    def integer(self, lo: int, hi: int) -> Callable[[Any, str], int]:
        def conv(v: Any, key: str) -> int:
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise self.fail(key, f"an integer from {lo} to {hi}", v)
            return v

        return conv

    def boolean(self, v: Any, key: str) -> bool:
        if not isinstance(v, bool):
            raise self.fail(key, "true or false", v)
        return v

    def string(self, v: Any, key: str) -> str:
        if not isinstance(v, str) or not v:
            raise self.fail(key, "a non-empty string", v)
        return v

    def choice(self, choices: tuple[str, ...]) -> Callable[[Any, str], str]:
        def conv(v: Any, key: str) -> str:
            if v not in choices:
                raise self.fail(key, f"one of {', '.join(choices)}", v)
            return str(v)

        return conv

    def address(self, v: Any, key: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        try:
            return ipaddress.ip_address(str(v))
        except ValueError:
            raise self.fail(key, "an IP address", v) from None

    def interface_name(self, v: Any, key: str) -> str:
        if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z0-9_.@-]{1,15}", v):
            raise self.fail(key, "an interface name (1-15 characters)", v)
        return v

    def abspath(self, v: Any, key: str) -> Path:
        if not isinstance(v, str) or not v.startswith("/"):
            raise self.fail(key, "an absolute path", v)
        return Path(v)


# -- the schema ----------------------------------------------------------------

_TOP_KEYS = {
    "max_wire_version",
    "node_id",
    "sync",
    "zones",
    "cluster",
    "heartbeat",
    "key_file",
    "protocols",
    "control_socket",
    "metrics",
    "weight",
    "mark_mask",
    "tcp_loose",
    "early_drop",
    "leave_timeout_s",
    "state_dir",
    "realtime",
}


def parse_config(data: object, path: Path) -> AgentConfig:
    """Validate parsed YAML `data` (from file `path`) into an AgentConfig."""
    r = _Reader(path)
    top = r.mapping(data, "")
    r.check_keys(top, "", _TOP_KEYS)

    sync = _parse_sync(r, r.get(top, "sync", "", lambda v, k: r.mapping(v, k)))
    node_id = r.get(top, "node_id", "", _node_id(r))
    if isinstance(sync.address, ipaddress.IPv4Address) and node_id != int(sync.address):
        raise r.fail(
            "node_id",
            f"{ipaddress.IPv4Address(node_id)} must be the node's sync address "
            f"({sync.address}) when the sync network is IPv4",
        )

    zones_raw = r.get(top, "zones", "", lambda v, k: v)
    if not isinstance(zones_raw, list) or not zones_raw:
        raise r.fail("zones", "a non-empty list of zones", zones_raw)
    zones = tuple(_parse_zone(r, z, f"zones[{i}]") for i, z in enumerate(zones_raw))
    names = [z.name for z in zones]
    if len(set(names)) != len(names):
        raise r.fail("zones", f"zone names must be unique (have {names})")
    ifaces = [z.interface for z in zones]
    if len(set(ifaces)) != len(ifaces) or sync.interface in ifaces:
        raise r.fail(
            "zones",
            f"every zone and the sync network need their own interface (have {ifaces}, "
            f"sync {sync.interface})",
        )

    cluster = _parse_cluster(r, r.get(top, "cluster", "", lambda v, k: r.mapping(v, k), {}))
    hb = _parse_heartbeat(r, r.get(top, "heartbeat", "", lambda v, k: r.mapping(v, k), {}))
    metrics = _parse_metrics(r, r.get(top, "metrics", "", lambda v, k: r.mapping(v, k), {}))

    protos_raw = r.get(top, "protocols", "", lambda v, k: v, ["tcp", "udp", "icmp", "icmpv6"])
    if not isinstance(protos_raw, list) or not protos_raw:
        raise r.fail("protocols", f"a list of {', '.join(PROTO_NAMES)}", protos_raw)
    protocols = set()
    for i, p in enumerate(protos_raw):
        if p not in PROTO_NAMES:
            raise r.fail(f"protocols[{i}]", f"one of {', '.join(PROTO_NAMES)}", p)
        protocols.add(PROTO_NAMES[p])

    mark_mask = r.get(top, "mark_mask", "", r.integer(0, 0xFFFFFFFF), 0x0000FFFF)
    if not _is_contiguous(mark_mask) or (mark_mask >> _lowest_bit(mark_mask)) < cluster.buckets:
        raise r.fail(
            "mark_mask",
            f"contiguous bits wide enough for bucket+1 up to {cluster.buckets}",
            hex(mark_mask),
        )

    early_drop = _parse_early_drop(
        r, r.get(top, "early_drop", "", lambda v, k: r.mapping(v, k), {})
    )
    if early_drop.enabled and cluster.backend != "nftables":
        raise r.fail("early_drop.enabled", "only the nftables backend has the early chain")

    return AgentConfig(
        path=path,
        node_id=node_id,
        sync=sync,
        zones=zones,
        cluster=cluster,
        heartbeat=hb,
        key_file=r.get(top, "key_file", "", r.abspath),
        protocols=frozenset(protocols),
        control_socket=r.get(
            top, "control_socket", "", r.abspath, Path("/run/availability-manager/control.sock")
        ),
        metrics=metrics,
        weight=r.get(top, "weight", "", r.integer(1, 1000), 1),
        mark_mask=mark_mask,
        tcp_loose=r.get(top, "tcp_loose", "", r.boolean, False),
        early_drop=early_drop,
        leave_timeout_s=float(r.get(top, "leave_timeout_s", "", r.integer(1, 3600), 30)),
        state_dir=r.get(top, "state_dir", "", r.abspath, Path("/var/lib/availability-manager")),
        realtime=r.get(top, "realtime", "", r.boolean, True),
        max_wire_version=r.get(
            top,
            "max_wire_version",
            "",
            r.integer(WIRE_VERSION_MIN, WIRE_VERSION),
            WIRE_VERSION,
        ),
    )


def _node_id(r: _Reader) -> Callable[[Any, str], int]:
    def conv(v: Any, key: str) -> int:
        if isinstance(v, int) and not isinstance(v, bool):
            if not 1 <= v <= MAX_NODE_ID:
                raise r.fail(key, f"an integer from 1 to {MAX_NODE_ID} or an IPv4 address", v)
            return v
        try:
            return int(ipaddress.IPv4Address(str(v)))
        except ValueError:
            raise r.fail(key, "an IPv4 address or an integer", v) from None

    return conv


def _parse_sync(r: _Reader, m: Mapping[str, Any]) -> SyncConfig:
    r.check_keys(m, "sync", {"interface", "address", "transport", "group", "port", "peers"})
    address = r.get(m, "address", "sync", r.address)
    transport = r.get(m, "transport", "sync", r.choice(TRANSPORTS), "multicast")
    default_group = (
        ipaddress.ip_address("239.255.77.1")
        if address.version == 4
        else ipaddress.ip_address("ff02::77:1")
    )
    group = r.get(m, "group", "sync", r.address, default_group)
    if transport == "multicast" and (not group.is_multicast or group.version != address.version):
        raise r.fail("sync.group", f"a multicast IPv{address.version} address", str(group))
    peers_raw = r.get(m, "peers", "sync", lambda v, k: v, [])
    if not isinstance(peers_raw, list):
        raise r.fail("sync.peers", "a list of IP addresses", peers_raw)
    peers = tuple(r.address(p, f"sync.peers[{i}]") for i, p in enumerate(peers_raw))
    if transport == "unicast" and not peers:
        raise r.fail("sync.peers", "at least one peer address when transport is unicast")
    return SyncConfig(
        interface=r.get(m, "interface", "sync", r.interface_name),
        address=address,
        transport=transport,
        group=group if transport == "multicast" else None,
        port=r.get(m, "port", "sync", r.integer(1, 65535), 7788),
        peers=peers,
    )


def _parse_zone(r: _Reader, value: object, key: str) -> Zone:
    m = r.mapping(value, key)
    r.check_keys(m, key, {"name", "interface", "cluster_ips", "cluster_mac"})
    ips_raw = r.get(m, "cluster_ips", key, lambda v, k: v)
    if not isinstance(ips_raw, list) or not ips_raw:
        raise r.fail(f"{key}.cluster_ips", "a non-empty list of addresses with prefix", ips_raw)
    ips = []
    for i, ip in enumerate(ips_raw):
        try:
            if "/" not in str(ip):
                raise ValueError
            ips.append(ipaddress.ip_interface(str(ip)))
        except ValueError:
            raise r.fail(f"{key}.cluster_ips[{i}]", "an address with prefix length", ip) from None
    try:
        return Zone(
            name=r.get(m, "name", key, r.string),
            interface=r.get(m, "interface", key, r.interface_name),
            cluster_ips=tuple(ips),
            cluster_mac=r.get(m, "cluster_mac", key, r.string),
        )
    except ValueError as exc:
        raise r.fail(key, str(exc)) from None


def _parse_early_drop(r: _Reader, m: Mapping[str, Any]) -> EarlyDrop:
    r.check_keys(m, "early_drop", {"enabled", "slow_path"})
    try:
        slow_path = parse_slow_path(m.get("slow_path") or [])
    except ValueError as exc:
        raise r.fail("early_drop", str(exc)) from None
    return EarlyDrop(r.get(m, "enabled", "early_drop", r.boolean, False), slow_path)


def _parse_cluster(r: _Reader, m: Mapping[str, Any]) -> ClusterSettings:
    r.check_keys(m, "cluster", {"buckets", "hash_seed", "hash_fields", "backend"})
    return ClusterSettings(
        buckets=r.get(m, "buckets", "cluster", r.integer(1, 4096), 256),
        hash_seed=r.get(m, "hash_seed", "cluster", r.integer(0, 0xFFFFFFFF), 0x5EEDF17E),
        hash_fields=r.get(m, "hash_fields", "cluster", r.choice(HASH_FIELDS), "addresses+ports"),
        backend=r.get(m, "backend", "cluster", r.choice(BACKENDS[:2]), "nftables"),
    )


def _parse_heartbeat(r: _Reader, m: Mapping[str, Any]) -> HeartbeatConfig:
    r.check_keys(m, "heartbeat", {"interval_ms", "misses", "zone_heartbeats", "handover_delay_ms"})
    return HeartbeatConfig(
        interval_ms=r.get(m, "interval_ms", "heartbeat", r.integer(10, 10000), 50),
        misses=r.get(m, "misses", "heartbeat", r.integer(2, 100), 3),
        zone_heartbeats=r.get(m, "zone_heartbeats", "heartbeat", r.boolean, True),
        handover_delay_ms=r.get(m, "handover_delay_ms", "heartbeat", r.integer(0, 5000), 100),
    )


def _parse_metrics(r: _Reader, m: Mapping[str, Any]) -> MetricsConfig:
    r.check_keys(m, "metrics", {"address", "port", "enabled"})
    return MetricsConfig(
        address=str(r.get(m, "address", "metrics", r.address, ipaddress.ip_address("127.0.0.1"))),
        port=r.get(m, "port", "metrics", r.integer(1, 65535), 9477),
        enabled=r.get(m, "enabled", "metrics", r.boolean, True),
    )


def _is_contiguous(mask: int) -> bool:
    if mask == 0:
        return False
    shifted = mask >> _lowest_bit(mask)
    return shifted & (shifted + 1) == 0


def _lowest_bit(mask: int) -> int:
    return (mask & -mask).bit_length() - 1


def load_config(path: Path) -> AgentConfig:
    """Read and validate the file; ConfigError for anything a person must fix."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"{path}:{where}: not valid YAML: {getattr(exc, 'problem', exc)}"
        ) from None
    return parse_config(data, path)
