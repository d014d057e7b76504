"""The config file: a valid file loads, every kind of mistake names its key."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from availability_manager.availability import Availability, NodeDown
from availability_manager.daemon.config import (
    ConfigError,
    fence_timeout,
    load_config,
    parse_config,
    reload_incompatible,
)

GOOD: dict[str, Any] = {
    "node_id": "198.51.100.11",
    "sync": {"interface": "sync0", "address": "198.51.100.11"},
    "zones": [
        {
            "name": "outside",
            "interface": "out0",
            "cluster_ips": ["192.0.2.1/24"],
            "cluster_mac": "01:00:5e:7f:00:01",
        },
        {
            "name": "inside",
            "interface": "in0",
            "cluster_ips": ["203.0.113.1/24", "2001:db8::1/64"],
            "cluster_mac": "01:00:5e:7f:00:02",
        },
    ],
    "key_file": "/etc/availability-manager/cluster.key",
}


def parse(data: Any) -> Any:
    return parse_config(data, Path("/etc/am.yml"))


def with_change(path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(GOOD)
    cur: Any = data
    keys = path.split(".")
    for k in keys[:-1]:
        cur = cur[int(k)] if isinstance(cur, list) else cur.setdefault(k, {})
    last = keys[-1]
    if value is KeyError:
        del cur[last]
    elif isinstance(cur, list):
        cur[int(last)] = value
    else:
        cur[last] = value
    return data


def test_members_and_limits_are_optional_and_validated() -> None:
    assert parse(GOOD).members is None
    cfg = parse({**GOOD, "members": ["198.51.100.11", "198.51.100.12", 7]})
    assert cfg.members == frozenset({0xC633640B, 0xC633640C, 7})
    assert parse({**GOOD, "limits": {"max_peers": 16}}).limits.max_peers == 16
    for members, says in [
        (["198.51.100.12"], "must include this node's own id (198.51.100.11)"),
        (["198.51.100.11", "198.51.100.11"], "each node id once"),
        ("198.51.100.11", "a non-empty list of node ids"),
        (["198.51.100.11", "x"], "members[1]: expected an IPv4 address"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(says)):
            parse({**GOOD, "members": members})
    with pytest.raises(ConfigError, match=r"limits.max_peers: expected an integer"):
        parse({**GOOD, "limits": {"max_peers": 0}})
    with pytest.raises(ConfigError, match=r"limits.peers: unknown key"):
        parse({**GOOD, "limits": {"peers": 3}})


def test_minimal_config_gets_defaults() -> None:
    cfg = parse(GOOD)
    assert cfg.node_id == 0xC633640B
    assert cfg.cluster.buckets == 256
    assert cfg.heartbeat.interval_ms == 50 and cfg.heartbeat.misses == 3
    assert cfg.sync.transport == "multicast" and str(cfg.sync.group) == "239.255.77.1"
    assert [z.name for z in cfg.zones] == ["outside", "inside"]
    assert cfg.protocols == frozenset({1, 6, 17, 58})


@pytest.mark.parametrize(
    ("path", "value", "names"),
    [
        ("node_id", KeyError, "node_id: is required"),
        ("node_id", "198.51.100.12", "must be the node's sync address"),
        ("node_id", "not-an-ip", "node_id: expected an IPv4 address"),
        ("sync.address", "300.1.1.1", "sync.address: expected an IP address"),
        ("sync.transport", "carrier-pigeon", "sync.transport: expected one of"),
        ("sync.group", "198.51.100.1", "sync.group: expected a multicast IPv4"),
        ("zones.0.cluster_ips", [], "zones[0].cluster_ips: expected a non-empty list"),
        ("zones.0.cluster_ips", ["192.0.2.1"], "zones[0].cluster_ips[0]: expected an address"),
        ("zones.1.cluster_mac", "00:11:22:33:44:55", "zones[1]: zone inside: cluster_mac"),
        ("zones.1.cluster_mac", "01:00:5e:zz:00:02", "is not a MAC"),
        ("zones.1.interface", "out0", "zones: every zone and the sync network"),
        ("zones.1.bogus", 1, "zones[1].bogus: unknown key"),
        ("cluster.buckets", 0, "cluster.buckets: expected an integer from 1 to 4096"),
        ("cluster.hash_fields", "ports", "cluster.hash_fields: expected one of"),
        ("heartbeat.interval_ms", "fast", "heartbeat.interval_ms: expected an integer"),
        ("heartbeat.misses", 1, "heartbeat.misses: expected an integer from 2"),
        ("protocols", ["tcp", "sctp"], "protocols[1]: expected one of"),
        ("key_file", "relative/key", "key_file: expected an absolute path"),
        ("mark_mask", 0x0F, "mark_mask: expected contiguous bits wide enough"),
        ("weight", 0, "weight: expected an integer from 1 to 1000"),
        ("colour", "blue", "colour: unknown key"),
        ("sync_filter.delay_ms", -1, "sync_filter.delay_ms: expected an integer from 0"),
        ("sync_filter.tcp_states", ["open"], "sync_filter.tcp_states[0]: expected one of"),
        ("sync_filter.tcp_states", [], "sync_filter.tcp_states: expected a list"),
        ("sync_filter.ignore", ["10.0.0.1/8"], "sync_filter.ignore[0]: expected a network"),
        ("sync_filter.ignore", "10.0.0.0/8", "sync_filter.ignore: expected a list"),
        ("sync_filter.drop", True, "sync_filter.drop: unknown key"),
    ],
)
def test_each_mistake_names_its_key(path: str, value: Any, names: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(with_change(path, value))
    message = str(err.value)
    assert message.startswith("/etc/am.yml: ")
    assert names in message


def test_unicast_needs_peers() -> None:
    with pytest.raises(ConfigError, match=r"sync\.peers: at least one peer"):
        parse(with_change("sync.transport", "unicast"))
    cfg = parse(
        with_change(
            "sync",
            {
                "interface": "sync0",
                "address": "198.51.100.11",
                "transport": "unicast",
                "peers": ["198.51.100.12"],
            },
        )
    )
    assert [str(p) for p in cfg.sync.peers] == ["198.51.100.12"]


def test_not_a_mapping_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse([1, 2])
    bad = tmp_path / "c.yml"
    bad.write_text("node_id: [unclosed\n")
    with pytest.raises(ConfigError, match=r"c.yml: line \d+ column \d+: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yml")


def test_file_round_trip_and_reload_rules(tmp_path: Path) -> None:
    f = tmp_path / "c.yml"
    f.write_text(yaml.safe_dump(GOOD))
    old = load_config(f)
    assert reload_incompatible(old, load_config(f)) == []
    f.write_text(yaml.safe_dump(with_change("weight", 3)))
    assert reload_incompatible(old, load_config(f)) == []
    f.write_text(yaml.safe_dump(with_change("cluster.buckets", 512)))
    assert reload_incompatible(old, load_config(f)) == ["cluster"]
    # what the Node is built with cannot change under it: a restart applies it
    f.write_text(yaml.safe_dump(with_change("sync_filter", {"delay_ms": 1000})))
    assert reload_incompatible(old, load_config(f)) == ["sync_delay_s"]
    f.write_text(yaml.safe_dump(with_change("protocols", ["tcp"])))
    assert reload_incompatible(old, load_config(f)) == ["protocols"]


def _peer_declares_dead(
    interval: float, misses: int, last_lost: bool, beats: int = 10
) -> tuple[float, float]:
    """Two real detectors exchange heartbeats until the node has sent `beats`
    and stops (its last one lost on the way if `last_lost`): when the node
    sent its last heartbeat, and when the peer declared it dead."""
    node = Availability(1, 1, bytes(8), interval=interval, misses=misses, now=0.0)
    peer = Availability(2, 2, bytes(8), interval=interval, misses=misses, now=0.0)
    now, sent = 0.0, 0
    step = interval / 100
    while sent < beats:
        for hb in node.messages_to_send(now):
            sent += 1
            if not (last_lost and sent == beats):
                peer.receive(hb, 1, now)
        for hb in peer.messages_to_send(now):
            node.receive(hb, 2, now)
        list(peer.iter_events())
        now = round(now + step, 9)
    last = node.last_sent
    assert last is not None
    while not any(isinstance(e, NodeDown) and e.node == 1 for e in peer.iter_events()):
        assert now < last + 20 * interval, "the peer never declared the node dead"
        peer.messages_to_send(now)
        peer.handle_timer(now)
        now = round(now + step, 9)
    return last, now


@pytest.mark.parametrize(("interval_ms", "misses"), [(50, 3), (25, 4), (20, 2), (1000, 10)])
@pytest.mark.parametrize("last_lost", [False, True])
def test_the_fence_expires_before_a_peer_declares_the_node_dead(
    interval_ms: int, misses: int, last_lost: bool
) -> None:
    """The data plane's fence lasts `fence_timeout` after the node's last
    heartbeat (runtime._keep_fence_up). A peer running the real detector must
    not declare the node dead, and take its buckets, before the fence has
    expired; when that last heartbeat was lost on the way, at most a third
    of an interval before (less than the takeover's injection takes)."""
    cfg = parse(with_change("heartbeat", {"interval_ms": interval_ms, "misses": misses}))
    interval = interval_ms / 1000
    last, declared = _peer_declares_dead(interval, misses, last_lost)
    fence_expires = last + fence_timeout(cfg)
    if last_lost:
        assert declared > fence_expires - interval / 3, (declared, fence_expires)
    else:
        assert declared > fence_expires, (declared, fence_expires)
    # and not needlessly early: a loop a whole interval late keeps forwarding
    assert fence_expires >= last + (misses - 0.5) * interval - 1e-9
