"""Smoke run of bench/link_failure.py (--quick), so it cannot rot: a fresh
3-node lab (prefix fwr-), one zone link of the busiest node down at its
switch port under light traffic, the section written to a temp dir."""

from __future__ import annotations

from pathlib import Path

from test_fwcluster_bench_smoke import needs_lab, no_leftovers, run_quick

pytestmark = needs_lab


def test_link_failure_quick(tmp_path: Path) -> None:
    raw = run_quick("link_failure", tmp_path)
    run = raw["runs"][0]
    assert run["mode"] == "link-outside-switch" and run["tcp_established"] == 60
    # the node's peers heard it step back, and its buckets were taken over
    assert run["detection_ms"] is not None and 0 <= run["detection_ms"] < 2000
    assert run["takeover_ms"] is not None and run["forwards_lines"] > 0
    no_leftovers()
