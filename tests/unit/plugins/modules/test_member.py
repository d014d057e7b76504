"""fwcluster.cluster.member: idempotence, check mode, waits, and every failure named."""

from __future__ import annotations

import json

from ansible_collections.fwcluster.cluster.plugins.modules import member

from .module_harness import run_module, status_json

UNREACHABLE = (3, "", "clusterctl: no agent socket at /run/x (is availability-manager running?)")


def test_already_joined_changes_nothing() -> None:
    result, calls = run_module(member.main, {"state": "joined"}, [(0, status_json(), "")])
    assert result["changed"] is False and not result["failed"]
    assert calls == [["/usr/bin/clusterctl", "status", "--json"]]


def test_drain_runs_and_waits_with_timeout() -> None:
    result, calls = run_module(
        member.main,
        {"state": "drained", "timeout": 90},
        [
            (0, status_json(), ""),
            (0, "drain: confirmed", ""),
            (0, status_json("draining", owned=0), ""),
        ],
    )
    assert result["changed"] is True
    assert calls[1] == ["/usr/bin/clusterctl", "drain", "--timeout", "90"]
    assert result["before"]["owned_buckets"] == 2 and result["after"]["owned_buckets"] == 0
    assert result["diff"]["after"]["state"] == "draining"


def test_check_mode_predicts_and_changes_nothing() -> None:
    result, calls = run_module(
        member.main, {"state": "drained"}, [(0, status_json(), "")], check_mode=True
    )
    assert result["changed"] is True
    assert result["after"] == {
        "member": True,
        "state": "draining",
        "owned_buckets": 0,
        "members": 2,
        "stable": True,
    }
    assert len(calls) == 1  # only the status read


def test_drained_node_rejoins() -> None:
    result, calls = run_module(
        member.main,
        {"state": "joined"},
        [(0, status_json("draining", owned=0), ""), (0, "", ""), (0, status_json(), "")],
    )
    assert result["changed"] is True and calls[1][1] == "join"


def test_absent_when_agent_down_is_unchanged() -> None:
    result, _calls = run_module(member.main, {"state": "absent"}, [UNREACHABLE])
    assert result["changed"] is False and result["after"] == {"member": False}


def test_leave_then_agent_gone() -> None:
    result, calls = run_module(
        member.main,
        {"state": "absent", "timeout": 5},
        [(0, status_json(), ""), (0, "leave: confirmed", ""), UNREACHABLE],
    )
    assert result["changed"] is True and calls[1][1] == "leave"
    assert result["after"] == {"member": False}


def test_agent_down_fails_clearly_for_join() -> None:
    result, _calls = run_module(member.main, {"state": "joined"}, [UNREACHABLE])
    assert result["failed"] and "agent is not running on this node" in result["msg"]


def test_timeout_is_a_clear_failure() -> None:
    result, _calls = run_module(
        member.main,
        {"state": "drained", "timeout": 1},
        [
            (0, status_json(), ""),
            (1, "", "clusterctl: drain not confirmed within 1 s (owns 2 buckets, stable=True)"),
        ],
    )
    assert result["failed"]
    assert "drain --timeout 1 failed (exit 1): clusterctl: drain not confirmed" in result["msg"]


def test_garbage_output_is_a_clear_failure() -> None:
    result, _calls = run_module(member.main, {"state": "joined"}, [(0, "<html>oops", "")])
    assert result["failed"] and "answer is not JSON: '<html>oops'" in result["msg"]


def test_incomplete_status_is_a_clear_failure() -> None:
    result, _calls = run_module(member.main, {"state": "joined"}, [(0, '{"node_id": "x"}', "")])
    assert result["failed"] and "status answer lacks state" in result["msg"]


def test_nonpositive_timeout_refused_before_any_call() -> None:
    result, calls = run_module(member.main, {"state": "drained", "timeout": 0}, [])
    assert result["failed"] and "timeout must be a positive" in result["msg"] and calls == []


def cluster_json(members: list[tuple[str, str, int]], holes: int = 0) -> str:
    """A status of 198.51.100.11 in a cluster of `members` (node, state, owned)."""
    owners: list[list[str]] = []
    for node, _state, owned in members:
        owners += [[node]] * owned
    owners += [[]] * holes
    me = members[0]
    return json.dumps(
        {
            "node_id": me[0],
            "state": "member" if me[1] == "active" else me[1],
            "buckets": len(owners),
            "stable": holes == 0,
            "owned": list(range(me[2])),
            "members": [{"node": n, "state": s, "weight": 1, "owned": o} for n, s, o in members],
            "owners": owners,
        }
    )


def test_drain_of_the_last_active_member_is_refused_saying_why() -> None:
    status = cluster_json([("198.51.100.11", "active", 4), ("198.51.100.12", "draining", 0)])
    result, calls = run_module(member.main, {"state": "drained"}, [(0, status, "")])
    assert result["failed"]
    assert "refusing to drain 198.51.100.11: it is the last active member" in result["msg"]
    assert "198.51.100.12 draining" in result["msg"]
    assert len(calls) == 1  # only the status read: no drain was asked


def test_drain_of_the_only_node_is_refused() -> None:
    status = cluster_json([("198.51.100.11", "active", 4)])
    result, calls = run_module(member.main, {"state": "drained"}, [(0, status, "")])
    assert result["failed"] and "last active member (other members: none)" in result["msg"]
    assert len(calls) == 1


def test_drain_with_holes_is_refused_saying_why() -> None:
    status = cluster_json(
        [("198.51.100.11", "active", 2), ("198.51.100.12", "active", 1)], holes=1
    )
    result, calls = run_module(member.main, {"state": "drained"}, [(0, status, "")])
    assert result["failed"] and "1 buckets have no owner" in result["msg"]
    assert len(calls) == 1


def test_refusal_also_in_check_mode() -> None:
    status = cluster_json([("198.51.100.11", "active", 4)])
    result, _calls = run_module(
        member.main, {"state": "drained"}, [(0, status, "")], check_mode=True
    )
    assert result["failed"] and "last active member" in result["msg"]


def test_an_already_drained_node_is_left_as_it_is() -> None:
    status = cluster_json([("198.51.100.11", "draining", 0), ("198.51.100.12", "active", 4)])
    result, calls = run_module(member.main, {"state": "drained"}, [(0, status, "")])
    assert result["changed"] is False and not result["failed"]
    assert len(calls) == 1


def test_documentation_parses() -> None:
    import yaml

    for text in (member.DOCUMENTATION, member.EXAMPLES, member.RETURN):
        assert yaml.safe_load(text)
