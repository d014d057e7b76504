"""Test-wide settings.

Hypothesis runs without per-example deadlines (the machine is shared by
parallel suites; a slow example is not a failure), and on CI (CI=true) with a
fixed derandomised seed so a red run is reproducible from its log.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci", deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") else "default")
