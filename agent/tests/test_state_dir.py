"""The state directory: one agent per directory, and nonce counters that never
repeat across restarts, whatever the wall clock does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from availability_manager.daemon import state_dir as sd
from availability_manager.daemon.state_dir import NONCE_BLOCK, NONCE_MARGIN, StateDir, StateDirError


def test_second_agent_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    first = StateDir(tmp_path / "state")
    first.acquire("198.51.100.11")
    with pytest.raises(StateDirError, match=rf"in use by pid {os.getpid()} node 198.51.100.11"):
        StateDir(tmp_path / "state").acquire("198.51.100.11")
    first.release()
    again = StateDir(tmp_path / "state")
    again.acquire("198.51.100.11")  # free once the first let go
    again.release()


def test_a_restart_after_the_clock_stepped_back_reuses_no_nonce(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1_800_000_000 * 10**9]
    monkeypatch.setattr(sd.time, "time_ns", lambda: clock[0])
    life1 = StateDir(tmp_path)
    start1 = life1.first_nonce_counter()
    used_by_life1 = range(start1, start1 + 3 * NONCE_BLOCK)  # it sent a lot
    life1.ensure_nonces(used_by_life1.start + NONCE_BLOCK)
    life1.ensure_nonces(used_by_life1.start + 2 * NONCE_BLOCK)
    life1.ensure_nonces(used_by_life1.stop - 1)
    assert life1.nonces_reserved >= used_by_life1.stop

    clock[0] -= 3600 * 10**9  # NTP steps the clock back an hour; the agent restarts
    start2 = StateDir(tmp_path).first_nonce_counter()
    assert start2 >= used_by_life1.stop
    # The clock alone would have started inside the first life's counters.
    assert clock[0] // 1000 < used_by_life1.stop


def test_reservation_moves_only_near_its_end(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    start = state.first_nonce_counter()
    reserved = state.nonces_reserved
    assert reserved == start + NONCE_BLOCK
    state.ensure_nonces(reserved - NONCE_MARGIN - 1)
    assert state.nonces_reserved == reserved  # plenty left: no write
    state.ensure_nonces(reserved - NONCE_MARGIN)
    assert state.nonces_reserved == reserved - NONCE_MARGIN + NONCE_BLOCK
    assert int((tmp_path / "nonce-reserved").read_text()) == state.nonces_reserved


def test_incarnation_grows_across_lives_even_if_the_clock_steps_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1_800_000_000 * 10**9]
    monkeypatch.setattr(sd.time, "time_ns", lambda: clock[0])
    first = StateDir(tmp_path).next_incarnation()
    clock[0] -= 3600 * 10**9
    assert StateDir(tmp_path).next_incarnation() == first + 1


@pytest.mark.parametrize("content", ["banana\n", "-5\n", "\uff11\uff12\n"])
def test_corrupt_state_is_named(tmp_path: Path, content: str) -> None:
    (tmp_path / "nonce-reserved").write_text(content)
    with pytest.raises(StateDirError, match="nonce-reserved: expected a decimal number"):
        StateDir(tmp_path).first_nonce_counter()


def test_unwritable_state_dir_is_an_error_not_a_silent_fallback(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateDirError, match="state_dir"):
        StateDir(blocker / "state").acquire("n")
    with pytest.raises(StateDirError, match="nonce-reserved: cannot"):
        StateDir(blocker).first_nonce_counter()
