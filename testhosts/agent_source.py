"""A copy of the agent's source that pip can build a wheel from.

Why: agent/pyproject.toml names `readme = "../README.md"`, which current
setuptools refuses (files outside the project directory), so `pip wheel
agent/` fails. Until that is fixed there, the test hosts build from this
staged copy: the agent without its tests and caches, README beside it. It
also lets the rolling-upgrade scenario build a *newer* version (a local
version label) without touching the clone.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from .layout import CACHE, REPO

STAGE = CACHE / "agent-src"
_IGNORE = shutil.ignore_patterns(
    "tests",
    "__pycache__",
    "*.pyc",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "*.egg-info",
    "build",
    "dist",
)


def stage(dest: Path = STAGE, local_version: str | None = None) -> Path:
    """Copy agent/ to `dest` (replacing it); returns `dest`."""
    src = REPO / "agent"
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # copy2 keeps modification times, so an unchanged agent builds an
    # identical wheel (with SOURCE_DATE_EPOCH) and nodes are not reinstalled.
    shutil.copytree(src, tmp, ignore=_IGNORE)
    shutil.copy2(REPO / "README.md", tmp / "README.md")
    pyproject = tmp / "pyproject.toml"
    text = pyproject.read_text()
    text = re.sub(r'(?m)^readme\s*=\s*"\.\./README\.md"', 'readme = "README.md"', text)
    if local_version:
        text = re.sub(
            r'(?m)^version\s*=\s*"([^"+]+)[^"]*"', rf'version = "\1+{local_version}"', text
        )
    pyproject.write_text(text)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def forget_built_wheels(wheelhouse: Path) -> None:
    """Remove the agent's wheels (not its dependencies') from the wheelhouse.

    The role installs the newest agent wheel; a scenario that built a newer
    version (rolling) must not leave it behind for the next set of hosts."""
    for wheel in wheelhouse.glob("availability_manager-*.whl"):
        wheel.unlink()
