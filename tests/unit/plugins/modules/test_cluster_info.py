"""fwcluster.cluster.cluster_info: facts from the agent, agent down, garbage."""

from __future__ import annotations

import json

from ansible_collections.fwcluster.cluster.plugins.modules import cluster_info

from .module_harness import run_module, status_json


def test_facts_count_holes_and_transit() -> None:
    st = json.loads(status_json())
    st["owners"] = [["198.51.100.11"], [], ["198.51.100.11", "198.51.100.12"], ["198.51.100.12"]]
    result, _calls = run_module(cluster_info.main, {}, [(0, json.dumps(st), "")])
    facts = result["cluster"]
    assert result["changed"] is False
    assert facts["holes"] == 1 and facts["in_transit"] == 1
    assert facts["owned_buckets"] == 2 and facts["running"] is True
    assert facts["sync"] == {"naks_sent": 3}


def test_agent_down_is_reported_not_failed() -> None:
    result, _calls = run_module(cluster_info.main, {}, [(3, "", "no agent socket")])
    assert result["failed"] is False and result["cluster"] == {"running": False}


def test_garbage_fails_with_message() -> None:
    result, _calls = run_module(cluster_info.main, {}, [(0, "[1, 2]", "")])
    assert result["failed"] and "expected a JSON object, got list" in result["msg"]


def test_clusterctl_error_exit_is_reported() -> None:
    result, _calls = run_module(cluster_info.main, {}, [(2, "", "usage: clusterctl ...")])
    assert result["failed"] and "status --json failed (exit 2): usage" in result["msg"]


def test_node_without_the_agent_installed_is_not_running() -> None:
    """A fresh node (no clusterctl at all) is read as "agent not running", so
    playbooks can read any node before the rollout."""
    result, calls = run_module(cluster_info.main, {}, [], clusterctl=None)
    assert result["failed"] is False and result["cluster"] == {"running": False}
    assert calls == []
