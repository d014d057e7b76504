#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fwcluster developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: member
short_description: Join, drain or remove a node of an fwcluster firewall cluster
version_added: "0.1.0"
description:
  - Puts the node it runs on into the wanted cluster membership state by talking to the
    local availability-manager agent through C(clusterctl --json).
  - Waits until the cluster confirms the change (the other nodes have claimed or
    released the buckets) or O(timeout) passes, which fails the task.
  - Draining keeps forwarding the node's established connections while the other nodes
    take over its buckets and connections; nothing is dropped.
options:
  state:
    description:
      - V(joined) the node owns its share of buckets (undoes a drain).
      - V(drained) the node owns no bucket; the others hold all of them. Refused (the task
        fails, saying why) when no other member is active, so nobody could take the node's
        buckets, or when some buckets have no owner (a member is down or joining, a hole), which
        a drain would only make worse. A node already drained is left as it is.
      - V(absent) the node has left the cluster and its agent has stopped.
    type: str
    choices: [joined, drained, absent]
    default: joined
  timeout:
    description: Seconds to wait for the cluster to confirm.
    type: int
    default: 60
  socket:
    description: Control socket of the agent; the agent's default when omitted.
    type: path
  clusterctl:
    description: Path of the clusterctl program; looked up in PATH when omitted.
    type: path
attributes:
  check_mode:
    support: full
    description: In check mode it reports what would change (O(state) compared with the agent) and changes nothing.
  diff_mode:
    support: full
    description: Returns the membership summary before and after as the diff.
  platform:
    support: full
    platforms: posix
    description: Runs on the firewall node, next to the agent.
author:
  - fwcluster developers (@fwcluster)
"""

EXAMPLES = r"""
- name: Take the node out of service for maintenance
  fwcluster.cluster.member:
    state: drained
    timeout: 120

- name: Put it back
  fwcluster.cluster.member:
    state: joined
"""

RETURN = r"""
before:
  description: Membership summary before the change.
  returned: always
  type: dict
  sample: {"member": true, "state": "member", "owned_buckets": 86, "members": 3, "stable": true}
after:
  description: Membership summary after the change (predicted in check mode).
  returned: always
  type: dict
  sample: {"member": true, "state": "draining", "owned_buckets": 0, "members": 3, "stable": true}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fwcluster.cluster.plugins.module_utils import clusterctl as ctl


def current(module):
    try:
        return ctl.status(module)
    except ctl.AgentUnreachable:
        return None


def is_in_state(st, state):
    if state == "absent":
        return st is None
    if st is None:
        return False
    if state == "drained":
        return st["state"] == "draining" and not st["owned"]
    return st["state"] == "member" and bool(st["owned"]) and bool(st["stable"])


def drain_refusal(st):
    """Why draining this node now would leave buckets unserved, or None."""
    me = st["node_id"]
    others = [m for m in st["members"] if m.get("node") != me]
    active = [m["node"] for m in others if m.get("state") == "active"]
    if not active:
        return (
            "refusing to drain %s: it is the last active member (other members: %s), so nobody "
            "could take its buckets; join another node first"
            % (me, ", ".join("%s %s" % (m.get("node"), m.get("state")) for m in others) or "none")
        )
    holes = sum(1 for owners in st["owners"] if not owners)
    if holes:
        return (
            "refusing to drain %s: %d buckets have no owner (a member is down or still joining); "
            "draining now would leave this node's buckets unserved too; wait until "
            "`clusterctl status` shows no hole" % (me, holes)
        )
    return None


def predicted(st, state):
    after = ctl.summary(st)
    if state == "absent":
        return {"member": False}
    after["state"] = "draining" if state == "drained" else "member"
    if state == "drained":
        after["owned_buckets"] = 0
    return after


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", default="joined", choices=["joined", "drained", "absent"]),
            timeout=dict(type="int", default=60),
            socket=dict(type="path"),
            clusterctl=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    state = module.params["state"]
    if module.params["timeout"] <= 0:
        module.fail_json(msg="timeout must be a positive number of seconds")
    try:
        before_status = current(module)
        if state != "absent" and before_status is None:
            module.fail_json(
                msg="the availability-manager agent is not running on this node; "
                "start it (role availability_manager) before state=%s" % state
            )
        before = ctl.summary(before_status)
        if is_in_state(before_status, state):
            module.exit_json(changed=False, before=before, after=before)
        if state == "drained":
            refusal = drain_refusal(before_status)
            if refusal:
                module.fail_json(msg=refusal, before=before)
        if module.check_mode:
            after = predicted(before_status, state)
            module.exit_json(changed=True, before=before, after=after,
                             diff=dict(before=before, after=after))
        verb = {"joined": "join", "drained": "drain", "absent": "leave"}[state]
        ctl.run(module, [verb, "--timeout", str(module.params["timeout"])], expect_json=False)
        after = ctl.summary(current(module))
    except ctl.ClusterctlError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=True, before=before, after=after, diff=dict(before=before, after=after))


if __name__ == "__main__":
    main()
