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


def render(tmp_path: Path, variables: dict[str, Any]) -> tuple[Any, str]:
    out = tmp_path / "config.yml"
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps({**GOOD, **variables, "config_out": str(out)}))
    proc = ansible_playbook(
        "-i", "localhost,", "-e", f"ansible_python_interpreter={sys.executable}",
        "-e", f"@{extra}", str(PLAYBOOK),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
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
