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


def first_ipv4(interfaces):
    """The address (without prefix) of the first IPv4 'address/prefix' in a list, or ''."""
    for value in interfaces or ():
        try:
            iface = ipaddress.ip_interface(str(value))
        except ValueError:
            continue
        if iface.version == 4:
            return str(iface.ip)
    return ""
