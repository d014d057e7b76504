"""`make demo` without booting anything: its last line is the verdict line
issue 3 asks for, a duplicate or a lost connection fails it, and the
survivors' journal is reduced to the takeover."""

from __future__ import annotations

from typing import Any

import pytest

from testhosts import demo, layout


def summary(lost: int = 0, duplicates: int = 0) -> dict[str, Any]:
    return {
        "connections": 72,
        "lost": lost,
        "duplicates": duplicates,
        "longest_stall_ms": 391.6,
        "stall_threshold_ms": 150.0,
        "stalled_share": 0.34,
        "tcp": {"ok": 60 - lost, "streams": 60},
        "udp": {"replied": 3320, "sent": 3323, "flows": 10},
        "ping": {"replied": 666, "sent": 668, "flows": 2},
    }


@pytest.mark.parametrize(("lost", "dups", "ok"), [(0, 0, True), (0, 1, False), (2, 0, False)])
def test_verdict_is_the_last_line_and_fails_on_loss_or_duplicates(
    capsys: pytest.CaptureFixture[str], lost: int, dups: int, ok: bool
) -> None:
    assert demo.verdict_screen(7, summary(lost, dups), before=72) is ok
    lines = capsys.readouterr().out.rstrip("\n").splitlines()
    assert lines[-1] == (
        f"verdict: connections=72 lost={lost} duplicates={dups} longest_stall_ms=392"
    )
    assert "== 7. Verdict" in lines


def test_verdict_shows_the_stalled_share_beside_the_dead_nodes_share(
    capsys: pytest.CaptureFixture[str],
) -> None:
    share = demo.dead_share({"fw1": 20, "fw2": 25, "fw3": 27}, "fw3")
    assert share == pytest.approx(27 / 72)
    demo.verdict_screen(7, summary(), before=72, dead=share)
    out = capsys.readouterr().out
    assert "streams stalled > 150 ms" in out
    assert "34% of streams (the dead node's share: 38%)" in out
    assert demo.dead_share({"fw1": 20, "fw2": -1}, "fw1") is None  # a node did not answer


def test_takeover_lines_keep_the_takeover_and_the_time_of_day(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    journal = "\n".join(
        [
            "2026-11-27 20:52:50,001 INFO heartbeat interval 50 ms",
            "2026-11-27 20:52:54,358 INFO peer 198.51.100.13 down (timeout)",
            "2026-11-27 20:52:54,359 INFO inject 13 connections of buckets 28-30",
            "2026-11-27 20:52:54,359 INFO owns 128 buckets, claimed 28-30",
        ]
    )
    seen: list[str] = []

    def fake_on_node(node: layout.NodeLayout, command: str, timeout: float = 30.0) -> str:
        seen.append(command)
        return journal

    monkeypatch.setattr(demo, "on_node", fake_on_node)
    node = layout.node_layouts(layout.topology(3))[0]
    lines = demo.takeover_lines(node, since=1795812774.5)
    assert lines == [
        "20:52:54,358 peer 198.51.100.13 down (timeout)",
        "20:52:54,359 inject 13 connections of buckets 28-30",
        "20:52:54,359 owns 128 buckets, claimed 28-30",
    ]
    assert "--since=@1795812774" in seen[0]
