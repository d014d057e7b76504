"""Control socket and clusterctl, against a real Unix socket server."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from availability_manager.cli import clusterctl
from availability_manager.daemon.control import (
    ControlError,
    ControlServer,
    ControlSetupError,
    prepare_socket_path,
)


def fake_status(owned_by_me: int = 2) -> dict[str, Any]:
    a, b = "198.51.100.11", "198.51.100.12"
    owners = [[a]] * owned_by_me + [[b]] * (4 - owned_by_me)
    return {
        "node_id": a,
        "state": "member" if owned_by_me else "draining",
        "backend": "nftables",
        "buckets": 4,
        "ready": True,
        "stable": True,
        "owned": list(range(owned_by_me)),
        "members": [
            {
                "node": a,
                "state": "active",
                "weight": 1,
                "incarnation": 1,
                "self": True,
                "owned": owned_by_me,
            },
            {
                "node": b,
                "state": "active",
                "weight": 1,
                "incarnation": 1,
                "self": False,
                "owned": 4 - owned_by_me,
            },
        ],
        "owners": owners,
        "sync": {"naks": 0},
    }


class Agent:
    """A ControlServer with a tiny state: drain takes effect after two polls."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.polls_until_drained: int | None = None
        self.drain_stuck = False
        self.released = asyncio.Event()

    def status(self, _req: Any) -> dict[str, Any]:
        if self.polls_until_drained is not None and not self.drain_stuck:
            self.polls_until_drained -= 1
            if self.polls_until_drained <= 0:
                return fake_status(owned_by_me=0)
        return fake_status()

    def drain(self, _req: Any) -> dict[str, Any]:
        self.polls_until_drained = 2
        return {"state": "draining"}

    def refuse(self, _req: Any) -> None:
        raise ControlError("the node is leaving")

    def crash(self, _req: Any) -> None:
        raise RuntimeError("bug")

    # A command whose answer is awaited (as the runtime's status, which reads
    # the kernel in its worker thread): it waits for another request.
    def slow(self, req: Any) -> Any:
        async def answer() -> str:
            await self.released.wait()
            if req.get("fail") == "refuse":
                raise ControlError("refused late")
            if req.get("fail") == "bug":
                raise RuntimeError("bug")
            return "waited"

        return answer()

    def release(self, _req: Any) -> str:
        self.released.set()
        return "released"


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    path = tmp_path / "run" / "control.sock"
    a = Agent(path)
    loop = asyncio.new_event_loop()
    server = ControlServer(
        path,
        {
            "status": a.status,
            "drain": a.drain,
            "join": a.refuse,
            "crash": a.crash,
            "slow": a.slow,
            "release": a.release,
        },
    )
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield a
    asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def raw(path: Path, data: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        s.sendall(data)
        return json.loads(s.makefile().readline())  # type: ignore[no-any-return]


def test_socket_is_root_only(agent: Agent) -> None:
    assert stat.S_IMODE(os.stat(agent.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(agent.path.parent).st_mode) == 0o700


def test_bad_requests_get_clear_errors(agent: Agent) -> None:
    assert raw(agent.path, b"not json\n") == {"ok": False, "error": "request is not JSON"}
    assert "must be an object" in raw(agent.path, b"[1]\n")["error"]
    answer = raw(agent.path, b'{"cmd": "reboot"}\n')
    assert answer["ok"] is False and "unknown command 'reboot'" in answer["error"]
    assert "internal error in crash" in raw(agent.path, b'{"cmd": "crash"}\n')["error"]
    assert raw(agent.path, b'{"cmd": "status"}\n')["result"]["node_id"] == "198.51.100.11"


def test_an_awaited_answer_does_not_hold_up_other_requests(agent: Agent) -> None:
    waiting = []
    for fail in ("", "refuse", "bug"):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        s.connect(str(agent.path))
        s.sendall(json.dumps({"cmd": "slow", "fail": fail}).encode() + b"\n")
        waiting.append(s)
    # served while the three wait (a handler that blocked the loop would
    # never see this request: the test would time out)
    assert raw(agent.path, b'{"cmd": "release"}\n') == {"ok": True, "result": "released"}
    answers = [json.loads(s.makefile().readline()) for s in waiting]
    for s in waiting:
        s.close()
    assert answers[0] == {"ok": True, "result": "waited"}
    assert answers[1] == {"ok": False, "error": "refused late"}
    assert answers[2] == {"ok": False, "error": "internal error in slow; see the agent log"}


def test_status_ranges_json(agent: Agent, capsys: pytest.CaptureFixture[str]) -> None:
    assert clusterctl.main(["--socket", str(agent.path), "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["owned"] == [0, 1]
    assert clusterctl.main(["--socket", str(agent.path), "ranges"]) == 0
    out = capsys.readouterr().out
    assert "    0 AABB" in out and "holes 0" in out


def test_ranges_rows_mark_holes_and_transit() -> None:
    st = fake_status()
    st["owners"] = [["198.51.100.11"], [], ["198.51.100.11", "198.51.100.12"], ["198.51.100.12"]]
    assert clusterctl.ranges_rows(st, width=2) == ["    0 A.", "    2 +B"]


def test_drain_waits_for_confirmation(agent: Agent, capsys: pytest.CaptureFixture[str]) -> None:
    assert clusterctl.main(["--socket", str(agent.path), "drain", "--timeout", "5"]) == 0
    assert "drain: confirmed" in capsys.readouterr().out


def test_drain_times_out(agent: Agent, capsys: pytest.CaptureFixture[str]) -> None:
    agent.drain_stuck = True
    assert clusterctl.main(["--socket", str(agent.path), "drain", "--timeout", "0.3"]) == 1
    assert "not confirmed within 0.3 s (owns 2 buckets" in capsys.readouterr().err


def test_refused_and_unreachable(
    agent: Agent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert clusterctl.main(["--socket", str(agent.path), "join"]) == 1
    assert "the agent refused: the node is leaving" in capsys.readouterr().err
    assert clusterctl.main(["--socket", str(tmp_path / "none.sock"), "status"]) == 3
    assert "is availability-manager running?" in capsys.readouterr().err


def test_garbage_answer_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "g.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(1)

    def answer_garbage() -> None:
        conn, _ = srv.accept()
        conn.recv(100)
        conn.sendall(b"<html>\n")
        conn.close()

    t = threading.Thread(target=answer_garbage)
    t.start()
    assert clusterctl.main(["--socket", str(path), "status"]) == 3
    t.join(5)
    srv.close()
    assert "not JSON" in capsys.readouterr().err


def test_deeply_nested_request_is_refused_not_raised(agent: Agent) -> None:
    deep = b"[" * 2000 + b"]" * 2000 + b"\n"
    assert raw(agent.path, deep) == {"ok": False, "error": "request is nested too deeply"}
    # the connection handler survived: the next request is answered
    assert raw(agent.path, b'{"cmd": "status"}\n')["ok"] is True


def test_existing_directory_is_never_chmodded(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    prepare_socket_path(shared / "control.sock")
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o755


def test_world_writable_directory_refused(tmp_path: Path) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    tmpdir.chmod(0o1777)
    with pytest.raises(ControlSetupError, match="writable by group or others"):
        prepare_socket_path(tmpdir / "control.sock")
    assert stat.S_IMODE(os.stat(tmpdir).st_mode) == 0o1777


def test_other_file_at_the_path_is_not_removed(tmp_path: Path) -> None:
    victim = tmp_path / "control.sock"
    victim.write_text("precious")
    with pytest.raises(ControlSetupError, match="not a socket"):
        prepare_socket_path(victim)
    assert victim.read_text() == "precious"


def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
    prepare_socket_path(path)
    assert not path.exists()
