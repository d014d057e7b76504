"""The rendered nftables ruleset (dataplane/nft_ruleset.py).

Text properties here; `nft -c` (the real parser, no change to the kernel)
in a namespace with the zone interfaces for the lab-marked tests.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator

import pytest
from fwcluster_lab.netns import ns_run
from fwcluster_lab.nslab import inside

from availability_manager.dataplane.base import DataPlaneConfig, Zone
from availability_manager.dataplane.early_drop import EarlyDrop, parse_slow_path
from availability_manager.dataplane.nd_mangle import nd_compensation
from availability_manager.dataplane.nft_batch import BatchRefused, BatchWriter
from availability_manager.dataplane.nft_handover import forwarding_batch, render_forwarding_update
from availability_manager.dataplane.nft_ruleset import (
    render_input_guard,
    render_ruleset,
    render_uninstall,
    validate_config,
)
from availability_manager.node_events import Switch
from availability_manager.types import ClusterSettings

IP = ipaddress.ip_interface


def config(
    settings: ClusterSettings | None = None, mask: int = 0xFFFF, zones: int = 3
) -> DataPlaneConfig:
    all_zones = (
        Zone("inside", "in0", (IP("192.0.2.1/24"), IP("2001:db8:1::1/64")), "03:fc:00:00:00:01"),
        Zone("dmz", "dmz0", (IP("203.0.113.1/24"),), "03:fc:00:00:00:03"),
        Zone(
            "outside", "out0", (IP("198.51.100.1/24"), IP("198.51.100.2/24")), "03:fc:00:00:00:02"
        ),
    )
    return DataPlaneConfig(1, settings or ClusterSettings(), all_zones[:zones], mark_mask=mask)


def chain(text: str, name: str) -> list[str]:
    m = re.search(rf"chain {name} {{\n(.*?)\n  }}", text, re.S)
    assert m, name
    return [line.strip() for line in m.group(1).splitlines()]


def test_only_the_agents_own_tables_are_written() -> None:
    text = render_ruleset(config()) + render_uninstall()
    tables = set(re.findall(r"\btable (\w+) (\w+)", text))
    assert tables == {("inet", "fwcluster"), ("arp", "fwcluster")}
    assert "flush ruleset" not in text
    for line in text.splitlines():
        for verb in ("delete", "flush", "add"):
            if line.startswith(verb):
                assert "fwcluster" in line, line


def test_hash_is_seeded_explicitly_never_symhash() -> None:
    settings = ClusterSettings(buckets=300, hash_seed=0xABCDEF01)
    text = render_ruleset(config(settings))
    assert "symhash" not in text
    hashes = re.findall(r"jhash [^@\n]*?mod (\d+) seed (0x[0-9a-f]+)", text)
    assert hashes and all(h == ("300", "0xabcdef01") for h in hashes)
    assert len(re.findall(r"\bjhash\b", text)) == len(hashes)  # no unseeded jhash


def test_prerouting_order_and_priority() -> None:
    text = render_ruleset(config())
    pre = chain(text, "prerouting")
    assert pre[0] == "type filter hook prerouting priority -150; policy accept;"
    assert pre[1].startswith("ether daddr {") and pre[1].endswith("goto cluster_traffic")
    for mac in ("03:fc:00:00:00:01", "03:fc:00:00:00:02", "03:fc:00:00:00:03"):
        assert mac in pre[1]
    ct = chain(text, "cluster_traffic")
    assert ct[0] == "meta pkttype set host"
    # known connections: unclassified ones pass, classified ones only if owned
    assert ct[1] == "ct state established,related ct mark and 0x0000ffff == 0 accept"
    assert ct[2] == "ct state established,related ct mark and 0x0000ffff @owned_marks accept"
    # a bucket of a pending handoff switch: decided by its time (nft_handover.py)
    assert ct[3] == "ct state established,related jump handover"
    assert ct[4].startswith("ct state established,related") and ct[4].endswith("drop")
    assert ct[5].startswith("ct state invalid") and ct[5].endswith("drop")
    # NEW of an entry that already has a bucket (unreplied): never hashed again
    assert ct[6] == "ct mark and 0x0000ffff != 0 goto marked_new"
    assert ct[7] == "fib daddr type local goto hash_fwd"  # local before the zone map
    assert ct[-1] == "goto hash_fwd"
    assert chain(text, "marked_new") == [
        'ct mark and 0x0000ffff @owned_marks counter name "accepted_new" accept',
        "jump handover",
        'counter name "not_owned" drop',
    ]


def test_new_local_connections_without_a_socket_are_dropped_after_dnat() -> None:
    """A reply to a source-NATed connection reaching a node that does not know
    it must not be answered (port-unreachable) nor confirmed: the input hook
    (after DNAT, so port forwards are not affected) drops classified NEW
    TCP/UDP connections no local socket takes."""
    text = render_ruleset(config(mask=0xFFFF0000))
    inp = chain(text, "input")
    assert inp[0] == "type filter hook input priority 0; policy accept;"
    new = "ct state new ct mark and 0xffff0000 != 0 meta l4proto { tcp, udp }"
    assert inp[1] == f"{new} socket wildcard {{ 0, 1 }} accept"
    assert inp[2] == f'{new} counter name "no_listener" drop'
    assert len(inp) == 3
    assert "counter no_listener {}" in text


def test_the_input_guard_is_the_rulesets_input_chain_alone() -> None:
    """The clusterdev backend's guard must drop exactly what the nftables
    backend's input chain drops, in the agent's table and nowhere else."""
    cfg = config(mask=0xFFFF0000)
    guard = render_input_guard(cfg)
    assert chain(guard, "input") == chain(render_ruleset(cfg), "input")
    assert set(re.findall(r"\btable (\w+) (\w+)", guard)) == {("inet", "fwcluster")}
    assert re.findall(r"^\s*(chain|set|counter) (\w+)", guard, re.M) == [
        ("counter", "no_listener"),
        ("chain", "input"),
    ]


def test_orientation_map_swaps_exactly_later_to_earlier_zone_pairs() -> None:
    ct = chain(render_ruleset(config()), "cluster_traffic")
    [vmap] = [r for r in ct if r.startswith("iif . fib daddr oif vmap")]
    pairs = set(re.findall(r'"(\w+)" \. "(\w+)" : goto hash_rev', vmap))
    assert pairs == {("dmz0", "in0"), ("out0", "in0"), ("out0", "dmz0")}
    single = chain(render_ruleset(config(zones=1)), "cluster_traffic")
    assert not any("vmap" in r for r in single)


def test_reverse_chain_hashes_the_swapped_fields() -> None:
    text = render_ruleset(config())
    fwd = [re.search(r"jhash (.*?) mod", r) for r in chain(text, "hash_fwd")]
    rev = [re.search(r"jhash (.*?) mod", r) for r in chain(text, "hash_rev")]
    fwd_fields = [m.group(1) for m in fwd if m]
    rev_fields = [m.group(1) for m in rev if m]
    assert len(fwd_fields) == len(rev_fields) > 0

    def swap(fields: str) -> str:
        return (
            fields.replace("saddr", "@S")
            .replace("daddr", "saddr")
            .replace("@S", "daddr")
            .replace("sport", "@P")
            .replace("dport", "sport")
            .replace("@P", "dport")
        )

    assert [swap(f) for f in fwd_fields] == rev_fields


def test_each_hash_chain_marks_then_checks_owned_then_drops() -> None:
    hash_fwd = chain(render_ruleset(config()), "hash_fwd")
    marks = [r for r in hash_fwd if "ct mark set jhash" in r]
    checks = [r for r in hash_fwd if "@owned" in r]
    assert len(marks) == len(checks) == 6  # (ports, icmp id, addresses) x (ipv4, ipv6)
    for m, c in zip(marks, checks, strict=True):
        assert hash_fwd.index(c) == hash_fwd.index(m) + 1
        assert m.split("ct mark set ")[1].split(" offset 1")[0] in c
        assert m.endswith("offset 1") and c.endswith("accept")
    assert hash_fwd[-1].endswith("drop")
    # before each not-owned drop, the handover chain decides switching buckets
    drops = [i for i, r in enumerate(hash_fwd) if r.endswith('"not_owned" drop')]
    assert drops and all(hash_fwd[i - 1].endswith("jump handover") for i in drops)


def test_mark_is_shifted_under_the_mask() -> None:
    text = render_ruleset(config(mask=0xFFF0000))
    assert all(r.endswith("offset 1 << 16") for r in re.findall(r"ct mark set .*", text))


def test_addresses_only_setting_hashes_no_ports() -> None:
    text = render_ruleset(config(ClusterSettings(hash_fields="addresses")))
    assert "sport" not in text and " id " not in text
    assert "jhash ip saddr . ip daddr mod" in text


def test_arp_mangling_for_every_ipv4_cluster_ip() -> None:
    text = render_ruleset(config())
    arp = chain(text, "output")
    assert arp[0] == "type filter hook output priority 0; policy accept;"
    assert set(arp[1:]) == {
        "arp saddr ip 192.0.2.1 arp saddr ether set 03:fc:00:00:00:01",
        "arp saddr ip 203.0.113.1 arp saddr ether set 03:fc:00:00:00:03",
        "arp saddr ip 198.51.100.1 arp saddr ether set 03:fc:00:00:00:02",
        "arp saddr ip 198.51.100.2 arp saddr ether set 03:fc:00:00:00:02",
    }


def test_the_ruleset_holds_the_owned_buckets_it_is_given() -> None:
    assert "elements = { 2, 3 }" in render_ruleset(config(), {3, 2})


def test_invalid_configs_are_refused() -> None:
    with pytest.raises(ValueError):
        validate_config(config(ClusterSettings(buckets=300), mask=0xFF))
    with pytest.raises(ValueError):
        validate_config(config(mask=0xF0F0))
    dup = config()
    dup = DataPlaneConfig(
        1,
        dup.settings,
        (dup.zones[0], Zone("other", "in0", dup.zones[1].cluster_ips, "03:fc:00:00:00:09")),
    )
    with pytest.raises(ValueError):
        validate_config(dup)


# --- the real nft parser -------------------------------------------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0 or not shutil.which("nft"):
        pytest.skip("needs root and nft")
    name = f"fwdp-{os.getpid()}-rs"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for ifname in ("in0", "dmz0", "out0"):
            subprocess.run(
                [
                    "ip",
                    "-n",
                    name,
                    "link",
                    "add",
                    ifname,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    ifname + "p",
                ],
                check=True,
            )
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def nft_check(ns: str, script: str) -> subprocess.CompletedProcess[str]:
    return ns_run(ns, ["nft", "-c", "-f", "-"], stdin=script, check=False)


@pytest.mark.lab
@pytest.mark.parametrize(
    ("settings", "mask"),
    [
        (ClusterSettings(), 0xFFFF),
        (ClusterSettings(buckets=4096, hash_fields="addresses"), 0xFFFF0000),
        (ClusterSettings(buckets=1, hash_seed=0), 0x1),
    ],
)
def test_nft_accepts_the_rendered_ruleset(netns: str, settings: ClusterSettings, mask: int) -> None:
    macs = {"in0": "52:99:0e:21:8b:8f", "dmz0": "52:99:0e:21:8b:90", "out0": "52:99:0e:21:8b:91"}
    script = render_ruleset(config(settings, mask), range(0, settings.buckets, 2), macs)
    assert "nd-neighbor-advert" in script
    done = nft_check(netns, script)
    assert done.returncode == 0, done.stderr
    # The parser is not lenient: a broken script is refused.
    broken = render_ruleset(config(settings, mask)).replace("goto hash_fwd", "goto no_such_chain")
    assert nft_check(netns, broken).returncode != 0


@pytest.mark.lab
@pytest.mark.parametrize("hash_fields", ["addresses+ports", "addresses"])
def test_nft_accepts_the_early_chain(netns: str, hash_fields: str) -> None:
    slow = parse_slow_path(
        [{"network": "203.0.113.100"}, {"network": "203.0.113.0/24", "protocol": "icmp"},
         {"network": "2001:db8::/64", "protocol": "udp",
          "ports": "69"}, {"protocol": "tcp", "ports": "30000-30100"}]
    )  # fmt: skip
    cfg = dataclasses.replace(
        config(ClusterSettings(hash_fields=hash_fields)), early_drop=EarlyDrop(True, slow)
    )
    done = nft_check(netns, render_ruleset(cfg, range(0, 256, 2)))
    assert done.returncode == 0, done.stderr


@pytest.mark.lab
def test_nft_accepts_the_zone_heartbeat_filter(netns: str) -> None:
    cfg = dataclasses.replace(config(), zone_heartbeat_port=7789)
    done = nft_check(netns, render_ruleset(cfg, range(0, 256, 2)))
    assert done.returncode == 0, done.stderr
    done = nft_check(netns, render_input_guard(cfg))
    assert done.returncode == 0, done.stderr


# --- IPv6 neighbour discovery mangling -------------------------------------------------


def _icmpv6_checksum(src: bytes, dst: bytes, message: bytes) -> int:
    pseudo = src + dst + len(message).to_bytes(4, "big") + b"\0\0\0\x3a"
    data = pseudo + message
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def test_nd_rewrite_keeps_the_icmpv6_checksum_valid() -> None:
    src = ipaddress.ip_address("fe80::1").packed
    dst = ipaddress.ip_address("2001:db8:1::10").packed
    target = ipaddress.ip_address("2001:db8:1::1").packed
    for own in ("52:99:0e:21:8b:8f", "00:00:00:00:00:00", "ff:ff:ff:ff:ff:fe"):
        for cluster in ("03:fc:00:00:00:01", "01:00:5e:7f:ff:ff"):
            # A neighbour advertisement as Linux sends it: flags S|O, reserved zero,
            # target, target link-layer address option with the interface's MAC.
            na = bytearray(
                b"\x88\x00\0\0\x60\0\0\0"
                + target
                + b"\x02\x01"
                + bytes.fromhex(own.replace(":", ""))
            )
            struct.pack_into("!H", na, 2, _icmpv6_checksum(src, dst, bytes(na)))
            # What the rule writes: the cluster MAC at byte 26, compensation at byte 6.
            na[26:32] = bytes.fromhex(cluster.replace(":", ""))
            struct.pack_into("!H", na, 6, nd_compensation(own, cluster))
            assert _icmpv6_checksum(src, dst, bytes(na)) in (0, 0xFFFF), (own, cluster)


def test_nd_rules_only_for_ipv6_cluster_ips_with_known_interface_mac() -> None:
    cfg = config()
    macs = {"in0": "52:99:0e:21:8b:8f", "out0": "52:99:0e:21:8b:90"}
    text = render_ruleset(cfg, (), macs)
    nd = chain(text, "nd_output")
    assert nd[0] == "type filter hook output priority 0; policy accept;"
    target = "0x" + ipaddress.ip_address("2001:db8:1::1").packed.hex()
    comp = f"{nd_compensation('52:99:0e:21:8b:8f', '03:fc:00:00:00:01'):#06x}"
    assert nd[1:] == [
        f'oif "in0" icmpv6 type nd-neighbor-advert @th,64,128 {target} @th,192,8 2 '
        f"@th,208,48 set 0x03fc00000001 @th,48,16 set {comp}",
        'oif "in0" icmpv6 type nd-neighbor-solicit ip6 saddr 2001:db8:1::1 @th,192,8 1 '
        f"@th,208,48 set 0x03fc00000001 @th,48,16 set {comp}",
    ]
    assert "nd_output" not in render_ruleset(cfg)  # no interface MACs: no ND rules


def test_zone_heartbeats_are_taken_only_from_the_link() -> None:
    """Issue 18.5: the zone heartbeat port on the customer-facing interfaces
    takes IPv4 to the group, TTL 255, from the zones' subnets; the rest is
    dropped and counted before it reaches the agent's socket."""
    cfg = dataclasses.replace(config(), zone_heartbeat_port=7789)
    inp = chain(render_ruleset(cfg), "input")
    match = 'iifname { "in0", "dmz0", "out0" } udp dport 7789'
    drop = 'counter name "zone_heartbeat_refused" drop'
    assert inp[1:4] == [
        f"{match} meta nfproto ipv6 {drop}",
        f"{match} ip daddr != 239.255.77.2 {drop}",
        f"{match} ip ttl != 255 {drop}",
    ]
    assert f'iifname "in0" udp dport 7789 ip saddr != {{ 192.0.2.0/24 }} {drop}' in inp
    assert f'iifname "out0" udp dport 7789 ip saddr != {{ 198.51.100.0/24 }} {drop}' in inp
    # before the no-listener rules, which would accept the heartbeat socket's traffic
    assert inp.index(f"{match} ip ttl != 255 {drop}") < len(inp) - 2
    guard = render_input_guard(cfg)
    assert "counter zone_heartbeat_refused {}" in guard
    assert chain(guard, "input") == inp
    assert not any("7789" in r for r in chain(render_ruleset(config()), "input"))


def test_timed_switches_render_as_one_json_transaction() -> None:
    """The handoff's switches: per switch one rule of the handover chain that
    matches the buckets' marks and compares `meta time` with the instant."""

    cfg = config()
    stop = Switch(buckets=frozenset({3, 4}), at=1796540000.0, start=False)
    start = Switch(buckets=frozenset({7}), at=1796540001.0, start=True)
    ops = json.loads(render_forwarding_update(cfg, {1, 2}, (stop, start)))["nftables"]
    rules = [op["add"]["rule"] for op in ops if "add" in op and "rule" in op["add"]]
    assert [r["chain"] for r in rules] == ["handover", "handover"]
    shift = (cfg.mark_mask & -cfg.mark_mask).bit_length() - 1
    first, second = (r["expr"] for r in rules)
    assert first[0]["match"]["right"] == {"set": [4 << shift, 5 << shift]}
    assert first[1]["match"] == {
        "op": "<",
        "left": {"meta": {"key": "time"}},
        "right": 1796540000,  # whole seconds: nft multiplies an integer by 10^9
    }
    assert second[1]["match"]["op"] == ">=" and second[1]["match"]["right"] == 1796540001
    elements = {
        op["add"]["element"]["name"]: op["add"]["element"]["elem"]
        for op in ops
        if "add" in op and "element" in op["add"]
    }
    assert elements == {
        "owned": [1, 2],
        "owned_marks": [2 << shift, 3 << shift],
        "switching": [3, 4, 7],
    }
    with pytest.raises(ValueError):  # nft cannot express a fraction of a second
        render_forwarding_update(cfg, {1}, (Switch(buckets=frozenset({3}), at=5.5, start=True),))
    # no switch: the chain and the switching set are emptied
    ops = json.loads(render_forwarding_update(cfg, {1}))["nftables"]
    assert {"flush": {"chain": {"family": "inet", "table": "fwcluster", "name": "handover"}}} in ops
    assert not [op for op in ops if "add" in op and "rule" in op["add"]]


@pytest.mark.lab
def test_the_kernel_takes_the_switch_instant_in_whole_seconds(netns: str) -> None:
    """Applied for real: the handover chain's rule compares `meta time` with
    exactly the instant rendered (read back as nanoseconds from the kernel's
    view, `nft -j`'s date string), and clearing the switches empties it."""

    cfg = config()
    applied = ns_run(netns, ["nft", "-f", "-"], stdin=render_ruleset(cfg, {1, 2}), check=False)
    assert applied.returncode == 0, applied.stderr
    at = 1796540000.0  # 2026-12-06 ...: a whole second
    switch = Switch(buckets=frozenset({3}), at=at, start=True)
    update = render_forwarding_update(cfg, {1, 2}, (switch,))
    done = ns_run(netns, ["nft", "-j", "-f", "-"], stdin=update, check=False)
    assert done.returncode == 0, done.stderr
    listed = ns_run(netns, ["nft", "-j", "list", "chain", "inet", "fwcluster", "handover"])
    rules = [i["rule"] for i in json.loads(listed.stdout)["nftables"] if "rule" in i]
    assert len(rules) == 1
    (time_match,) = [
        e["match"] for e in rules[0]["expr"] if "match" in e and "meta" in e["match"]["left"]
    ]
    assert time_match["op"] == ">="
    # nft prints the instant as a date in the local time zone
    shown = datetime.datetime.strptime(time_match["right"], "%Y-%m-%d %H:%M:%S")
    assert shown.timestamp() == at
    cleared = ns_run(
        netns, ["nft", "-j", "-f", "-"], stdin=render_forwarding_update(cfg, {1, 2}), check=False
    )
    assert cleared.returncode == 0, cleared.stderr
    listed = ns_run(netns, ["nft", "-j", "list", "chain", "inet", "fwcluster", "handover"])
    assert not [i for i in json.loads(listed.stdout)["nftables"] if "rule" in i]


def _forwarding_state(netns: str) -> dict[str, object]:
    """What a forwarding update leaves in the kernel, as nft reads it back:
    the elements of the three forwarding sets and the handover chain's rules,
    a named set's reference replaced by its elements (the netlink batch
    uses slot sets, nft anonymous ones: the same rule to the packet)."""
    listed = ns_run(netns, ["nft", "-j", "list", "table", "inet", "fwcluster"])
    items = json.loads(listed.stdout)["nftables"]
    sets = {i["set"]["name"]: sorted(i["set"].get("elem", [])) for i in items if "set" in i}
    rules = []
    for item in items:
        rule = item.get("rule")
        if not rule or rule["chain"] != "handover":
            continue
        exprs = []
        for e in rule["expr"]:
            match = e.get("match", {})
            if "&" in match.get("left", {}):  # the marks: a set, one value or @slot
                right = match["right"]
                if isinstance(right, str) and right.startswith("@"):
                    right = sets[right[1:]]
                elif isinstance(right, dict):
                    right = right["set"]
                elif isinstance(right, int):
                    right = [right]
                e = {"match": {**match, "op": "==", "right": {"set": sorted(right)}}}
            exprs.append(e)
        rules.append(json.dumps(exprs, sort_keys=True))
    return {
        "owned": sets["owned"],
        "owned_marks": sets["owned_marks"],
        "switching": sets["switching"],
        "handover": sorted(rules),
    }


@pytest.mark.lab
def test_the_netlink_batch_programs_what_nft_programs(netns: str) -> None:
    """The forwarding update without an `nft` process (nft_batch.py) leaves
    the kernel as the `nft -j` transaction does: owned sets, switching set
    and one rule per switch instant and direction; a later update without
    switches clears them."""
    cfg = config()
    applied = ns_run(netns, ["nft", "-f", "-"], stdin=render_ruleset(cfg, {1, 2}), check=False)
    assert applied.returncode == 0, applied.stderr
    at = 1796540000.0
    switches = (
        Switch(buckets=frozenset({3, 4}), at=at, start=False),
        Switch(buckets=frozenset({9}), at=at, start=False),  # same rule as the first
        Switch(buckets=frozenset({7}), at=at + 1, start=True),
    )
    owned = {1, 2, 200}
    update = render_forwarding_update(cfg, owned, switches)
    assert ns_run(netns, ["nft", "-j", "-f", "-"], stdin=update, check=False).returncode == 0
    by_nft = _forwarding_state(netns)
    assert len(by_nft["handover"]) == 3  # type: ignore[arg-type]
    cleared = render_forwarding_update(cfg, set())
    assert ns_run(netns, ["nft", "-j", "-f", "-"], stdin=cleared, check=False).returncode == 0

    with inside(netns):
        writer = BatchWriter()
    try:
        batch = writer.batch("fwcluster")
        forwarding_batch(batch, cfg, owned, switches)
        writer.apply(batch)
        by_batch = _forwarding_state(netns)
        batch = writer.batch("fwcluster")
        forwarding_batch(batch, cfg, {5})
        writer.apply(batch)
        after = _forwarding_state(netns)
    finally:
        writer.close()
    # two switches of one instant and direction share a rule in the batch
    assert len(by_batch["handover"]) == 2  # type: ignore[arg-type]
    merged = dict(by_nft)
    merged["handover"] = sorted(
        json.dumps(json.loads(r), sort_keys=True)
        for r in by_batch["handover"]  # type: ignore[attr-defined]
    )
    assert by_batch["owned"] == by_nft["owned"] == [1, 2, 200]
    assert by_batch["owned_marks"] == by_nft["owned_marks"]
    assert by_batch["switching"] == by_nft["switching"] == [3, 4, 7, 9]
    # the stop rule of the batch holds both stop switches' marks
    stops = [json.loads(r) for r in by_batch["handover"] if '"<"' in r]  # type: ignore[attr-defined]
    nft_stops = [json.loads(r) for r in by_nft["handover"] if '"<"' in r]  # type: ignore[attr-defined]
    assert len(stops) == 1 and len(nft_stops) == 2
    marks = sorted(m for r in nft_stops for m in r[0]["match"]["right"]["set"])
    assert stops[0][0]["match"]["right"]["set"] == marks
    assert stops[0][1:] == nft_stops[0][1:]  # time, counter, accept: the same expressions
    starts = [r for r in by_batch["handover"] if '">="' in r]  # type: ignore[attr-defined]
    assert starts == [r for r in by_nft["handover"] if '">="' in r]  # type: ignore[attr-defined]
    assert after == {"owned": [5], "owned_marks": [6], "switching": [], "handover": []}


@pytest.mark.lab
def test_a_refused_batch_changes_nothing(netns: str) -> None:
    cfg = config()
    applied = ns_run(netns, ["nft", "-f", "-"], stdin=render_ruleset(cfg, {1, 2}), check=False)
    assert applied.returncode == 0, applied.stderr
    with inside(netns):
        writer = BatchWriter()
    try:
        batch = writer.batch("fwcluster")
        forwarding_batch(batch, cfg, {9})
        batch.flush_set("no_such_set")
        with pytest.raises(BatchRefused, match="ENOENT"):
            writer.apply(batch)
        assert _forwarding_state(netns)["owned"] == [1, 2]  # all or nothing
        batch = writer.batch("fwcluster")  # the socket still works
        forwarding_batch(batch, cfg, {9})
        writer.apply(batch)
        assert _forwarding_state(netns)["owned"] == [9]
    finally:
        writer.close()
