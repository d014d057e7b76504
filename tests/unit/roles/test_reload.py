"""The role's checked reload (issue 15.2), against stand-in systemctl,
journalctl and clusterctl that keep the agent's reload counters in a state
file: an applied reload is done; a refusal because a restart is needed is
carried out as drain, restart, rejoin (a node its operator drained is
restarted and drained again, never joined); any other refusal fails the run
with the agent's reason and restarts nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from .test_inventory_validation import ansible_playbook, failure_text

PLAYBOOK = Path(__file__).with_name("reload_playbook.yml")

SYSTEMCTL = '''
import json, os, sys
path = os.environ["FAKE_STATE"]
st = json.load(open(path))
args = [a.strip("'") for a in sys.argv[1:]]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(" ".join(["systemctl"] + args) + "\\n")
cmd = args[0] if args else ""
if cmd == "show":
    print("Id=availability-manager.service\\nLoadState=loaded\\nActiveState=active\\n"
          "SubState=running\\nMainPID=%d\\nUnitFileState=enabled" % st["pid"])
elif cmd == "is-active":
    print("active")
elif cmd == "is-enabled":
    print("enabled")
elif cmd == "reload":
    if st["refuse"]:
        st["reload_failed"] += 1
        with open(os.environ["FAKE_JOURNAL"], "a") as journal:
            journal.write("reload refused, keeping the running configuration: %s\\n" % st["refuse"])
    else:
        st["reloads"] += 1
elif cmd == "restart":
    st.update(pid=st["pid"] + 1, reloads=0, reload_failed=0, refuse="", state="member")
json.dump(st, open(path, "w"))
'''

CLUSTERCTL = '''
import json, os, sys
path = os.environ["FAKE_STATE"]
st = json.load(open(path))
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(" ".join(["clusterctl"] + args) + "\\n")
me, peer = "198.51.100.11", "198.51.100.12"
if args[0] == "drain":
    st["state"] = "draining"
elif args[0] == "join":
    st["state"] = "member"
elif args[0] == "status":
    mine = [0, 1] if st["state"] == "member" else []
    counters = {k: st[k] for k in ("reloads", "reload_failed") if st[k]}
    print(json.dumps({
        "node_id": me, "state": st["state"], "buckets": 4, "stable": True, "owned": mine,
        "members": [{"node": me, "state": "active" if mine else "draining", "weight": 1, "owned": len(mine)},
                    {"node": peer, "state": "active", "weight": 1, "owned": 4 - len(mine)}],
        "owners": [[me]] * len(mine) + [[peer]] * (4 - len(mine)),
        "sync": counters,
    }))
json.dump(st, open(path, "w"))
'''

JOURNALCTL = '''
import os
print(open(os.environ["FAKE_JOURNAL"]).read(), end="")
'''


def tool(path: Path, body: str) -> None:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)


def run_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refuse: str, state: str = "member"
) -> tuple[int, str, list[str], dict[str, Any]]:
    fake_bin, prefix = tmp_path / "bin", tmp_path / "prefix"
    (prefix / "bin").mkdir(parents=True)
    fake_bin.mkdir()
    tool(fake_bin / "systemctl", SYSTEMCTL)
    tool(fake_bin / "journalctl", JOURNALCTL)
    tool(prefix / "bin" / "clusterctl", CLUSTERCTL)
    files = {name: tmp_path / name for name in ("state.json", "log", "journal")}
    files["state.json"].write_text(
        json.dumps({"pid": 100, "reloads": 0, "reload_failed": 0, "refuse": refuse, "state": state})
    )
    files["journal"].write_text("agent started\n")
    monkeypatch.setenv("FAKE_STATE", str(files["state.json"]))
    monkeypatch.setenv("FAKE_LOG", str(files["log"]))
    monkeypatch.setenv("FAKE_JOURNAL", str(files["journal"]))
    monkeypatch.setenv("PATH", f"{fake_bin}:{Path(sys.executable).parent}:/usr/bin:/bin")
    proc = ansible_playbook(
        "-i", "localhost,", "-e", f"ansible_python_interpreter={sys.executable}",
        "-e", f"availability_manager_prefix={prefix}", "-e", "availability_manager_drain_timeout=5",
        str(PLAYBOOK),
    )
    log = files["log"].read_text().splitlines() if files["log"].exists() else []
    actions = [line for line in log if not line.startswith(("systemctl show", "clusterctl status"))]
    return proc.returncode, proc.stdout + proc.stderr, actions, json.loads(files["state.json"].read_text())


def test_an_applied_reload_is_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rc, output, actions, st = run_reload(tmp_path, monkeypatch, refuse="")
    assert rc == 0, output
    assert actions == ["systemctl reload availability-manager"], actions
    assert st["reloads"] == 1


def test_a_change_needing_a_restart_is_drain_restart_rejoin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = "metrics cannot change without a restart (drain, restart, join)"
    rc, output, actions, st = run_reload(tmp_path, monkeypatch, refuse=reason)
    assert rc == 0, output
    # The restarted agent comes back as a member (as the real one does), so
    # the rejoin finds nothing to do.
    assert actions == [
        "systemctl reload availability-manager",
        "clusterctl drain --timeout 5",
        "systemctl restart availability-manager",
    ], actions
    assert st["state"] == "member" and st["pid"] == 101


def test_an_operator_drained_node_is_restarted_and_stays_drained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = "zones cannot change without a restart (drain, restart, join)"
    rc, output, actions, st = run_reload(tmp_path, monkeypatch, refuse=reason, state="draining")
    assert rc == 0, output
    assert actions == [
        "systemctl reload availability-manager",
        "systemctl restart availability-manager",
        "clusterctl drain --timeout 5",
    ], actions
    assert st["state"] == "draining"


def test_any_other_refusal_fails_with_the_agents_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = "/etc/availability-manager/cluster.key: line 2: key id 7 appears twice"
    rc, output, actions, _st = run_reload(tmp_path, monkeypatch, refuse=reason)
    assert rc != 0, output
    assert "the agent refused the new configuration and keeps running the old one" in failure_text(output)
    assert "key id 7 appears twice" in failure_text(output)
    assert actions == ["systemctl reload availability-manager"], actions
