# -*- coding: utf-8 -*-
# Copyright: fwcluster developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""inventory_problems: checks of the whole cluster inventory (every host of the group)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.fwcluster.cluster.plugins.plugin_utils.inventory_checks import inventory_problems


class FilterModule(object):
    """inventory_problems(hostvars, hosts): a list of sentences, each naming a host and a variable."""

    def filters(self):
        return {"inventory_problems": inventory_problems}
