"""Smoke runs of the four comparisons (--quick), so they cannot rot.

Each builds real labs in namespaces (prefixes fwk- and fwm-, run dirs under
/run/fwcluster-compare) and removes them. The baseline side must produce a
complete row; the fwcluster side must too once the agent is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fwbench.baseline_cluster import installed
from fwbench.env import ROOT
from fwbench.fwcluster_cluster import agent_runnable

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not installed(), reason="keepalived/conntrackd not installed"),
    pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc missing"),
]


def run_quick(name: str, out: Path) -> tuple[int, list[dict[str, object]]]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"compare_{name}.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert (out / f"compare_{name}.md").exists(), proc.stderr[-2000:]
    assert (out / f"compare_{name}.png").stat().st_size > 0
    raw = json.loads((out / f"compare_{name}.json").read_text())
    return proc.returncode, raw


def check(rc: int, raw: list[dict[str, object]]) -> list[dict[str, object]]:
    base = [r for r in raw if str(r["cluster"]).startswith("keepalived")]
    assert base, "no baseline run"
    assert all("error" not in r for r in base), [r.get("error") for r in base]
    fw = [r for r in raw if r["cluster"] == "fwcluster"]
    if agent_runnable() and fw and all("error" not in r for r in fw):
        assert rc == 0
    return base


def test_failover_quick(tmp_path: Path) -> None:
    rc, raw = run_quick("failover", tmp_path)
    for r in check(rc, raw):
        assert r["established"] == r["connections"]
        assert r["detection_ms"] is not None and float(str(r["detection_ms"])) > 0


def test_sync_quick(tmp_path: Path) -> None:
    rc, raw = run_quick("sync", tmp_path)
    for r in check(rc, raw):
        assert int(str(r["created"])) > 0
        assert int(str(r["expected_on_peers"])) == int(str(r["created"]))  # 2 nodes


def test_syncloss_quick(tmp_path: Path) -> None:
    rc, raw = run_quick("syncloss", tmp_path)
    for r in check(rc, raw):
        assert int(str(r["on_victim"])) > 0
        assert int(str(r["sync_bytes"])) > 0


def test_active_quick(tmp_path: Path) -> None:
    rc, raw = run_quick("active", tmp_path)
    for r in check(rc, raw):
        assert int(str(r["forwarded"])) > 0
