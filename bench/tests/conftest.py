"""bench/tests: the comparison benchmarks' own tests (run from the repo root:
`.venv/bin/pytest bench/tests -q`; `-m "not lab"` for the ones without root)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab: needs root and network namespaces")
