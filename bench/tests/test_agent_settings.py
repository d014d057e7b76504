"""The heartbeat options of the lab benchmarks reach the agents' config."""

from __future__ import annotations

import argparse

import pytest
from fwbench import agent_settings
from fwcluster_lab import agent as lab_agent


@pytest.fixture
def restore_heartbeat() -> object:
    saved = lab_agent.HEARTBEAT
    yield saved
    lab_agent.HEARTBEAT = saved


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    agent_settings.add_options(p)
    return p.parse_args(list(argv))


def test_only_the_given_settings_change(restore_heartbeat: object) -> None:
    before = dict(lab_agent.HEARTBEAT)
    assert agent_settings.apply(parse()) == before
    chosen = agent_settings.apply(
        parse("--heartbeat-ms", "25", "--handover-delay-ms", "0")
    )
    assert chosen == {**before, "interval_ms": 25, "handover_delay_ms": 0}
    assert lab_agent.HEARTBEAT == chosen
    assert "handover_delay_ms 0" in agent_settings.describe(chosen)
