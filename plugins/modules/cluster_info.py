#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fwcluster developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: cluster_info
short_description: Read the state of an fwcluster firewall cluster as seen by this node
version_added: "0.1.0"
description:
  - Returns the members, their states, bucket ownership and sync health reported by the
    local availability-manager agent (C(clusterctl status --json)). Changes nothing.
options:
  socket:
    description: Control socket of the agent; the agent's default when omitted.
    type: path
  clusterctl:
    description: Path of the clusterctl program; looked up in PATH when omitted.
    type: path
attributes:
  check_mode:
    support: full
    description: Reads only; runs the same in check mode.
  diff_mode:
    support: none
    description: Changes nothing, so there is no diff.
  platform:
    support: full
    platforms: posix
    description: Runs on the firewall node, next to the agent.
author:
  - fwcluster developers (@fwcluster)
"""

EXAMPLES = r"""
- name: Read the cluster state
  fwcluster.cluster.cluster_info:
  register: cluster

- name: Every bucket must have exactly one owner
  ansible.builtin.assert:
    that: cluster.cluster.holes == 0 and cluster.cluster.in_transit == 0
"""

RETURN = r"""
cluster:
  description: The cluster as this node sees it.
  returned: success
  type: dict
  contains:
    running:
      description: Whether the agent answered.
      type: bool
      sample: true
    node_id:
      description: This node's id (its sync address).
      type: str
      sample: 198.51.100.11
    state:
      description: This node's lifecycle state (joining, member, draining, leaving, left).
      type: str
      sample: member
    members:
      description: Members with state, weight and number of owned buckets.
      type: list
      elements: dict
      sample: [{"node": "198.51.100.11", "state": "active", "weight": 1, "owned": 86}]
    owned_buckets:
      description: Number of buckets this node owns.
      type: int
      sample: 86
    buckets:
      description: Number of buckets of the cluster.
      type: int
      sample: 256
    holes:
      description: Buckets no member owns (must be 0 on a healthy cluster).
      type: int
      sample: 0
    in_transit:
      description: Buckets owned by two members at once (only during a handover).
      type: int
      sample: 0
    stable:
      description: Every member owns exactly its aimed buckets.
      type: bool
      sample: true
    sync:
      description: Sync counters (NAKs, resyncs, cache size, drops).
      type: dict
      sample: {"naks_sent": 0, "resyncs": 1}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fwcluster.cluster.plugins.module_utils import clusterctl as ctl


def facts(st):
    owners = st["owners"]
    return {
        "running": True,
        "node_id": st["node_id"],
        "state": st["state"],
        "members": st["members"],
        "owned_buckets": len(st["owned"]),
        "buckets": st["buckets"],
        "holes": sum(1 for o in owners if not o),
        "in_transit": sum(1 for o in owners if len(o) > 1),
        "stable": st["stable"],
        "sync": st.get("sync", {}),
    }


def main():
    module = AnsibleModule(
        argument_spec=dict(socket=dict(type="path"), clusterctl=dict(type="path")),
        supports_check_mode=True,
    )
    try:
        st = ctl.status(module)
    except ctl.AgentUnreachable:
        module.exit_json(changed=False, cluster={"running": False})
    except ctl.ClusterctlError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, cluster=facts(st))


if __name__ == "__main__":
    main()
