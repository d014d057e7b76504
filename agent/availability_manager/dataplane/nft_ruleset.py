"""Render the agent's own nftables tables from a DataPlaneConfig.

Only `table inet fwcluster` and `table arp fwcluster` are ever written; the
operator's policy lives in other tables beside them. An `accept` in our
chains only ends our chain (later base chains still see the packet); a
`drop` is final. So the tables have no opinion on traffic that is not sent
to a cluster MAC, and on cluster traffic they only decide "is this node the
one that handles this connection".

With early_drop enabled, a chain at prerouting -300 (after defragmentation,
before conntrack) first drops the foreign packets whose owner the cluster
chain would find by the same hash (early_drop.py, _early_chains).

Packet path (prerouting, priority -150: after conntrack, before DNAT):

    ether daddr in cluster MACs -> cluster_traffic, else no opinion
    cluster_traffic: pkttype := host;
                     established/related, not classified (mark 0): accept;
                     established/related of an owned bucket: accept; other: drop;
                     invalid: drop;
                     NEW of an entry with a bucket (unreplied): by that bucket;
                     other NEW: orient, then hash_fwd / hash_rev
Input path (priority 0, after DNAT): zone heartbeats that did not come from
the link are dropped (_zone_heartbeat_rules); a classified NEW connection to
this node with no socket to take it is dropped (see _input_rules).
    hash_*:          mark := bucket + 1 under mark_mask; owned: accept; drop

Known connections are handled by the owner of their bucket, not by whoever
holds an entry: during a handover the taker already holds the injected
entries while the giver still forwards, and both forwarding would deliver
every packet twice. The agent hands a bucket to the data plane only when no
other live node claims it, so exactly one node forwards each connection.

The orientation rule and the mark layout are explained in docs/dataplane.md;
bucket.py is the Python twin of the hash expressions rendered here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .base import DataPlaneConfig
from .bucket import mask_shift
from .early_drop import PRIORITY as EARLY_PRIORITY
from .fence import FENCE_OUT_CHAIN, FENCE_SET, fence_out_rule
from .nd_mangle import render_nd_rules

TABLE = "fwcluster"
OWNED_SET = "owned"
OWNED_MARKS_SET = "owned_marks"  # the same buckets as conntrack marks (bucket + 1, shifted)
# Timed switches of a make-before-break handoff (nft_handover.py): the chain
# holding their rules, and every bucket in one (the early chain passes them on).
HANDOVER_CHAIN = "handover"
SWITCHING_SET = "switching"
# NEW packets of an entry that already names a bucket (_marked_new_rules).
MARKED_NEW_CHAIN = "marked_new"
# Named sets for the handover chain's rules (nft_handover.forwarding_batch):
# one per switch instant and direction pending at once.
SWITCH_SLOTS = 8


def switch_slot(slot: int) -> str:
    return f"switch_{slot}"


COUNTERS = (
    "accepted_new", "not_owned", "invalid", "not_owned_established", "no_listener", "fenced",
    "zone_heartbeat_refused",
)  # fmt: skip
# The early chain's (only with early_drop.enabled): dropped as foreign before
# conntrack; passed on because a slow_path entry matched, or because the
# packet is of no class the early chain decides (local destination, no pair
# of zones, another protocol).
EARLY_COUNTERS = ("early_not_owned", "early_slow_path", "early_undecided")

_PORT_PROTOS = "{ tcp, udp, dccp, sctp, udplite }"


def validate_config(config: DataPlaneConfig) -> None:
    """Reject what the ruleset cannot express, before rendering anything."""
    shift = mask_shift(config.mark_mask)
    if config.settings.buckets > config.mark_mask >> shift:
        raise ValueError(
            f"mark mask {config.mark_mask:#x} cannot hold bucket+1 up to {config.settings.buckets}"
        )
    if not config.zones:
        raise ValueError("at least one zone is required")
    names = [z.name for z in config.zones]
    ifaces = [z.interface for z in config.zones]
    if len(set(names)) != len(names) or len(set(ifaces)) != len(ifaces):
        raise ValueError("zone names and zone interfaces must be unique")
    for z in config.zones:
        if not all(c.isalnum() or c in "-_." for c in z.interface):
            raise ValueError(f"zone {z.name}: interface {z.interface!r} has unsupported characters")


def _hash(config: DataPlaneConfig, fields: str) -> str:
    s = config.settings
    return f"jhash {fields} mod {s.buckets} seed {s.hash_seed:#010x}"


def _mark_stmt(config: DataPlaneConfig, fields: str) -> str:
    shift = mask_shift(config.mark_mask)
    shifted = f" << {shift}" if shift else ""
    return f"ct mark set {_hash(config, fields)} offset 1{shifted}"


def _classify(config: DataPlaneConfig, match: str, fields: str) -> list[str]:
    """Two rules: record the bucket in the conntrack mark, accept if owned.
    The hash is computed twice so that `owned` holds plain bucket numbers."""
    prefix = f"{match} " if match else ""
    return [
        f"{prefix}{_mark_stmt(config, fields)}",
        f'{prefix}{_hash(config, fields)} @{OWNED_SET} counter name "accepted_new" accept',
    ]


def _fields(fam: str, extra: tuple[str, ...], forward: bool) -> str:
    """The hashed operands, ordered by zone: hash_rev swaps the addresses and
    a pair of ports, so that a reply hashes like its original."""
    a, b = (f"{fam} saddr", f"{fam} daddr") if forward else (f"{fam} daddr", f"{fam} saddr")
    parts = [a, b]
    if len(extra) == 2:
        parts += list(extra) if forward else [extra[1], extra[0]]
    else:
        parts += list(extra)
    return " . ".join(parts)


def _own_tuple_hashes(config: DataPlaneConfig, forward: bool) -> list[tuple[str, str]]:
    """(match, fields) of the packets hashed on their own tuple: port
    protocols, and ICMP echo (by its id with addresses+ports). In this order
    in hash_fwd/hash_rev; the early chain decides exactly these."""
    if config.settings.hash_fields == "addresses+ports":
        ports = ("th sport", "th dport")
        return [
            (f"meta l4proto {_PORT_PROTOS}", _fields("ip", ports, forward)),
            (f"meta l4proto {_PORT_PROTOS}", _fields("ip6", ports, forward)),
            # `icmp id` makes nft add `icmp type { echo-request, echo-reply }`
            ("", _fields("ip", ("icmp id",), forward)),
            ("", _fields("ip6", ("icmpv6 id",), forward)),
        ]
    return [
        (f"meta l4proto {_PORT_PROTOS}", _fields("ip", (), forward)),
        (f"meta l4proto {_PORT_PROTOS}", _fields("ip6", (), forward)),
        ("icmp type { echo-request, echo-reply }", _fields("ip", (), forward)),
        ("icmpv6 type { echo-request, echo-reply }", _fields("ip6", (), forward)),
    ]


_OWN_TUPLE_MATCH = (
    f"meta l4proto {_PORT_PROTOS}",
    "icmp type { echo-request, echo-reply }",
    "icmpv6 type { echo-request, echo-reply }",
)


def _hash_chain(config: DataPlaneConfig, forward: bool) -> list[str]:
    """Rules of hash_fwd (forward=True) or hash_rev: addresses, then ports or
    the ICMP echo id when settings.hash_fields asks for them."""
    rules: list[str] = []
    if config.settings.hash_fields == "addresses+ports":
        for match, fields in _own_tuple_hashes(config, forward):
            rules += _classify(config, match, fields)
        # A packet whose bucket was computed above but is not owned must not
        # be re-classified by the address rules: stop it here.
        # (a bucket of a pending handoff switch is decided by its time first)
        for m in _OWN_TUPLE_MATCH:
            rules += [f"{m} jump {HANDOVER_CHAIN}", f'{m} counter name "not_owned" drop']
    for fam in ("ip", "ip6"):
        rules += _classify(config, "", _fields(fam, (), forward))
    rules.append(f"jump {HANDOVER_CHAIN}")
    rules.append('counter name "not_owned" drop')
    return rules


def _early_hash_chain(config: DataPlaneConfig, forward: bool) -> list[str]:
    """early_fwd / early_rev: the hash of hash_fwd / hash_rev for the packets
    hashed on their own tuple; owned: pass on (to conntrack and the cluster
    chain), not owned: drop here. Anything else passes (the slow path)."""
    rules = [
        " ".join(filter(None, (m, _hash(config, fields), f"@{owned} return")))
        for m, fields in _own_tuple_hashes(config, forward)
        for owned in (OWNED_SET, SWITCHING_SET)
    ]
    rules += [f'{m} counter name "early_not_owned" drop' for m in _OWN_TUPLE_MATCH]
    rules.append('counter name "early_undecided"')
    return rules


def _early_chains(config: DataPlaneConfig) -> list[str]:
    """The early chain (early_drop.py): prerouting -300, before conntrack.

    One FIB lookup per packet: `fib daddr oif` is 0 for a local destination
    (the kernel's nft_fib4/nft_fib6 store no interface for RTN_LOCAL /
    RTF_LOCAL routes) and for no route, and the input interface for
    loopback and IPv6 neighbour discovery, none of which is a pair of two
    different zones: all of them pass as undecided, with no separate
    `fib daddr type local` lookup (measured: docs/benchmarks.md)."""
    pairs = [
        f'"{a.interface}" . "{b.interface}" : goto {"early_fwd" if i < j else "early_rev"}'
        for i, a in enumerate(config.zones)
        for j, b in enumerate(config.zones)
        if i != j
    ]
    out = [
        "  chain early {",
        f"    type filter hook prerouting priority {EARLY_PRIORITY}; policy accept;",
        f"    ether daddr {_macs(config)} goto early_cluster",
        "  }",
        "  chain early_cluster {",
    ]
    if pairs:
        out.append("    iif . fib daddr oif vmap { " + ", ".join(pairs) + " }")
    out.append('    counter name "early_undecided"')
    out.append("  }")
    for chain, forward in (("early_fwd", True), ("early_rev", False)):
        out.append(f"  chain {chain} {{")
        for entry in config.early_drop.slow_path:
            out += [f'    {m} counter name "early_slow_path" return' for m in entry.rules()]
        out += [f"    {r}" for r in _early_hash_chain(config, forward)]
        out.append("  }")
    return out


def _orientation_map(config: DataPlaneConfig) -> str | None:
    """Zone pairs whose packets are hashed swapped: from a later zone to an
    earlier one. Every other case is hashed as-is (see bucket.is_forward)."""
    entries = []
    for i, earlier in enumerate(config.zones):
        for later in config.zones[i + 1 :]:
            entries.append(f'"{later.interface}" . "{earlier.interface}" : goto hash_rev')
    if not entries:
        return None
    return "iif . fib daddr oif vmap { " + ", ".join(entries) + " }"


def _input_rules(config: DataPlaneConfig) -> list[str]:
    """A classified NEW connection delivered to this node (not forwarded, and
    not port-forwarded: DNAT has happened by now) with no local socket that
    would take it is dropped silently, on every node.

    Why: a reply to a source-NATed connection (SNAT or masquerade to a
    cluster IP) reaches every node. The owner knows the connection; on any
    other node the reply is NEW (UDP; TCP and ICMP replies are INVALID
    there), hashed on its translated tuple into an unrelated bucket, and the
    owner of that bucket takes it for a connection to itself: it would answer
    with a port-unreachable (or, with tcp_loose, a reset) and keep a
    conntrack entry that collides with the synced one at the next failover.
    Dropped before the input hook ends, the entry is never confirmed. The
    cost: a closed port of a cluster IP is silent instead of refused.
    nft's socket lookup knows TCP and UDP only; other protocols pass."""
    mask = f"{config.mark_mask:#010x}"
    new = f"ct state new ct mark and {mask} != 0 meta l4proto {{ tcp, udp }}"
    return [
        *_zone_heartbeat_rules(config),
        f"{new} socket wildcard {{ 0, 1 }} accept",
        f'{new} counter name "no_listener" drop',
    ]


def _marked_new_rules(config: DataPlaneConfig) -> list[str]:
    """A NEW packet whose conntrack entry already carries a bucket keeps that
    bucket: it is not hashed again. conntrack calls every packet of a
    connection NEW until the first reply (a UDP flow, a TFTP transfer's
    first blocks), and an entry injected at a takeover carries the bucket
    its owner gave it, which is not always the hash of its own tuple: a
    helper's data connection inherits its master's bucket. Hashed again, it
    would move to another bucket on the taker: forwarded twice while the
    giver still forwards it, or by nobody (a TFTP transfer stalled, found by
    lab/tests/test_stateful_helpers.py's drain before the first block). The
    clusterdev hook decides the same (kmod/clusterdev/clusterdev_hook.c)."""
    mask = f"{config.mark_mask:#010x}"
    return [
        f'ct mark and {mask} @{OWNED_MARKS_SET} counter name "accepted_new" accept',
        f"jump {HANDOVER_CHAIN}",
        'counter name "not_owned" drop',
    ]


def _zone_heartbeat_rules(config: DataPlaneConfig) -> list[str]:
    """The zone heartbeat port on the customer-facing zone interfaces takes
    only what a peer on the link sends: IPv4 to the heartbeat group with TTL
    255 (a router on the way would have lowered it) from an address of the
    zone's IPv4 subnets. The socket checks group and TTL again
    (transport.py); here the kernel drops the rest before it wakes the agent."""
    port = config.zone_heartbeat_port
    if port is None:
        return []
    ifaces = ", ".join(f'"{z.interface}"' for z in config.zones)
    match = f"iifname {{ {ifaces} }} udp dport {port}"
    drop = 'counter name "zone_heartbeat_refused" drop'
    rules = [
        f"{match} meta nfproto ipv6 {drop}",
        f"{match} ip daddr != {config.zone_heartbeat_group} {drop}",
        f"{match} ip ttl != 255 {drop}",
    ]
    for z in config.zones:
        nets = ", ".join(sorted({str(ip.network) for ip in z.cluster_ips if ip.version == 4}))
        if nets:
            rules.append(
                f'iifname "{z.interface}" udp dport {port} ip saddr != {{ {nets} }} {drop}'
            )
    return rules


def _macs(config: DataPlaneConfig) -> str:
    macs = sorted({z.cluster_mac.lower() for z in config.zones})
    return "{ " + ", ".join(macs) + " }"


def render_ruleset(
    config: DataPlaneConfig,
    owned: Iterable[int] = (),
    interface_macs: Mapping[str, str] | None = None,
) -> str:
    """An `nft -f` script that (re)creates both tables in one transaction.
    Re-running it replaces them atomically (create-if-missing, delete, add).
    `interface_macs` (zone interface -> its own MAC) enables the IPv6
    neighbour discovery rules (nd_mangle.py) for zones with IPv6 cluster IPs."""
    validate_config(config)
    elements = render_elements(config, owned)
    out: list[str] = []
    out.append(f"table inet {TABLE} {{}}")
    out.append(f"delete table inet {TABLE}")
    out.append(f"table inet {TABLE} {{")
    early = config.early_drop.enabled
    for name in COUNTERS + (EARLY_COUNTERS if early else ()):
        out.append(f"  counter {name} {{}}")
    out.append(f"  set {OWNED_SET} {{")
    out.append(f"    typeof numgen inc mod {config.settings.buckets}")
    if elements:
        out.append(f"    elements = {{ {elements} }}")
    out.append("  }")
    out.append(f"  set {OWNED_MARKS_SET} {{")
    out.append("    typeof ct mark")
    marks = render_mark_elements(config, owned)
    if marks:
        out.append(f"    elements = {{ {marks} }}")
    out.append("  }")
    if config.fence_timeout_s is not None:
        # fence.py: refreshed by the running agent's heartbeats, empty once it stops
        out.append(f"  set {FENCE_SET} {{ type nf_proto; flags dynamic,timeout; }}")
    out.append(f"  set {SWITCHING_SET} {{")
    out.append(f"    typeof numgen inc mod {config.settings.buckets}")
    out.append("  }")
    for slot in range(SWITCH_SLOTS):
        out.append(f"  set {switch_slot(slot)} {{ typeof ct mark; }}")
    out.append(f"  chain {HANDOVER_CHAIN} {{")  # rules: nft_handover.py
    out.append("  }")
    out.append("  chain prerouting {")
    out.append("    type filter hook prerouting priority -150; policy accept;")
    out.append(f"    ether daddr {_macs(config)} goto cluster_traffic")
    out.append("  }")
    out.append("  chain cluster_traffic {")
    out.append("    meta pkttype set host")
    mask = f"{config.mark_mask:#010x}"
    out.append(f"    ct state established,related ct mark and {mask} == 0 accept")
    if config.fence_timeout_s is not None:
        out.append(f'    meta nfproto != @{FENCE_SET} counter name "fenced" drop')
    out.append(f"    ct state established,related ct mark and {mask} @{OWNED_MARKS_SET} accept")
    out.append(f"    ct state established,related jump {HANDOVER_CHAIN}")
    out.append('    ct state established,related counter name "not_owned_established" drop')
    out.append('    ct state invalid counter name "invalid" drop')
    out.append(f"    ct mark and {mask} != 0 goto {MARKED_NEW_CHAIN}")
    out.append("    fib daddr type local goto hash_fwd")
    vmap = _orientation_map(config)
    if vmap:
        out.append(f"    {vmap}")
    out.append("    goto hash_fwd")
    out.append("  }")
    out.append(f"  chain {MARKED_NEW_CHAIN} {{")
    out += [f"    {r}" for r in _marked_new_rules(config)]
    out.append("  }")
    if early:
        out += _early_chains(config)
    out.append("  chain input {")
    out.append("    type filter hook input priority 0; policy accept;")
    out += [f"    {r}" for r in _input_rules(config)]
    out.append("  }")
    for chain, forward in (("hash_fwd", True), ("hash_rev", False)):
        out.append(f"  chain {chain} {{")
        out += [f"    {r}" for r in _hash_chain(config, forward)]
        out.append("  }")
    if config.fence_timeout_s is not None:
        out.append(f"  chain {FENCE_OUT_CHAIN} {{")
        out.append("    type filter hook output priority 0; policy accept;")
        out.append(f"    {fence_out_rule(round(config.fence_timeout_s * 1000))}")
        out.append("  }")
    nd_rules = render_nd_rules(config, interface_macs or {})
    if nd_rules:
        out.append("  chain nd_output {")
        out.append("    type filter hook output priority 0; policy accept;")
        out += [f"    {r}" for r in nd_rules]
        out.append("  }")
    out.append("}")
    out += _render_arp(config)
    return "\n".join(out) + "\n"


def _render_arp(config: DataPlaneConfig) -> list[str]:
    """ARP output mangling: every ARP packet this node sends for a cluster IP
    (replies and requests) names the zone's multicast MAC, so neighbours
    cache it and the switch floods the frames to every node."""
    rules = []
    for z in config.zones:
        for ip in z.cluster_ips:
            if ip.version == 4:
                rules.append(
                    f"    arp saddr ip {ip.ip} arp saddr ether set {z.cluster_mac.lower()}"
                )
    out = [f"table arp {TABLE} {{}}", f"delete table arp {TABLE}", f"table arp {TABLE} {{"]
    out.append("  chain output {")
    out.append("    type filter hook output priority 0; policy accept;")
    out += rules
    out.append("  }")
    out.append("}")
    return out


def render_elements(config: DataPlaneConfig, owned: Iterable[int]) -> str:
    """Comma-separated, validated bucket numbers ("" for none)."""
    buckets = sorted(set(owned))
    for b in buckets:
        if not isinstance(b, int) or not 0 <= b < config.settings.buckets:
            raise ValueError(f"bucket {b!r} out of range 0..{config.settings.buckets - 1}")
    return ", ".join(str(b) for b in buckets)


def render_mark_elements(config: DataPlaneConfig, owned: Iterable[int]) -> str:
    """The owned buckets as conntrack mark values (bucket + 1 under the mask)."""
    render_elements(config, owned)  # validates
    shift = mask_shift(config.mark_mask)
    return ", ".join(f"{(b + 1) << shift:#x}" for b in sorted(set(owned)))


def render_input_guard(config: DataPlaneConfig) -> str:
    """Only the input chain of `render_ruleset` (see `_input_rules`) and its
    counter, in the agent's own table: for the clusterdev backend, whose module
    splits the traffic and marks conntrack entries as this ruleset does but
    has no socket lookup of its own."""
    validate_config(config)
    out = [
        f"table inet {TABLE} {{}}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        "  counter no_listener {}",
        *(["  counter zone_heartbeat_refused {}"] if config.zone_heartbeat_port else []),
        "  chain input {",
        "    type filter hook input priority 0; policy accept;",
        *[f"    {r}" for r in _input_rules(config)],
        "  }",
        "}",
    ]
    return "\n".join(out) + "\n"


def render_uninstall() -> str:
    """Delete both tables if present (create-then-delete never fails)."""
    return (
        f"table inet {TABLE} {{}}\ndelete table inet {TABLE}\n"
        f"table arp {TABLE} {{}}\ndelete table arp {TABLE}\n"
    )
