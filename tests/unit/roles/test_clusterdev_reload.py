"""The clusterdev role's module reload through a drain (issue 15.11), on
localhost against stand-in modprobe, systemctl and clusterctl sharing one
state file (module loaded or not, agent running or not, node state): the
drain-and-reload path in order, and its rescue, which leaves the node in a
known state and says which: the old module kept and the node as before when
unloading fails; the node drained, its agent stopped and never started
without a module when the new module will not load; the node out of the
cluster when its agent will not start on the new module."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from .test_inventory_validation import ansible_playbook

PLAYBOOK = Path(__file__).with_name("clusterdev_reload_playbook.yml")

COMMON = '''
import json, os, sys
path = os.environ["FAKE_STATE"]
st = json.load(open(path))
args = [a.strip("'") for a in sys.argv[1:]]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(" ".join([os.path.basename(sys.argv[0])] + args) + "\\n")
def done(rc=0, err=""):
    json.dump(st, open(path, "w"))
    if err:
        print(err, file=sys.stderr)
    sys.exit(rc)
'''

# The module is "loaded" while the stand-in sysfs directory exists.
MODPROBE = COMMON + '''
sysfs = os.environ["FAKE_SYSFS"]
if args == ["-r", "clusterdev"]:
    if st["fail"] == "unload":
        done(1, "modprobe: FATAL: Module clusterdev is in use.")
    os.rmdir(sysfs)
    st["module"] = None
elif args == ["clusterdev"]:
    if st["fail"] == "load":
        done(1, "modprobe: ERROR: could not insert 'clusterdev': Invalid argument")
    if not os.path.isdir(sysfs):
        os.mkdir(sysfs)
        st["module"] = "new"
done()
'''

# What systemd_service reads and does. A started agent is a member (the
# real one keeps no drain over a restart).
SYSTEMCTL = COMMON + '''
cmd = args[0] if args else ""
if cmd == "show":
    active = "active" if st["agent"] else "inactive"
    print("Id=availability-manager.service\\nLoadState=loaded\\nActiveState=%s\\n"
          "SubState=%s\\nMainPID=0\\nUnitFileState=enabled" % (active, "running" if st["agent"] else "dead"))
elif cmd == "stop":
    st["agent"] = False
elif cmd == "start":
    if st["fail"] == "start" and st["module"] == "new":
        done(1, "Job for availability-manager.service failed because the control process exited with error code.")
    st.update(agent=True, state="member")
done()
'''

CLUSTERCTL = COMMON + '''
me, peer = "198.51.100.11", "198.51.100.12"
if not st["agent"]:
    done(3, "cannot reach the agent at /run/availability-manager/control.sock")
if args[0] == "drain":
    st["state"] = "draining"
elif args[0] == "join":
    st["state"] = "member"
elif args[0] == "status":
    mine = [0, 1] if st["state"] == "member" else []
    print(json.dumps({
        "node_id": me, "state": st["state"], "buckets": 4, "stable": True, "owned": mine,
        "members": [{"node": me, "state": "active" if mine else "draining", "weight": 1, "owned": len(mine)},
                    {"node": peer, "state": "active", "weight": 1, "owned": 4 - len(mine)}],
        "owners": [[me]] * len(mine) + [[peer]] * (4 - len(mine)),
    }))
done()
'''


def tool(path: Path, body: str) -> None:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)


def run_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: str = ""
) -> tuple[int, str, list[str], dict[str, Any]]:
    """Reload with the old module loaded and the agent a member; `fail`
    names the step that fails: unload, load or start (the agent's, on the
    new module)."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    tool(fake_bin / "modprobe", MODPROBE)
    tool(fake_bin / "systemctl", SYSTEMCTL)
    tool(fake_bin / "clusterctl", CLUSTERCTL)
    sysfs = tmp_path / "sys-module-clusterdev"
    sysfs.mkdir()  # the old module is loaded
    state, log = tmp_path / "state.json", tmp_path / "log"
    state.write_text(json.dumps({"module": "old", "agent": True, "state": "member", "fail": fail}))
    monkeypatch.setenv("FAKE_STATE", str(state))
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_SYSFS", str(sysfs))
    monkeypatch.setenv("PATH", f"{fake_bin}:{Path(sys.executable).parent}:/usr/bin:/bin")
    proc = ansible_playbook(
        "-i", "localhost,", "-e", f"ansible_python_interpreter={sys.executable}",
        "-e", f"clusterdev_clusterctl={fake_bin / 'clusterctl'}", "-e", "clusterdev_drain_timeout=5",
        "-e", f"__clusterdev_sysfs_module={sysfs}",
        str(PLAYBOOK),
    )
    lines = log.read_text().splitlines() if log.exists() else []
    actions = [line for line in lines if not line.startswith(("systemctl show", "clusterctl status"))]
    return proc.returncode, proc.stdout + proc.stderr, actions, json.loads(state.read_text())


def final_message(output: str) -> str:
    """The msg of the run's last failure: the rescue's report."""
    fatal = [line for line in output.splitlines() if line.startswith("fatal: [localhost]: FAILED! => ")]
    assert fatal, output
    return str(json.loads(fatal[-1].split(" => ", 1)[1])["msg"])


DRAIN_AND_SWAP = [
    "clusterctl drain --timeout 5",
    "systemctl stop availability-manager",
    "modprobe -r clusterdev",
]


def test_a_reload_drains_swaps_the_module_and_starts_the_agent_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rc, output, actions, st = run_reload(tmp_path, monkeypatch)
    assert rc == 0, output
    # The started agent is a member again, so the rejoin has nothing to do.
    assert actions == [*DRAIN_AND_SWAP, "modprobe clusterdev", "systemctl start availability-manager"], actions
    assert st == {"module": "new", "agent": True, "state": "member", "fail": ""}


def test_a_module_that_will_not_load_leaves_the_node_drained_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rc, output, actions, st = run_reload(tmp_path, monkeypatch, fail="load")
    assert rc != 0, output
    # Tried once more in the rescue; the agent is never started without a
    # module (it would take buckets it cannot forward), nor the node joined.
    assert actions == [*DRAIN_AND_SWAP, "modprobe clusterdev", "modprobe clusterdev"], actions
    assert st["module"] is None and not st["agent"]
    message = final_message(output)
    assert 'failed at "Load the new module"' in message, message
    assert "could not insert 'clusterdev': Invalid argument" in message, message
    assert "No clusterdev module is loaded" in message, message
    assert "the agent was left stopped and the node drained, its buckets served by the other nodes" in message


def test_a_module_in_use_keeps_the_old_one_and_the_node_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rc, output, actions, st = run_reload(tmp_path, monkeypatch, fail="unload")
    assert rc != 0, output
    assert actions == [*DRAIN_AND_SWAP, "systemctl start availability-manager"], actions
    assert st == {"module": "old", "agent": True, "state": "member", "fail": "unload"}
    message = final_message(output)
    assert 'failed at "Unload the old module" (modprobe: FATAL: Module clusterdev is in use.)' in message, message
    assert "The old module is still loaded, the agent runs and the node rejoined" in message, message
    assert "the next run tries the reload again" in message, message


def test_an_agent_that_will_not_start_on_the_new_module_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rc, output, actions, st = run_reload(tmp_path, monkeypatch, fail="start")
    assert rc != 0, output
    start = "systemctl start availability-manager"
    # No rejoin without a running agent.
    assert actions == [*DRAIN_AND_SWAP, "modprobe clusterdev", start, start], actions
    assert st["module"] == "new" and not st["agent"]
    message = final_message(output)
    assert 'failed at "Start the agent again"' in message, message
    assert "A module is loaded, but the agent did not start" in message, message
    assert "the node is out of the cluster" in message, message
