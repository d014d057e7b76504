"""The part every comparison script shares: one attempt of a run (an error
becomes a result row with its message, never an aborted benchmark), and the
conclusion (keep the other systems' previous rows, or only re-render them,
write the section and the plot, exit status)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fwcluster_lab.netns import LabError

from . import report
from .cluster import ClusterError
from .gen import GeneratorError

Result = dict[str, Any]

# What a failed run raises: the result says so and the next run goes on.
RUN_ERRORS = (
    ClusterError,
    LabError,
    GeneratorError,
    OSError,
    RuntimeError,
    TimeoutError,
)


def attempt(
    run: Callable[[], Result],
    identity: Result,
    describe: Callable[[Result], str],
) -> Result:
    """`run()`, logged with `describe`; on failure `identity` plus the error."""
    try:
        result = run()
    except RUN_ERRORS as exc:
        result = {**identity, "error": str(exc)}
        report.log(f"  failed: {exc}")
    else:
        report.log(f"  {describe(result)}")
    return report.stamp(result)


def conclude(
    args: argparse.Namespace,
    out: Path,
    name: str,
    results: list[Result],
    group_by: Sequence[str],
    runs: int,
    render: Callable[[list[Result], int], list[str]],
    plot: Callable[[list[Result], Path], None],
) -> int:
    """Write section `name` and its plot; 0 when every run succeeded."""
    if args.render_only:
        results = report.load_previous(out, name)
        runs = report.runs_per_group(results, *group_by)
    else:
        results = report.keep_previous(out, name, results, args.systems)
    report.write(
        out, f"compare_{name}", render(results, runs), results, raw_beside=True
    )
    plot(results, out / f"compare_{name}.png")
    return 0 if results and all("error" not in r for r in results) else 1
