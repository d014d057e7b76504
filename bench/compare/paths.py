"""Where things are, and making the lab and agent packages importable.

The bench scripts run as `.venv/bin/python bench/compare_x.py`; the lab
package lives in lab/ and is not installed, so the package's __init__ puts its
directory on sys.path before any module here imports it.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
BASELINES = BENCH / "baselines"
DOCS = ROOT / "docs" / "benchmarks"
CACHE = ROOT / ".cache"
# One run directory per cluster kind, so the lead's own `bin/lab` (run dir
# /run/fwcluster-lab, prefix fwl-) and these benchmarks never meet.
RUN_ROOT = Path("/run/fwcluster-compare")


def setup_import_path() -> None:
    for p in (ROOT / "lab", ROOT / "agent", BENCH):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
