# -*- coding: utf-8 -*-
# Copyright: fwcluster developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Checks of the whole cluster inventory, every node at once.

Per-node properties (sync address, node id, weight, NAT slot) are properties
of the inventory host, not of its position in a play: they are compared over
every host of the cluster group (`groups[...]`), so a run with `--limit` sees
the same conflicts as a full run. Each problem is one sentence naming the host
and the variable. The limits are the agent's own (its config.py): a node the
agent would refuse is refused here, before any node is touched.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress

from jinja2 import Undefined

from ansible_collections.fwcluster.cluster.plugins.module_utils.addresses import (
    first_ipv4,
    first_ipv6,
    nat_target,
)

MAX_NODE_ID = 0xFFFFFFFF
WEIGHT_MIN, WEIGHT_MAX = 1, 1000
NAT_PROTOCOLS = ("tcp", "udp")

# Settings that must be equal on every node, with the role default a node
# gets when it does not set them (the agents refuse a peer whose cluster
# settings differ; the NAT ranges are computed from the same base).
CLUSTER_WIDE = (
    ("availability_manager_sync_network", ""),
    ("availability_manager_sync_transport", "multicast"),
    ("availability_manager_sync_group", "239.255.77.1"),
    ("availability_manager_sync_port", 7788),
    ("availability_manager_buckets", 256),
    ("availability_manager_hash_seed", 1592651134),
    ("availability_manager_hash_fields", "addresses+ports"),
    ("availability_manager_backend", "nftables"),
    ("availability_manager_zones", []),
    ("dataplane_nat_port_base", 20000),
    ("dataplane_nat_ports_per_node", 750),
)


class _Missing(object):
    pass


MISSING = _Missing()


def _get(node_vars, name, default=MISSING):
    """A variable of one host (templated on access); a template error is a problem, not a crash."""
    try:
        if name not in node_vars:
            return default
        value = node_vars[name]
    except Exception as exc:  # a template that cannot be rendered
        return _Broken(str(exc))
    if isinstance(value, Undefined):  # e.g. a vault variable that is not defined
        return _Broken(getattr(value, "_undefined_message", None) or "undefined")
    return value


class _Broken(object):
    def __init__(self, reason):
        self.reason = reason


def _integer(value):
    """An int from an int or a decimal string; None otherwise (bools are not integers)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.isdigit() and text.isascii():
        return int(text)
    return None


def _address(value):
    try:
        return ipaddress.ip_address(str(value))
    except ValueError:
        return None


def _network(value):
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        return None


def _node_id(value, sync_address, network):
    """(node id as an int, problem or None) as the agent reads it."""
    if value is MISSING or value == "" or value is None:
        if network is not None and network.version == 6:
            return None, (
                "availability_manager_node_id is required with an IPv6 sync network "
                "(an integer from 1 to %d, unique in the cluster): the agent accepts no "
                "IPv6 address as node id" % MAX_NODE_ID
            )
        value = sync_address
    number = _integer(value)
    if number is not None:
        if not 1 <= number <= MAX_NODE_ID:
            return None, "availability_manager_node_id %s must be from 1 to %d" % (value, MAX_NODE_ID)
        node_id = number
    else:
        address = _address(value)
        if address is None or address.version != 4:
            return None, (
                "availability_manager_node_id %s must be an IPv4 address or an integer "
                "(the agent refuses anything else)" % value
            )
        node_id = int(address)
    if network is not None and network.version == 4:
        sync = _address(sync_address)
        if sync is not None and node_id != int(sync):
            return None, (
                "availability_manager_node_id %s must be the node's sync address %s "
                "with an IPv4 sync network (or be left unset)" % (value, sync_address)
            )
    return node_id, None


def _claim(owners, value, host, problems, message):
    """Record `host` as the owner of `value`; when another host owns it
    already, add `message` (formatted with host and other) to `problems`."""
    if value in owners:
        problems.append(message % {"host": host, "other": owners[value]})
    else:
        owners[value] = host


def _zone_names(zones):
    if not isinstance(zones, list):
        return []
    return [z.get("name") for z in zones if isinstance(z, dict)]


def _dnat_problems(host, rules, zones):
    problems = []
    if not isinstance(rules, list):
        return ["%s: dataplane_dnat must be a list of {zone, proto, dport, to}" % host]
    names = _zone_names(zones)
    for index, rule in enumerate(rules):
        where = "%s: dataplane_dnat[%d]" % (host, index)
        if not isinstance(rule, dict):
            problems.append("%s must be a mapping {zone, proto, dport, to}" % where)
            continue
        if rule.get("zone") not in names:
            problems.append("%s: zone %s is not one of the zones %s" % (where, rule.get("zone", "(none)"), names))
        if rule.get("proto") not in NAT_PROTOCOLS:
            problems.append("%s: proto must be tcp or udp, got %s" % (where, rule.get("proto", "(none)")))
        dport = _integer(rule.get("dport", ""))
        if dport is None or not 1 <= dport <= 65535:
            problems.append("%s: dport must be a port from 1 to 65535, got %s" % (where, rule.get("dport", "(none)")))
        target = nat_target(rule.get("to", ""))
        if not target:
            problems.append(
                "%s: to must be an IPv4 address[:port] or an IPv6 address ([address]:port with a port), got %s"
                % (where, rule.get("to") or "(none)")
            )
            continue
        version = 4 if target["family"] == "ip" else 6
        if "address" in rule:
            match = _address(rule["address"])
            if match is None or match.version != version:
                problems.append(
                    "%s: address (the destination it answers for) must be an IPv%d address like its target, got %s"
                    % (where, version, rule["address"])
                )
        else:
            zone = [z for z in zones or () if isinstance(z, dict) and z.get("name") == rule.get("zone")]
            cluster_ips = zone[0].get("cluster_ips", []) if zone else []
            if zone and not (first_ipv4 if version == 4 else first_ipv6)(cluster_ips):
                problems.append(
                    "%s: zone %s has no cluster IPv%d address to answer on: give address" % (where, rule.get("zone"), version)
                )
    return problems


def _nat_slot_problems(hosts, node_vars_of):
    """Every host that masquerades owns its own slot of NAT ports, inside the port space."""
    problems = []
    owners = {}
    for host in hosts:
        node_vars = node_vars_of[host]
        if not _get(node_vars, "dataplane_masquerade", []):
            continue
        raw = _get(node_vars, "dataplane_nat_slot")
        if raw is MISSING or raw in (0, "0", "", None):
            problems.append(
                "%s: dataplane_nat_slot is not set: every node that masquerades needs its own "
                "slot (1, 2, ...) in the inventory, a property of the host that never moves" % host
            )
            continue
        slot = _integer(raw)
        base = _integer(_get(node_vars, "dataplane_nat_port_base", 20000))
        per_node = _integer(_get(node_vars, "dataplane_nat_ports_per_node", 750))
        if slot is None or slot < 1:
            problems.append("%s: dataplane_nat_slot must be an integer >= 1, got %s" % (host, raw))
            continue
        if base is None or per_node is None or base < 1024 or per_node < 1 or base + slot * per_node > 65536:
            problems.append(
                "%s: dataplane_nat_slot %s (ports %s + (%s - 1) x %s) must end at or below port 65535 "
                "(dataplane_nat_port_base >= 1024)" % (host, raw, base, slot, per_node)
            )
        _claim(owners, slot, host, problems,
               "%%(host)s: dataplane_nat_slot %d is also %%(other)s's: two nodes would translate to the same ports" % slot)
    return problems


def inventory_problems(hostvars, hosts):
    """Problems of the cluster made of `hosts` (inventory names), each naming host and variable."""
    hosts = list(hosts or [])
    if not hosts:
        return ["the cluster group has no hosts"]
    node_vars_of = dict((host, hostvars[host]) for host in hosts)
    problems = []

    for host in hosts:
        for name in ("availability_manager_key", "availability_manager_zones", "availability_manager_sync_address"):
            value = _get(node_vars_of[host], name)
            if isinstance(value, _Broken):
                problems.append("%s: %s cannot be read: %s" % (host, name, value.reason))

    for name, default in CLUSTER_WIDE:
        values = {}
        for host in hosts:
            value = _get(node_vars_of[host], name, default)
            if isinstance(value, _Broken):
                continue
            values.setdefault(repr(value), []).append(host)
        if len(values) > 1:
            groups = "; ".join("%s on %s" % (value, ", ".join(on)) for value, on in sorted(values.items()))
            problems.append("%s differs between nodes (%s); it must be equal on every node: set it in group_vars" % (name, groups))

    keys = {}
    for host in hosts:
        key = _get(node_vars_of[host], "availability_manager_key", "")
        if key and not isinstance(key, _Broken):
            keys.setdefault(str(key).lower(), []).append(host)
    if len(keys) > 1:
        problems.append(
            "availability_manager_key differs between nodes (%d different keys): one cluster key "
            "on every node; rotate it with playbooks/rotate_key.yml" % len(keys)
        )

    sync_owner, id_owner = {}, {}
    for host in hosts:
        node_vars = node_vars_of[host]
        network = _network(_get(node_vars, "availability_manager_sync_network", ""))
        raw = _get(node_vars, "availability_manager_sync_address", "")
        if isinstance(raw, _Broken):
            continue
        sync = _address(raw)
        if sync is None:
            problems.append("%s: availability_manager_sync_address must be an IP address, got %s" % (host, raw or "(not set)"))
        elif network is None:
            problems.append(
                "%s: availability_manager_sync_network must be address/prefix, got %s"
                % (host, _get(node_vars, "availability_manager_sync_network", "(not set)"))
            )
        elif sync not in network:
            problems.append("%s: availability_manager_sync_address %s is outside availability_manager_sync_network %s" % (host, sync, network))
        if sync is not None:
            _claim(sync_owner, sync, host, problems,
                   "%%(host)s: availability_manager_sync_address %s is also %%(other)s's: every node needs its own sync address" % sync)
        explicit_id = _get(node_vars, "availability_manager_node_id")
        node_id, problem = _node_id(explicit_id, raw, network)
        if problem:
            problems.append("%s: %s" % (host, problem))
        elif explicit_id is MISSING:  # the sync address: a clash is reported above
            id_owner.setdefault(node_id, host)
        else:
            _claim(id_owner, node_id, host, problems,
                   "%%(host)s: availability_manager_node_id %s is also %%(other)s's: node ids must be unique" % explicit_id)

        weight_raw = _get(node_vars, "availability_manager_weight", 1)
        weight = _integer(weight_raw)
        if weight is None or not WEIGHT_MIN <= weight <= WEIGHT_MAX:
            problems.append(
                "%s: availability_manager_weight must be an integer from %d to %d (the agent's limits), got %s"
                % (host, WEIGHT_MIN, WEIGHT_MAX, weight_raw)
            )

        zones = _get(node_vars, "dataplane_zones", _get(node_vars, "availability_manager_zones", []))
        problems.extend(_dnat_problems(host, _get(node_vars, "dataplane_dnat", []), zones))

    problems.extend(_nat_slot_problems(hosts, node_vars_of))
    return problems
