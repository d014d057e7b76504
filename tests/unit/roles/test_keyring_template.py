"""The role's key file, read by the agent's own parser (keyfile.parse_keys):
a single key keeps the earlier one-line format; each step of
playbooks/rotate_key.yml gives the keyring the rotation needs, so that
between steps every node reads what every other node sends."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from .test_inventory_validation import REPO, ansible_playbook

keyfile = pytest.importorskip("availability_manager.daemon.keyfile")

PLAYBOOK = Path(__file__).with_name("render_keyring_playbook.yml")
OLD, NEW = "ab" * 32, "CD" * 32


def render(tmp_path: Path, variables: dict[str, Any]) -> tuple[dict[int, bytes], int, str]:
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps({**variables, "key_out": str(tmp_path / "cluster.key")}))
    proc = ansible_playbook(
        "-i", "localhost,", "-e", f"ansible_python_interpreter={sys.executable}",
        "-e", f"@{extra}", str(PLAYBOOK),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (tmp_path / "cluster.key").read_text()
    keys, send = keyfile.parse_keys(text, tmp_path / "cluster.key")
    return keys, send, text


def test_a_single_key_with_id_0_keeps_the_one_line_format(tmp_path: Path) -> None:
    keys, send, text = render(tmp_path, {"availability_manager_key": OLD})
    assert text.strip() == OLD
    assert keys == {0: bytes.fromhex(OLD)} and send == 0


def test_a_key_with_another_id_is_written_with_its_id(tmp_path: Path) -> None:
    keys, send, _text = render(
        tmp_path, {"availability_manager_key": NEW, "availability_manager_key_id": 1}
    )
    assert keys == {1: bytes.fromhex(NEW)} and send == 1


STEPS = {
    "1 both keys, old sends": ([(0, OLD, True), (1, NEW, False)], {0, 1}, 0),
    "2 both keys, new sends": ([(0, OLD, False), (1, NEW, True)], {0, 1}, 1),
    "3 new key only": ([(1, NEW, True)], {1}, 1),
}


@pytest.mark.parametrize("step", sorted(STEPS))
def test_each_rotation_step_gives_the_agent_its_keyring(tmp_path: Path, step: str) -> None:
    ring, ids, send_id = STEPS[step]
    keys, send, _text = render(
        tmp_path,
        {
            "availability_manager_key": OLD,
            "availability_manager_keyring": [
                {"id": i, "key": k, "send": s} for i, k, s in ring
            ],
        },
    )
    assert set(keys) == ids and send == send_id
    assert keys[1 if 1 in ids else 0] == bytes.fromhex(NEW if 1 in ids else OLD)


def test_the_rotation_playbook_builds_the_steps_in_this_order() -> None:
    """rotate_key.yml: old+new (old sends), old+new (new sends), new only."""
    import yaml

    plays = yaml.safe_load((REPO / "playbooks" / "rotate_key.yml").read_text())
    rings = [
        task["vars"]["availability_manager_keyring"]
        for play in plays
        for task in play.get("tasks", [])
        if "availability_manager_keyring" in task.get("vars", {})
    ]
    sends = [[bool(k["send"]) for k in ring] for ring in rings]
    assert sends == [[True, False], [False, True], [True]]
    assert "new_key" in rings[2][0]["key"]
