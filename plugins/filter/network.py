# -*- coding: utf-8 -*-
# Copyright: fwcluster developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Address checks for inventory validation, so roles need only ansible.builtin."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: network
short_description: Address checks used by the fwcluster roles
description: Filters is_multicast_mac, is_ip_interface and in_network.
"""

import ipaddress
import re

_MAC = re.compile(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")


def is_multicast_mac(value):
    """True for a MAC whose first octet has the group bit set."""
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


class FilterModule(object):
    def filters(self):
        return {
            "is_multicast_mac": is_multicast_mac,
            "is_ip_interface": is_ip_interface,
            "in_network": in_network,
        }
