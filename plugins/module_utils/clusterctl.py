# -*- coding: utf-8 -*-
# Copyright: fwcluster developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Shared by the fwcluster modules: run `clusterctl ... --json` and read its answer.

clusterctl exit codes: 0 done, 1 refused or not confirmed in time,
2 usage, 3 agent unreachable. Anything else, or output that is not the
expected JSON object, is reported as such, never as a Python traceback.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
STATUS_KEYS = ("node_id", "state", "owned", "members", "owners", "stable", "buckets")


class ClusterctlError(Exception):
    pass


class AgentUnreachable(ClusterctlError):
    pass


class NotInstalled(AgentUnreachable):
    """No clusterctl on the node: the agent was never installed, so it does not run."""


def _base(module):
    binary = module.params.get("clusterctl") or module.get_bin_path("clusterctl")
    if not binary:
        raise NotInstalled(
            "clusterctl not found on the node: is the availability_manager role applied?"
        )
    cmd = [binary]
    if module.params.get("socket"):
        cmd += ["--socket", module.params["socket"]]
    return cmd


def run(module, args, expect_json=True):
    """Run clusterctl with `args`; return the parsed JSON (or None)."""
    cmd = _base(module) + list(args)
    rc, out, err = module.run_command(cmd)
    err = (err or "").strip()
    if rc == EXIT_UNREACHABLE:
        raise AgentUnreachable(err or "the availability-manager agent is not reachable")
    if rc != EXIT_OK:
        raise ClusterctlError(
            "%s failed (exit %s): %s" % (" ".join(args), rc, err or (out or "").strip() or "no output")
        )
    if not expect_json:
        return None
    try:
        data = json.loads(out)
    except ValueError:
        snippet = (out or "").strip()[:200]
        raise ClusterctlError(
            "%s: the agent's answer is not JSON: %r" % (" ".join(args), snippet)
        )
    if not isinstance(data, dict):
        raise ClusterctlError("%s: expected a JSON object, got %s" % (" ".join(args), type(data).__name__))
    return data


def status(module):
    """The agent's status, validated; AgentUnreachable if it is not running."""
    data = run(module, ["status", "--json"])
    missing = [k for k in STATUS_KEYS if k not in data]
    if missing:
        raise ClusterctlError("status answer lacks %s" % ", ".join(missing))
    return data


def summary(st):
    """The part of a status a person compares in a diff."""
    if st is None:
        return {"member": False}
    return {
        "member": True,
        "state": st["state"],
        "owned_buckets": len(st["owned"]),
        "members": len(st["members"]),
        "stable": st["stable"],
    }
