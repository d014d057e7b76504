"""`site.yml --check --diff` with a changed variable shows the change as a
diff and changes nothing on the node."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fwtest import INVENTORY, REPO, node

CONFIG = "/etc/availability-manager/config.yml"


def test_check_diff_shows_the_change_and_changes_nothing() -> None:
    host = node("fw1")
    before = host.file(CONFIG).content_string
    assert "weight: 1" in before
    bindir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bindir}:{os.environ.get('PATH', '')}", ANSIBLE_NOCOLOR="1")
    env["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")
    proc = subprocess.run(
        [
            str(bindir / "ansible-playbook"),
            "-i",
            str(INVENTORY),
            str(REPO / "playbooks" / "site.yml"),
            "--check",
            "--diff",
            "--limit",
            "fw1",
            "-e",
            "availability_manager_weight=2",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-2000:]
    assert "-weight: 1" in out and "+weight: 2" in out, out[-3000:]
    assert host.file(CONFIG).content_string == before
    assert host.service("availability-manager").is_running
