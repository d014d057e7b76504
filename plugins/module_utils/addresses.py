# -*- coding: utf-8 -*-
# Copyright: fwcluster developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Address checks shared by the collection's filter and test plugins."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import re

_MAC = re.compile(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")


def is_multicast_mac(value):
    """True for a MAC (six colon-separated octets) whose first octet has the group bit set."""
    text = str(value)
    return bool(_MAC.match(text)) and bool(int(text[:2], 16) & 1)


def is_ip_interface(value):
    """True for 'address/prefix'."""
    text = str(value)
    if "/" not in text:
        return False
    try:
        ipaddress.ip_interface(text)
    except ValueError:
        return False
    return True


def in_network(address, network):
    """True when `address` lies inside `network` (address/prefix)."""
    try:
        return ipaddress.ip_address(str(address)) in ipaddress.ip_network(str(network), strict=False)
    except ValueError:
        return False


def _first_of_version(interfaces, version):
    for value in interfaces or ():
        try:
            iface = ipaddress.ip_interface(str(value))
        except ValueError:
            continue
        if iface.version == version:
            return str(iface.ip)
    return ""


def first_ipv4(interfaces):
    """The address (without prefix) of the first IPv4 'address/prefix' in a list, or ''."""
    return _first_of_version(interfaces, 4)


def first_ipv6(interfaces):
    """The address (without prefix) of the first IPv6 'address/prefix' in a list, or ''."""
    return _first_of_version(interfaces, 6)


_BRACKETED = re.compile(r"^\[([^\]]+)\](?::([0-9]+))?$")


def nat_target(value):
    """A NAT target split up: 'a.b.c.d', 'a.b.c.d:port', '[v6]', '[v6]:port'
    or a bare IPv6 address (no port: its colons would be ambiguous) gives
    {'address', 'port' ('' when none), 'family' ('ip' or 'ip6')}; anything
    else (a name, a port out of range, an IPv6 port without brackets) {}."""
    text = str(value)
    bracketed = _BRACKETED.match(text)
    if bracketed:
        address, port = bracketed.group(1), bracketed.group(2) or ""
    elif text.count(":") == 1:
        address, port = text.split(":")
    else:
        address, port = text, ""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return {}
    if bracketed and parsed.version != 6:
        return {}
    if port and not (port.isdigit() and 1 <= int(port) <= 65535):
        return {}
    return {"address": str(parsed), "port": port, "family": "ip" if parsed.version == 4 else "ip6"}
