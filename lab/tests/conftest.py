"""Shared test fixtures of the lab tests."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

TEST_RUN_ROOT = Path("/run/fwcluster-lab-tests")


@pytest.fixture(scope="session")
def lab_run_dir() -> Iterator[Callable[[str], Path]]:
    """Run directory of a test lab, by prefix. Not under pytest's tmp: other
    pytest sessions on this machine rotate /tmp/pytest-of-<user> and could
    delete a live lab's state file and control sockets from under it."""
    made: list[Path] = []

    def run_dir(prefix: str) -> Path:
        path = TEST_RUN_ROOT / prefix.rstrip("-")
        made.append(path)
        return path

    yield run_dir
    for path in made:
        # a lab_agent test keeps its agent logs there; everything else is gone after down
        if path.exists() and not any(path.glob("fw*/agent.log")):
            shutil.rmtree(path, ignore_errors=True)
