"""The part every comparison script shares: one attempt of a run (an error
becomes a result row with its message, never an aborted benchmark), and the
conclusion (keep the other systems' previous rows, or only re-render them,
write the section and the plot, exit status)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from fwcluster_lab.netns import LabError

from . import report
from .cluster import Cluster, ClusterError
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


@dataclasses.dataclass(frozen=True)
class Setting:
    """One point of a comparison: its name in the log, the keys it adds to
    each result, and one run of it on a cluster."""

    label: str
    keys: Result
    run: Callable[[Cluster], Result]


def measure_all(
    clusters: Iterable[Cluster],
    settings: Sequence[Setting],
    runs: int,
    describe: Callable[[Result], str],
) -> list[Result]:
    """Every setting `runs` times on every cluster, in that order."""
    results: list[Result] = []
    for cluster in clusters:
        for s in settings:
            for i in range(runs):
                report.log(f"{cluster.kind} {s.label} run {i + 1}/{runs}")
                identity = {"cluster": cluster.kind, **s.keys}
                results.append(attempt(partial(s.run, cluster), identity, describe))
    return results


def compare(
    args: argparse.Namespace,
    name: str,
    clusters: Callable[[], list[Cluster]],
    settings: Sequence[Setting],
    describe: Callable[[Result], str],
    render: Callable[[list[Result], int], list[str]],
    plot: Callable[[list[Result], Path], None],
) -> int:
    """A comparison from its options to its section: every setting on every
    cluster (none with --render-only), the results grouped by cluster and the
    settings' keys; 0 when every run succeeded."""
    out = report.out_dir(args)
    runs = 1 if args.quick else args.runs
    chosen = [] if args.render_only else clusters()
    results = measure_all(chosen, settings, runs, describe)
    group_by = ("cluster", *settings[0].keys) if settings else ("cluster",)
    return conclude(args, out, name, results, group_by, runs, render, plot)


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
