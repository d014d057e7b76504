"""The role's agent config, read by the agent's own parser: the notify hooks
of the inventory reach the agent as its config expects them (and without
any, the file has no notify key)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from .test_inventory_validation import GOOD, ansible_playbook

config = pytest.importorskip("availability_manager.daemon.config")
notify_hooks = pytest.importorskip("availability_manager.daemon.notify_hooks")

PLAYBOOK = Path(__file__).with_name("render_config_playbook.yml")


def render_file(tmp_path: Path, variables: dict[str, Any]) -> Path:
    """The role's template rendered with these variables (not yet read by the agent)."""
    out = tmp_path / "config.yml"
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps({**GOOD, **variables, "config_out": str(out)}))
    proc = ansible_playbook(
        "-i", "localhost,", "-e", f"ansible_python_interpreter={sys.executable}",
        "-e", f"@{extra}", str(PLAYBOOK),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def render(tmp_path: Path, variables: dict[str, Any]) -> tuple[Any, str]:
    out = render_file(tmp_path, variables)
    return config.load_config(out), out.read_text()


def test_notify_hooks_reach_the_agent_config(tmp_path: Path) -> None:
    hook = tmp_path / "notify.sh"
    hook.write_text("#!/bin/sh\n")
    hook.chmod(0o755)
    hooks = [
        {"command": str(hook)},
        {
            "command": [str(hook), "--pager"],
            "events": ["fault", "owner"],
            "timeout_s": 3,
        },
    ]
    cfg, _text = render(tmp_path, {"availability_manager_notify": hooks})
    assert cfg.notify == (
        notify_hooks.NotifyHook((str(hook),)),
        notify_hooks.NotifyHook(
            (str(hook), "--pager"), frozenset({"fault", "owner"}), 3.0
        ),
    )


def test_no_hooks_no_notify_key(tmp_path: Path) -> None:
    cfg, text = render(tmp_path, {})
    assert cfg.notify == () and "notify" not in text


def test_failure_handling_settings_reach_the_agent_config(tmp_path: Path) -> None:
    """The role's failure-handling and hardening variables, as the agent reads them."""
    cfg, text = render(
        tmp_path,
        {
            "availability_manager_handover_delay_ms": 0,
            "availability_manager_fence": False,
            "availability_manager_links": {"hold_down_ms": 500, "hold_down_max_ms": 8000},
            "availability_manager_health": {
                "nexthops": {"targets": {"outside": ["192.0.2.254"]}},
            },
            "availability_manager_sync_filter": {
                "delay_ms": 200,
                "tcp_states": ["established"],
                "ignore": ["203.0.113.0/28"],
            },
            "availability_manager_members": ["198.51.100.11", "198.51.100.12", 7],
            "availability_manager_limits": {"max_peers": 16, "max_cache_entries": 50000},
        },
    )
    assert cfg.heartbeat.handover_delay_ms == 0
    assert cfg.fence is False
    assert (cfg.links.hold_down_ms, cfg.links.hold_down_max_ms) == (500, 8000)
    assert [target[0] for target in cfg.health.nexthops.targets] == ["outside"]
    assert cfg.sync_delay_s == 0.2
    assert cfg.sync_filter.tcp_states == frozenset({3})  # established
    assert [str(n) for n in cfg.sync_filter.ignore] == ["203.0.113.0/28"]
    assert cfg.members == frozenset({0xC633640B, 0xC633640C, 7})
    assert (cfg.limits.max_peers, cfg.limits.max_cache_entries) == (16, 50000)
    assert "health:" in text and "members:" in text


def test_failure_handling_defaults_are_the_agents(tmp_path: Path) -> None:
    cfg, text = render(tmp_path, {})
    for key in ("links", "health", "sync_filter", "members", "limits"):
        assert f"\n{key}:" not in text, key
    assert cfg.heartbeat.handover_delay_ms == 100 and cfg.fence is True
    assert cfg.members is None and cfg.health.checks == ()


def test_a_wrong_setting_is_named_by_the_agent(tmp_path: Path) -> None:
    bad = {"availability_manager_links": {"hold_down_ms": 500, "hold_down_max_ms": 10}}
    out = render_file(tmp_path, bad)
    with pytest.raises(config.ConfigError, match=r"links\.hold_down_max_ms"):
        config.load_config(out)
