# -*- coding: utf-8 -*-
# Copyright: fwcluster developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Address checks for inventory validation, so roles need only ansible.builtin."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.fwcluster.cluster.plugins.module_utils.addresses import (
    first_ipv4,
    first_ipv6,
    in_network,
    is_ip_interface,
    is_multicast_mac,
    nat_target,
)


class FilterModule(object):
    """is_multicast_mac, is_ip_interface and in_network (booleans), first_ipv4 and
    first_ipv6 (an address), nat_target (a NAT target split up)."""

    def filters(self):
        return {
            "is_multicast_mac": is_multicast_mac,
            "is_ip_interface": is_ip_interface,
            "in_network": in_network,
            "first_ipv4": first_ipv4,
            "first_ipv6": first_ipv6,
            "nat_target": nat_target,
        }
