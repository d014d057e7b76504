"""bench/tests: the comparison benchmarks' own tests (run from the repo root:
`.venv/bin/pytest bench/tests -q`; `-m "not lab"` for the ones without root)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1]
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab: needs root and network namespaces")
