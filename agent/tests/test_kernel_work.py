from collections import Counter
from pathlib import Path

import pytest

from availability_manager.connection import PROTO_TCP, Connection, Tuple
from availability_manager.daemon import kernel_work
from availability_manager.daemon.fault_injection import ENV, RefusingConntrack, maybe_refusing
from availability_manager.daemon.kernel_guard import RETRY_DELAYS_S
from availability_manager.daemon.kernel_work import (
    PROBE_CONNECTION,
    conntrack_probe,
    injection_attempts,
    retrying,
)

ATTEMPTS = 1 + len(RETRY_DELAYS_S)


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(kernel_work.time, "sleep", slept.append)
    return slept


def conn(port: int) -> Connection:
    a, b = bytes([192, 0, 2, 10]), bytes([198, 51, 100, 10])
    return Connection(PROTO_TCP, Tuple(a, b, port, 80), Tuple(b, a, 80, port))


class FakeTable:
    """Refuses the entries in `refuse` (every entry when refuse_all) `times` times."""

    def __init__(self, refuse: set[Connection], times: int, refuse_all: bool = False) -> None:
        self.refuse, self.times, self.refuse_all = refuse, times, refuse_all
        self.refused: list[tuple[Connection, str]] = []
        self.written: list[Connection] = []
        self.calls: list[list[Connection]] = []

    def inject(self, conns: list[Connection]) -> int:
        self.calls.append(list(conns))
        bad = [c for c in conns if self.refuse_all or c in self.refuse] if self.times else []
        self.times = max(0, self.times - 1)
        self.refused = [(c, "Cannot allocate memory") for c in bad]
        self.written += [c for c in conns if c not in bad]
        return len(conns) - len(bad)

    def delete(self, conns: list[Connection]) -> int:
        self.refused = []
        return len(conns)


def test_retrying_stops_at_the_first_success(no_sleep: list[float]) -> None:
    results = iter(["EPERM", None])
    errors: Counter[str] = Counter()
    assert retrying("programming", lambda: next(results), errors) is None
    assert errors["kernel_errors"] == 1 and no_sleep == [RETRY_DELAYS_S[0]]


def test_retrying_is_bounded_and_reports_the_last_problem(no_sleep: list[float]) -> None:
    calls = []

    def fails() -> str | None:
        calls.append(1)
        raise RuntimeError(f"nft failed {len(calls)}")

    errors: Counter[str] = Counter()
    assert retrying("programming", fails, errors) == f"RuntimeError: nft failed {ATTEMPTS}"
    assert len(calls) == ATTEMPTS == errors["kernel_errors"]
    assert no_sleep == list(RETRY_DELAYS_S)


def test_a_refusal_no_retry_can_change_is_tried_once(no_sleep: list[float]) -> None:
    """nft's words when another program's `flags owner` table holds the
    agent's table: retrying only delays the step back."""
    calls = []

    def denied() -> str | None:
        calls.append(1)
        raise RuntimeError("nft -f - failed (exit 1): /dev/stdin:1:12-20: Error: Could not "
                           "process rule: Operation not permitted")  # fmt: skip

    errors: Counter[str] = Counter()
    assert "Operation not permitted" in str(retrying("restoring", denied, errors))
    assert len(calls) == 1 == errors["kernel_errors"] and no_sleep == []


def test_injection_retries_only_the_refused_entries() -> None:
    conns = [conn(p) for p in range(1000, 1010)]
    table = FakeTable({conns[3], conns[7]}, times=1)
    written: Counter[str] = Counter()
    assert retrying("injection", injection_attempts(table, conns, written), Counter()) is None
    assert table.calls == [conns, [conns[3], conns[7]]]
    assert sorted(table.written, key=lambda c: c.orig.sport) == conns
    assert written["injected"] == 10


def test_injection_refused_every_time_names_the_refusal() -> None:
    conns = [conn(p) for p in range(1000, 1004)]
    table = FakeTable({conns[0]}, times=99)
    written: Counter[str] = Counter()
    problem = retrying("injection", injection_attempts(table, conns, written), Counter())
    assert problem == "conntrack refused 1 of 4 entries (Cannot allocate memory x1)"
    assert written["injected"] == 3 and len(table.calls) == ATTEMPTS


def test_the_probe_tells_a_refusing_kernel_from_a_refused_entry() -> None:
    one_bad = FakeTable({conn(1000)}, times=99)
    assert conntrack_probe(one_bad) is None
    assert one_bad.calls == [[PROBE_CONNECTION]]
    full = FakeTable(set(), times=99, refuse_all=True)
    assert conntrack_probe(full) == ("conntrack refuses a probe entry (Cannot allocate memory x1)")


def test_the_probe_entry_can_never_be_synced_or_forwarded() -> None:
    assert PROBE_CONNECTION.mark == 0  # unclassified: not synced (cluster_relevance)
    assert PROBE_CONNECTION.orig.src[0] == 127 and PROBE_CONNECTION.orig.dst[0] == 127


def test_the_lab_wrapper_refuses_only_while_its_flag_exists(tmp_path: Path) -> None:
    table = FakeTable(set(), times=0)
    flag = tmp_path / "refuse-inject.fw2"
    wrapped = RefusingConntrack(table, flag)  # type: ignore[arg-type]
    assert wrapped.inject([conn(1)]) == 1 and wrapped.refused == []
    flag.touch()
    assert wrapped.inject([conn(2), conn(3)]) == 0
    assert [c for c, _ in wrapped.refused] == [conn(2), conn(3)]
    flag.unlink()
    assert wrapped.inject([conn(2)]) == 1 and table.written == [conn(1), conn(2)]


def test_the_wrapper_is_only_used_when_the_lab_asks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = FakeTable(set(), times=0)
    monkeypatch.delenv(ENV, raising=False)
    assert maybe_refusing(table, "fw2") is table  # type: ignore[arg-type]
    monkeypatch.setenv(ENV, str(tmp_path))
    assert isinstance(maybe_refusing(table, "fw2"), RefusingConntrack)  # type: ignore[arg-type]


def test_a_problem_is_kept_to_its_first_line() -> None:
    nft = "DataPlaneError: nft -f - failed (exit 1): Error: EPERM\ntable inet fwcluster {\n"
    assert kernel_work.brief(nft) == "DataPlaneError: nft -f - failed (exit 1): Error: EPERM"
    assert kernel_work.brief("x" * 400) == "x" * 297 + "..."
