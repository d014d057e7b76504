"""Smoke runs of the four fwcluster daemon benchmarks (--quick), so they
cannot rot: each builds its own lab (prefix fwr-, run root
/run/fwcluster-fwbench), measures for seconds, writes its section and plot
into a temp dir (never docs/) and takes everything down again.

The assertions check that each produced real measurements, not that a
goal is met (the quick versions are too small and the machine is shared).
Also unit tests of the stall analysis (fwbench/stalls.py), which need no root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fwbench import env, gen, host_stalls, profile, stalls

needs_lab = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]


def run_quick(name: str, out: Path, timeout: float = 300.0) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(env.BENCH / f"{name}.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    section = (out / f"{name}.md").read_text()
    assert (
        section.startswith("## ")
        and "Produced by `" in section
        and "--quick" in section
    )
    assert (out / f"{name}.png").stat().st_size > 1000
    raw: dict[str, Any] = json.loads((out / f"{name}.json").read_text())
    return raw


def no_leftovers() -> None:
    names = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False
    ).stdout
    assert not [n for n in names.split() if n.startswith(env.PREFIX)], names


class TestQuickRuns:
    pytestmark = needs_lab

    def test_failover_quick(self, tmp_path: Path) -> None:
        raw = run_quick("failover", tmp_path)
        kill, drain = raw["kill"][0], raw["drain"][0]
        assert kill["tcp_established"] == 60 and kill["victim"] in ("fw1", "fw2", "fw3")
        # A kill must make some flows stall, and they must have moved again.
        assert kill["stalled_flows"] > 0 and kill["failover_ms"] > 0
        assert kill["detection_ms"] is not None and 0 < kill["detection_ms"] < 2000
        assert drain["mode"] == "drain" and drain["tcp_established"] == 60
        no_leftovers()

    def test_sync_throughput_quick(self, tmp_path: Path) -> None:
        if shutil.which("gcc") is None:
            pytest.skip("gcc missing (the generator is C)")
        raw = run_quick("sync_throughput", tmp_path)
        steps = raw["steps"]
        assert [s["rate_offered"] for s in steps][:1] == [1000.0]
        first = steps[0]
        # Most offered connections were created in a kernel and copied to peers.
        assert first["created"] > 0.8 * first["sent"]
        assert first["copies_at_4s"] > 0 and first["agent_cpu_s"] > 0
        no_leftovers()

    def test_dataplane_cost_quick(self, tmp_path: Path) -> None:
        if shutil.which("iperf3") is None:
            pytest.skip("iperf3 missing")
        raw = run_quick("dataplane_cost", tmp_path)
        for name in ("cluster", "plain"):
            (r,) = raw["runs"][name]
            assert r["gbit_s"] > 0.01 and r["machine_busy_cpu_s"] > 0
        no_leftovers()

    def test_false_takeover_soak_quick(self, tmp_path: Path) -> None:
        raw = run_quick("false_takeover_soak", tmp_path)
        r = raw["result"]
        assert r["burners"] == 2 * (os.cpu_count() or 1)
        assert r["seconds"] >= 19 and len(r["polls"]) >= 8
        # the lab's agents ask for SCHED_RR (with SCHED_RESET_ON_FORK, which
        # sched_getscheduler reports alongside: read as "other" until masked)
        assert r["agent_policies"] == dict.fromkeys(("fw1", "fw2", "fw3"), "SCHED_RR")
        assert r["machine_busy_share"] > 0.8  # the CPUs really were saturated
        assert 0.0 <= r["machine_steal_share"] < 1.0
        assert set(r["loop_stalls_ms"]) == {"fw1", "fw2", "fw3"}
        no_leftovers()


# -- the stall analysis, on hand-made gap tables (no root) -----------------------


def test_the_soak_names_the_agents_loop_stalls_and_the_steal_time() -> None:
    lines = [
        "2026-12-07 20:56:02,935 WARNING event loop stalled 112 ms: peers not judged by it",
        "2026-12-07 20:56:02,943 INFO forwards 43 buckets",
    ]
    assert host_stalls.loop_stalls_ms(lines) == [112]
    r = {
        "loop_stalls_ms": {"fw1": [112, 85], "fw2": [], "fw3": [95]},
        "machine_steal_share": 0.008,
        "polls": [{"steal": 0.0}, {"steal": 0.031}],
    }
    text = host_stalls.stall_sentence(r)
    assert "3 stalls" in text and "longest 112 ms, 95 ms, 85 ms" in text
    assert "0.8% of this VM's CPU time" in text and "3.1% in one 2 s sample" in text


def test_impact_counts_only_gaps_around_the_fault() -> None:
    gaps: dict[int, list[stalls.Gap]] = {
        0: [(9.95, 10.30)],  # stalled by the fault at 10.0, moving again at 10.30
        1: [(9.98, 10.08)],  # one healthy interval (0.1 s): not stalled
        2: [(5.0, 5.5)],  # a stall long before the fault: not the fault's doing
        3: [(10.5, 10.9)],  # began within the window: counted
        4: [(9.9, None)],  # never answered again
    }
    r = stalls.impact(gaps, flows=10, fault_at=10.0, interval_s=0.1)
    assert r.stalled == 3 and r.unrecovered == 1
    assert r.recoveries_s == pytest.approx((0.30, 0.90))
    assert r.failover_s == pytest.approx(0.90)
    assert r.stalled_share == pytest.approx(0.3)
    assert r.longest_stall_s == pytest.approx(0.40)
    starts = [g[0] for g in r.stall_gaps]
    assert starts == pytest.approx([-0.1, -0.05, 0.5])  # relative to the fault
    assert r.stall_gaps[0][1] is None and r.stall_gaps[1][1] == pytest.approx(0.30)


def test_impact_takes_the_latest_gap_of_a_flow_and_none_when_quiet() -> None:
    gaps: dict[int, list[stalls.Gap]] = {7: [(9.9, 10.2), (10.3, 10.6)]}
    r = stalls.impact(gaps, flows=1, fault_at=10.0, interval_s=0.1)
    assert r.stalled == 1 and r.failover_s == pytest.approx(0.6)
    quiet = stalls.impact({}, flows=5, fault_at=10.0, interval_s=0.1)
    assert quiet.failover_s is None and quiet.stalled_share == 0.0


def test_a_drain_without_stalls_counts_as_recovered_at_once() -> None:
    """failover.py's summary: no stalled flow is 0 ms (a hitless drain), a
    flow that never moved again is unrecovered, whatever else recovered."""

    def run(failover_ms: float | None, unrecovered: int) -> dict[str, Any]:
        return {"failover_ms": failover_ms, "unrecovered_flows": unrecovered}

    assert stalls.recovery_ms(run(None, 0)) == 0.0
    assert stalls.recovery_ms(run(144.0, 0)) == 144.0
    assert stalls.recovery_ms(run(144.0, 2)) is None
    values = [
        stalls.recovery_ms(r) for r in (run(None, 0), run(1233.0, 0), run(144.0, 0))
    ]
    assert stalls.med_worst(values) == ("144 ms", "1233 ms")
    assert stalls.med_worst([0.0, None])[1] == "unrecovered"


def test_fold_sums_self_and_total_samples(tmp_path: Path) -> None:
    folded = tmp_path / "fw1.txt"
    folded.write_text(
        "run (a/main.py:1);handle (b/node.py:5);decode (c/wire.py:9) 3\n"
        "run (a/main.py:1);handle (b/node.py:5) 1\n"
        "garbage line\n"
    )
    own, incl, total = profile.fold([folded, tmp_path / "missing.txt"])
    assert total == 4
    assert own["wire.py:decode"] == 3 and own["node.py:handle"] == 1
    assert incl["node.py:handle"] == 4 and incl["main.py:run"] == 4
    assert "| `wire.py:decode` | 75% | 75% |" in profile.markdown([folded], "test")


def test_generator_output_is_summed_over_senders() -> None:
    offer = gen.parse(
        "sender 0 sent 500 errors 1 start 10.0 end 11.0\n"
        "sender 1 sent 700 errors 0 start 10.5 end 12.0\n"
        "total start 10.0 end 12.0\n"
    )
    assert (offer.sent, offer.errors) == (1200, 1)
    assert offer.rate == pytest.approx(600.0)
    with pytest.raises(gen.GeneratorError):
        gen.parse("nothing useful")
