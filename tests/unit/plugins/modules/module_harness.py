"""Run an Ansible module's main() in-process with a scripted clusterctl.

`run_module(main, args, answers)` feeds `answers` (one (rc, stdout, stderr)
per clusterctl call, in order) to AnsibleModule.run_command and returns the
module's result dict plus the commands it ran. Only run_command is replaced:
argument parsing, check mode and exit/fail handling are ansible-core's own.
"""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args


class ModuleExit(Exception):
    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__(result)
        self.result = result


def _exit_json(self: Any, **kwargs: Any) -> None:
    kwargs.setdefault("changed", False)
    kwargs["failed"] = False
    raise ModuleExit(kwargs)


def _fail_json(self: Any, msg: str, **kwargs: Any) -> None:
    kwargs["failed"] = True
    kwargs["msg"] = msg
    raise ModuleExit(kwargs)


def status_json(state: str = "member", owned: int = 2, stable: bool = True) -> str:
    me, peer = "198.51.100.11", "198.51.100.12"
    return json.dumps(
        {
            "node_id": me,
            "state": state,
            "buckets": 4,
            "stable": stable,
            "owned": list(range(owned)),
            "members": [
                {"node": me, "state": state, "weight": 1, "owned": owned},
                {"node": peer, "state": "active", "weight": 1, "owned": 4 - owned},
            ],
            "owners": [[me]] * owned + [[peer]] * (4 - owned),
            "sync": {"naks_sent": 3},
        }
    )


def run_module(
    main: Any,
    args: dict[str, Any],
    answers: list[tuple[int, str, str]],
    check_mode: bool = False,
    clusterctl: str | None = "/usr/bin/clusterctl",
) -> tuple[dict[str, Any], list[list[str]]]:
    """clusterctl=None: a node without clusterctl (never found on PATH)."""
    calls: list[list[str]] = []
    queue = list(answers)

    def fake_run_command(self: Any, cmd: list[str], **_kw: Any) -> tuple[int, str, str]:
        calls.append(list(cmd))
        if not queue:
            pytest.fail(f"unexpected extra clusterctl call: {cmd}")
        return queue.pop(0)

    full = dict(args, _ansible_check_mode=check_mode)
    if clusterctl:
        full["clusterctl"] = clusterctl
    with (
        patch_module_args(full),
        mock.patch.multiple(
            basic.AnsibleModule,
            exit_json=_exit_json,
            fail_json=_fail_json,
            run_command=fake_run_command,
            get_bin_path=lambda self, *a, **k: None,
        ),
        pytest.raises(ModuleExit) as done,
    ):
        main()
    assert not queue, f"clusterctl answers not consumed: {queue}"
    return done.value.result, calls
