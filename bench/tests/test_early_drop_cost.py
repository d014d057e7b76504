"""bench/early_drop_cost.py: the d arithmetic and the gain model (no root),
and a --quick smoke run on the real kernel (lab)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fwbench import foreign_cost as edc


def test_gain_model_matches_the_issue() -> None:
    # issue 13: d = 0.6 gives 1.4x at N = 3 and 1.6x at N = 16, never above 1/d
    assert round(edc.gain(0.6, 3), 1) == 1.4
    assert round(edc.gain(0.6, 16), 1) == 1.6
    assert edc.gain(0.0, 7) == pytest.approx(7.0)
    assert edc.gain(1.0, 9) == pytest.approx(1.0)
    assert edc.gain(0.1, 1000) < 10.0


def _round(costs: dict[str, float]) -> dict[str, dict[str, float]]:
    return {k: {"us_per_packet": v, "sent": 100, "forwarded": 0, "rate": 1.0}
            for k, v in costs.items()}  # fmt: skip


def test_d_is_the_nodes_share_of_a_foreign_packet_over_a_forwarded_one() -> None:
    costs = {
        "sender_only": 2.0, "ingress_drop": 2.5, "prerouting_drop": 3.0,
        "off/forward": 6.0, "off/foreign_unknown": 5.0, "off/foreign_known": 4.0,
        "early/forward": 7.0, "early/foreign_unknown": 3.0, "early/foreign_known": 3.5,
    }  # fmt: skip
    a = edc.analyse([_round(costs), _round(costs)])
    d = a["d"]
    assert d["off/foreign_unknown"] == pytest.approx((5 - 2) / (6 - 2))
    assert d["off/foreign_known"] == pytest.approx((4 - 2) / (6 - 2))
    assert d["early/foreign_unknown"] == pytest.approx((3 - 2) / (7 - 2))
    assert d["early/ingress_floor"] == pytest.approx((2.5 - 2) / (7 - 2))
    assert d["off/prerouting_floor"] == pytest.approx((3 - 2) / (6 - 2))
    assert d["early/foreign_unknown_vs_off_forward"] == pytest.approx((3 - 2) / (6 - 2))
    assert a["forward_early_vs_off"] == pytest.approx((7 - 2) / (6 - 2))


@pytest.mark.lab
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_quick_run_measures_every_case(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "early_drop_cost.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "early_drop_cost.md").read_text().startswith("## Early drop")
    raw = json.loads((tmp_path / "early_drop_cost.json").read_text())
    [r] = raw["rounds"]
    assert r["off/forward"]["forwarded"] >= 0.9 * r["off/forward"]["sent"]
    assert r["early/forward"]["forwarded"] >= 0.9 * r["early/forward"]["sent"]
    for key in ("off/foreign_unknown", "early/foreign_unknown", "early/foreign_known"):
        assert r[key]["forwarded"] <= 0.01 * r[key]["sent"], key
    names = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False
    ).stdout
    assert "fwed-" not in names
