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
from ..conntrack_sync import MAX_CACHE_ENTRIES
from ..crypto import MAX_SENDERS
from ..dataplane.base import Zone
from ..dataplane.clusterdev_genl import MAX_SLOW_PATH
from ..dataplane.early_drop import EarlyDrop, parse_slow_path
from ..relevance import SyncFilter
from ..types import BACKENDS, HASH_FIELDS, MAX_NODE_ID, ClusterSettings
from ..wire import WIRE_VERSION, WIRE_VERSION_MIN
from .health_config import HealthConfig, parse_health
from .notify_hooks import HOOK_EVENTS, NotifyHook, executable_problem

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
class LinksConfig:
    """Own-link tracking (daemon/link_hold_down.py): a link that comes back
    counts as up only after hold_down_ms, doubled per flap up to hold_down_max_ms.
    2 s by default: longer than a link takes to forward once its carrier is
    back (autonegotiation is over by then; an RSTP edge port forwards at once),
    so a rejoin does not land on a port that fails again at once, and short
    against the seconds a rolling upgrade or a cable swap takes anyway."""

    hold_down_ms: int = 2000
    hold_down_max_ms: int = 60000


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    address: str = "127.0.0.1"
    port: int = 9477
    enabled: bool = True


@dataclasses.dataclass(frozen=True)
class LimitsConfig:
    """What one peer (buggy, or a key holder inventing ids and entries) can
    make this node keep: peers with state (replay windows and every per-peer
    table), and entries cached per peer. Hitting one is counted
    (drop_too-many-senders, drop_ct-cache-full)."""

    max_peers: int = MAX_SENDERS
    max_cache_entries: int = MAX_CACHE_ENTRIES


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
    links: LinksConfig = dataclasses.field(default_factory=LinksConfig)
    weight: int = 1
    mark_mask: int = 0x0000FFFF
    tcp_loose: bool = False
    early_drop: EarlyDrop = dataclasses.field(default_factory=EarlyDrop)
    sync_filter: SyncFilter = dataclasses.field(default_factory=SyncFilter)
    sync_delay_s: float = 0.0
    fence: bool = True  # the data plane's dead man's switch (dataplane/fence.py)
    leave_timeout_s: float = 30.0
    state_dir: Path = Path("/var/lib/availability-manager")
    realtime: bool = True
    # Below the build's wire version only to behave as an older release during
    # a rolling upgrade (and in its tests); see wire.py.
    max_wire_version: int = WIRE_VERSION
    # The cluster's node ids, this one included (None: not configured, any id
    # sealed with the key is heard). With it, other ids are dropped unopened.
    members: frozenset[int] | None = None
    limits: LimitsConfig = dataclasses.field(default_factory=LimitsConfig)
    # commands run on state changes (notify_hooks.py); reloadable
    notify: tuple[NotifyHook, ...] = ()
    health: HealthConfig = dataclasses.field(default_factory=HealthConfig)


def reload_incompatible(old: AgentConfig, new: AgentConfig) -> list[str]:
    """Keys whose change a SIGHUP cannot apply (they need a drained restart)."""
    fixed = (
        "node_id", "sync", "zones", "cluster", "control_socket", "mark_mask", "metrics",
        "early_drop", "fence", "protocols", "sync_filter", "sync_delay_s", "heartbeat", "tcp_loose",
        "max_wire_version", "members", "limits",
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
    "links",
    "weight",
    "mark_mask",
    "tcp_loose",
    "early_drop",
    "leave_timeout_s",
    "state_dir",
    "realtime",
    "sync_filter",
    "fence",
    "members",
    "limits",
    "notify",
    "health",
}
MAX_HOOKS = 16

# conntrack's TCP states by the names `conntrack -L` prints (lower case)
TCP_STATE_NAMES = {
    "syn_sent": 1, "syn_recv": 2, "established": 3, "fin_wait": 4, "close_wait": 5,
    "last_ack": 6, "time_wait": 7, "close": 8, "syn_sent2": 9,
}  # fmt: skip


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
    links = _parse_links(r, r.get(top, "links", "", lambda v, k: r.mapping(v, k), {}))

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

    members = _parse_members(r, r.get(top, "members", "", lambda v, k: v, None), node_id)
    limits = _parse_limits(r, r.get(top, "limits", "", lambda v, k: r.mapping(v, k), {}))

    early_drop = _parse_early_drop(
        r, r.get(top, "early_drop", "", lambda v, k: r.mapping(v, k), {})
    )
    if len(early_drop.slow_path) > MAX_SLOW_PATH and cluster.backend == "clusterdev":
        raise r.fail(
            "early_drop.slow_path",
            f"at most {MAX_SLOW_PATH} entries with the clusterdev backend",
            len(early_drop.slow_path),
        )

    sync_filter, sync_delay_s = _parse_sync_filter(
        r, r.get(top, "sync_filter", "", lambda v, k: r.mapping(v, k), {})
    )
    notify_raw = r.get(top, "notify", "", lambda v, k: v, [])
    if not isinstance(notify_raw, list) or len(notify_raw) > MAX_HOOKS:
        raise r.fail("notify", f"a list of at most {MAX_HOOKS} hooks", notify_raw)
    notify = tuple(_parse_hook(r, h, f"notify[{i}]") for i, h in enumerate(notify_raw))

    weight = r.get(top, "weight", "", r.integer(1, 1000), 1)
    health = parse_health(
        r, r.get(top, "health", "", lambda v, k: r.mapping(v, k), {}), zones, weight
    )

    return AgentConfig(
        path=path,
        notify=notify,
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
        links=links,
        weight=weight,
        mark_mask=mark_mask,
        tcp_loose=r.get(top, "tcp_loose", "", r.boolean, False),
        early_drop=early_drop,
        sync_filter=sync_filter,
        sync_delay_s=sync_delay_s,
        fence=r.get(top, "fence", "", r.boolean, True),
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
        members=members,
        limits=limits,
        health=health,
    )


def _parse_members(r: _Reader, raw: object, node_id: int) -> frozenset[int] | None:
    """`members`: every node's id (its IPv4 sync address or an integer)."""
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise r.fail("members", "a non-empty list of node ids (IPv4 addresses or integers)", raw)
    conv = _node_id(r)
    ids = [conv(v, f"members[{i}]") for i, v in enumerate(raw)]
    if len(set(ids)) != len(ids):
        raise r.fail("members", "each node id once", raw)
    if node_id not in ids:
        raise r.fail(
            "members", f"must include this node's own id ({ipaddress.IPv4Address(node_id)})"
        )
    return frozenset(ids)


def _parse_limits(r: _Reader, m: Mapping[str, Any]) -> LimitsConfig:
    r.check_keys(m, "limits", {"max_peers", "max_cache_entries"})
    return LimitsConfig(
        max_peers=r.get(m, "max_peers", "limits", r.integer(1, 1 << 20), MAX_SENDERS),
        max_cache_entries=r.get(
            m, "max_cache_entries", "limits", r.integer(1000, 1 << 30), MAX_CACHE_ENTRIES
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


def _parse_hook(r: _Reader, value: object, key: str) -> NotifyHook:
    m = r.mapping(value, key)
    r.check_keys(m, key, {"command", "events", "timeout_s"})
    raw = r.get(m, "command", key, lambda v, k: v)
    argv = [raw] if isinstance(raw, str) else raw
    if (
        not isinstance(argv, list)
        or not argv
        or not all(isinstance(a, str) and a and "\0" not in a for a in argv)
    ):
        raise r.fail(f"{key}.command", "a path, or a list of a path and its arguments", raw)
    exe = r.abspath(argv[0], f"{key}.command")
    problem = executable_problem(exe)
    if problem is not None:
        raise r.fail(f"{key}.command", problem)
    events_raw = r.get(m, "events", key, lambda v, k: v, list(HOOK_EVENTS))
    if not isinstance(events_raw, list) or not events_raw:
        raise r.fail(f"{key}.events", f"a non-empty list of {', '.join(HOOK_EVENTS)}", events_raw)
    events = frozenset(
        r.choice(HOOK_EVENTS)(e, f"{key}.events[{i}]") for i, e in enumerate(events_raw)
    )
    timeout = r.get(m, "timeout_s", key, _positive_seconds(r), 10.0)
    return NotifyHook(command=tuple(argv), events=events, timeout_s=timeout)


def _positive_seconds(r: _Reader) -> Callable[[Any, str], float]:
    def conv(v: Any, key: str) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 3600:
            raise r.fail(key, "a number of seconds above 0, at most 3600", v)
        return float(v)

    return conv


def _parse_early_drop(r: _Reader, m: Mapping[str, Any]) -> EarlyDrop:
    r.check_keys(m, "early_drop", {"enabled", "slow_path"})
    try:
        slow_path = parse_slow_path(m.get("slow_path") or [])
    except ValueError as exc:
        raise r.fail("early_drop", str(exc)) from None
    return EarlyDrop(r.get(m, "enabled", "early_drop", r.boolean, False), slow_path)


def fence_timeout(cfg: AgentConfig) -> float:
    """How long the data plane forwards after the agent's last heartbeat:
    half an interval less than the missed heartbeats after which the peers
    declare this node dead (availability.py: they count from the last
    heartbeat they heard, plus a fifth of an interval). So the node falls
    silent before they take its buckets, and if its last heartbeat was lost
    at most 0.3 intervals after they declared it, less than their takeover
    takes (injection). Counted from the agent's last run instead, the fence
    outlived the peers' patience by up to an interval (duplicates in the
    stalled-agent lab test); a shorter one (misses - 1 intervals) fell
    silent whenever the loop was 50 ms late under load (stalls of every
    stream at drains in bench/failover.py)."""
    return (cfg.heartbeat.misses - 0.5) * cfg.heartbeat.interval_ms / 1000.0


def _parse_sync_filter(r: _Reader, m: Mapping[str, Any]) -> tuple[SyncFilter, float]:
    """`sync_filter`: what is not synced (relevance.py) and the sync delay
    (conntrack_sync.py). Every key optional; none narrows anything."""
    r.check_keys(m, "sync_filter", {"delay_ms", "tcp_states", "ignore"})
    delay_ms = r.get(m, "delay_ms", "sync_filter", r.integer(0, 3_600_000), 0)
    states: frozenset[int] | None = None
    if "tcp_states" in m:
        raw = m["tcp_states"]
        if not isinstance(raw, list) or not raw:
            raise r.fail("sync_filter.tcp_states", f"a list of {', '.join(TCP_STATE_NAMES)}", raw)
        for i, name in enumerate(raw):
            if name not in TCP_STATE_NAMES:
                raise r.fail(
                    f"sync_filter.tcp_states[{i}]", f"one of {', '.join(TCP_STATE_NAMES)}", name
                )
        states = frozenset(TCP_STATE_NAMES[name] for name in raw)
    raw_nets = m.get("ignore", [])
    if not isinstance(raw_nets, list):
        raise r.fail("sync_filter.ignore", "a list of networks (CIDR)", raw_nets)
    nets = []
    for i, net in enumerate(raw_nets):
        try:
            nets.append(ipaddress.ip_network(str(net), strict=True))
        except ValueError as exc:
            raise r.fail(
                f"sync_filter.ignore[{i}]", f"a network in CIDR form ({exc})", net
            ) from None
    return SyncFilter(tcp_states=states, ignore=tuple(nets)), delay_ms / 1000.0


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


def _parse_links(r: _Reader, m: Mapping[str, Any]) -> LinksConfig:
    r.check_keys(m, "links", {"hold_down_ms", "hold_down_max_ms"})
    base = r.get(m, "hold_down_ms", "links", r.integer(0, 3_600_000), 2000)
    top = r.get(m, "hold_down_max_ms", "links", r.integer(0, 3_600_000), max(base, 60000))
    if top < base:
        raise r.fail("links.hold_down_max_ms", f"at least links.hold_down_ms ({base})", top)
    return LinksConfig(hold_down_ms=base, hold_down_max_ms=top)


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
