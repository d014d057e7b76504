"""reconfigure: a change the agent cannot reload (metrics port) was refused
by every running agent, detected by the role and carried out as a restart
through a drain, one node at a time, with no connection lost or delivered
twice; every agent now runs the new setting, and fw3, drained by its
operator before the rollout, was restarted and left drained."""

from __future__ import annotations

import pytest
from fwtest import NODES, assert_nothing_lost_or_doubled, record, traffic


def test_no_connection_lost_nothing_delivered_twice() -> None:
    assert_nothing_lost_or_doubled("reconfigure", traffic("reconfigure"))


@pytest.mark.parametrize("name", NODES)
def test_the_refused_change_was_carried_out_by_a_restart(name: str) -> None:
    rec = record(f"reconfigure-{name}")
    print(f"reconfigure {name}: pid {rec['pid_before']} -> {rec['pid_after']}; {rec['refusals']}")
    assert any("metrics" in line and "without a restart" in line for line in rec["refusals"]), rec
    assert rec["pid_after"] != rec["pid_before"], "the agent was not restarted"
    assert any("127.0.0.1:9478" in line for line in rec["listening"]), rec["listening"]
    assert not any("127.0.0.1:9477" in line for line in rec["listening"]), rec["listening"]
    assert rec["cluster"]["holes"] == 0
    if name == "fw3":  # drained by its operator before site.yml
        assert rec["cluster"]["state"] == "draining" and rec["cluster"]["owned_buckets"] == 0, rec
    else:
        assert rec["cluster"]["state"] == "member" and rec["cluster"]["owned_buckets"] > 0, rec

