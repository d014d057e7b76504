"""The health check state machine on a fixed clock: schedule, timeout, rise/fall."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from availability_manager.health import (
    CheckTiming,
    Health,
    HealthCheck,
    HealthEvent,
    Kill,
    Run,
    Verdict,
)

TIMING = CheckTiming(interval=1.0, timeout=0.5, rise=2, fall=3)


def events(check: HealthCheck) -> list[HealthEvent]:
    out = []
    while (e := check.next_event()) is not None:
        out.append(e)
    return out


def step(check: HealthCheck, now: float, ok: bool | None) -> list[HealthEvent]:
    """Fire the timer at `now` (a run starts), then report `ok` (None: no answer)."""
    check.handle_timer(now)
    out = events(check)
    assert Run("c") in out
    if ok is not None:
        check.result(ok, "ok" if ok else "exit status 1", now + 0.1)
        out += events(check)
    return out


def test_the_first_run_starts_at_once_and_its_result_decides() -> None:
    check = HealthCheck("c", TIMING, now=10.0)
    assert check.next_timer() == 10.0 and check.health is Health.PENDING
    assert step(check, 10.0, False) == [Run("c"), Verdict("c", False, "exit status 1")]
    assert check.health is Health.FAILING
    assert check.next_timer() == 11.0


def test_a_healthy_check_fails_after_fall_failures_in_a_row_only() -> None:
    check = HealthCheck("c", TIMING, now=0.0)
    step(check, 0.0, True)
    assert check.health is Health.HEALTHY
    # two failures, a success, two failures: never three in a row
    for t, ok in [(1, False), (2, False), (3, True), (4, False), (5, False)]:
        assert not [e for e in step(check, t, ok) if isinstance(e, Verdict)]
    assert check.health is Health.HEALTHY
    assert step(check, 6.0, False)[-1] == Verdict("c", False, "exit status 1")
    assert check.health is Health.FAILING


def test_a_failing_check_recovers_after_rise_successes_in_a_row() -> None:
    check = HealthCheck("c", TIMING, now=0.0)
    step(check, 0.0, False)
    assert not [e for e in step(check, 1.0, True) if isinstance(e, Verdict)]
    step(check, 2.0, False)  # the run of successes starts again
    assert not [e for e in step(check, 3.0, True) if isinstance(e, Verdict)]
    assert step(check, 4.0, True)[-1] == Verdict("c", True, "ok")
    assert check.health is Health.HEALTHY


def test_a_run_past_its_timeout_is_killed_and_counts_as_a_failure() -> None:
    check = HealthCheck("c", CheckTiming(1.0, 0.5, rise=1, fall=1), now=0.0)
    step(check, 0.0, True)
    step(check, 1.0, None)  # hangs
    assert check.running and check.next_timer() == 1.5
    check.handle_timer(1.49)
    assert events(check) == []
    check.handle_timer(1.5)
    assert events(check) == [Kill("c"), Verdict("c", False, "no result within 0.5 s")]
    assert not check.running and check.next_timer() == 2.0
    check.result(True, "ok", 1.6)  # the killed run's late answer changes nothing
    assert check.stats["late"] == 1 and check.health is Health.FAILING
    assert events(check) == []


def test_runs_stay_on_the_grid_and_skip_missed_slots() -> None:
    check = HealthCheck("c", TIMING, now=0.0)
    step(check, 0.0, True)
    check.handle_timer(3.7)  # the loop was held up: one run, not three
    assert events(check) == [Run("c")]
    assert check.next_timer() == 3.7 + 0.5  # its deadline
    check.result(True, "ok", 3.8)
    assert check.next_timer() == 4.0


def test_timing_is_validated() -> None:
    with pytest.raises(ValueError, match="timeout must be positive and at most the interval"):
        CheckTiming(interval=1.0, timeout=2.0, rise=1, fall=1)
    with pytest.raises(ValueError, match="rise and fall"):
        CheckTiming(interval=1.0, timeout=1.0, rise=0, fall=1)
    with pytest.raises(ValueError, match="interval must be positive"):
        CheckTiming(interval=0.0, timeout=1.0, rise=1, fall=1)


def reference_verdicts(results: list[bool], rise: int, fall: int) -> list[bool]:
    """The verdict after each result, written the plain way."""
    verdict: bool | None = None
    out = []
    for i, ok in enumerate(results):
        if verdict is None:
            verdict = ok
        else:
            need = rise if ok else fall
            window = results[max(0, i - need + 1) : i + 1]
            if len(window) == need and all(r == ok for r in window):
                verdict = ok
        out.append(verdict)
    return out


@given(
    st.lists(st.sampled_from([True, False, None]), max_size=40),
    st.integers(1, 4),
    st.integers(1, 4),
)
def test_the_verdict_follows_the_plain_rule(
    results: list[bool | None], rise: int, fall: int
) -> None:
    check = HealthCheck("c", CheckTiming(1.0, 0.5, rise, fall), now=0.0)
    verdicts = []
    for i, ok in enumerate(results):
        check.handle_timer(float(i))  # also times out the previous unanswered run
        if ok is not None:
            check.result(ok, "", i + 0.1)
        verdicts += [e.healthy for e in events(check) if isinstance(e, Verdict)]
    check.handle_timer(len(results) + 0.0)  # the last unanswered run times out
    verdicts += [e.healthy for e in events(check) if isinstance(e, Verdict)]
    outcomes = [bool(ok) for ok in results]  # no answer is a failure
    expected = reference_verdicts(outcomes, rise, fall)
    changes = [v for i, v in enumerate(expected) if i == 0 or v != expected[i - 1]]
    assert verdicts == changes
    if expected:
        assert check.health is (Health.HEALTHY if expected[-1] else Health.FAILING)
