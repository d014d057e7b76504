"""Where things are: the repository, the benchmark inputs and outputs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
BASELINES = BENCH / "baselines"
DOCS = ROOT / "docs" / "benchmarks"
CACHE = ROOT / ".cache"
# One run directory per cluster kind, so the lead's own `bin/lab` (run dir
# /run/fwcluster-lab, prefix fwl-) and these benchmarks never meet.
RUN_ROOT = Path("/run/fwcluster-compare")
