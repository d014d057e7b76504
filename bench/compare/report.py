"""Shared plumbing of the compare_* scripts: options, summaries, output files.

Every script takes --quick (a small version, output to a temp dir, never
docs/), --runs N and --out DIR, writes `compare_<name>.md` (with the command,
the date, the commit and the load average) and `compare_<name>.png`, and
keeps the raw per-run numbers in `compare_<name>.json` beside them so that
tables can be re-made without re-measuring.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .measure import loadavg_text
from .paths import DOCS, ROOT


def parser(doc: str, runs: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    p.add_argument(
        "--quick", action="store_true", help="small version; output to a temp dir"
    )
    p.add_argument(
        "--runs", type=int, default=runs, help=f"repetitions (default {runs})"
    )
    p.add_argument(
        "--out", type=Path, help="output directory (default docs/benchmarks)"
    )
    p.add_argument(
        "--systems",
        default="baseline,fwcluster",
        help="sides to run: baseline, fwcluster, or both (default); the JSON of "
        "the last run keeps the other side's results",
    )
    p.add_argument(
        "--render-only",
        action="store_true",
        help="re-make the table and plot from the last run's JSON; no measuring",
    )
    return p


def load_previous(out: Path, name: str) -> list[dict[str, Any]]:
    """The per-run results the last run stored (for --render-only)."""
    data = json.loads((out / f"compare_{name}.json").read_text())
    if not isinstance(data, list):
        raise TypeError(f"compare_{name}.json does not hold a list of runs")
    return [r for r in data if isinstance(r, dict)]


def out_dir(args: argparse.Namespace) -> Path:
    if args.out is not None:
        d = Path(args.out)
    elif args.quick:
        d = Path(tempfile.mkdtemp(prefix="fwcompare-"))
    else:
        d = DOCS
    d.mkdir(parents=True, exist_ok=True)
    return d


def commit() -> str:
    r = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return r.stdout.strip() or "unknown"


def command(script: str, argv: Sequence[str]) -> str:
    return " ".join([".venv/bin/python", f"bench/{script}", *argv])


def stamp(result: dict[str, Any], script: str, argv: Sequence[str]) -> dict[str, Any]:
    """Record with each run how, when and at which commit it was measured, so a
    table re-made later (--render-only, or merged sides) still says so."""
    result["command"] = command(script, argv)
    result["measured_at"] = datetime.datetime.now(datetime.UTC).strftime(
        "%Y-%m-%d %H:%M UTC"
    )
    result["commit"] = commit()
    return result


def header(
    title: str, script: str, argv: Sequence[str], results: Sequence[dict[str, Any]] = ()
) -> list[str]:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## {title}", ""]
    measured: dict[str, list[str]] = {}
    for r in results:
        if "command" in r:
            key = f"`{r['command']}` at commit {r.get('commit', '?')}"
            measured.setdefault(key, []).append(str(r.get("measured_at", "?")))
    unstamped = sum(1 for r in results if "command" not in r)
    if measured:
        lines.append("Measured by:")
        lines += [f"- {k}, {min(v)} to {max(v)}" for k, v in measured.items()]
        if unstamped:
            lines.append(
                f"- {unstamped} more runs carry no record of their command (measured "
                "before per-run stamps were added; their load average is in the table)"
            )
        lines += ["", f"Table written {now} by `{command(script, argv)}`.", ""]
    else:
        lines += [
            (
                f"Produced by `{command(script, argv)}` on {now}, commit {commit()}, "
                f"load average at the end {loadavg_text()} (2 cores)."
            ),
            "",
        ]
    return lines


def mmm(values: Sequence[float | None]) -> tuple[float, float, float] | None:
    """(median, min, max) of the values that exist; None when none do."""
    vs = [float(v) for v in values if v is not None]
    if not vs:
        return None
    return statistics.median(vs), min(vs), max(vs)


def fmt_mmm(values: Sequence[float | None], digits: int = 0) -> str:
    m = mmm(values)
    if m is None:
        return "n/a"
    med, lo, hi = m
    return f"{med:,.{digits}f} ({lo:,.{digits}f}-{hi:,.{digits}f})"


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def write(out: Path, name: str, lines: list[str], raw: Any) -> Path:
    md = out / f"compare_{name}.md"
    md.write_text("\n".join(lines).rstrip() + "\n")
    (out / f"compare_{name}.json").write_text(
        json.dumps(raw, indent=1, default=str) + "\n"
    )
    print(f"wrote {md}", file=sys.stderr)
    return md


def system_of(kind: str) -> str:
    return "baseline" if kind.startswith("keepalived") else "fwcluster"


def keep_previous(
    out: Path, name: str, results: list[dict[str, Any]], systems: str
) -> list[dict[str, Any]]:
    """Results of the sides not run this time, from the last run's JSON in
    `out`, followed by this run's: re-running one side keeps the other's rows."""
    try:
        old = json.loads((out / f"compare_{name}.json").read_text())
    except (OSError, ValueError):
        return results
    if not isinstance(old, list):
        return results
    kept = [
        r
        for r in old
        if isinstance(r, dict) and system_of(str(r.get("cluster", ""))) not in systems
    ]
    if kept:
        log(f"kept {len(kept)} earlier results of sides not run now")
    return kept + results


def runs_per_group(results: Sequence[dict[str, Any]], *keys: str) -> int:
    """The largest number of runs of one (system, setting) group."""
    counts: dict[tuple[object, ...], int] = {}
    for r in results:
        k = tuple(r.get(key) for key in keys)
        counts[k] = counts.get(k, 0) + 1
    return max(counts.values(), default=0)


def log(msg: str) -> None:
    now = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{now}] {msg}", file=sys.stderr, flush=True)


def failed_runs(
    results: Sequence[dict[str, Any]], label: Callable[[dict[str, Any]], str]
) -> list[str]:
    """The section's list of runs that failed, each with its error."""
    errors = [r for r in results if "error" in r]
    if not errors:
        return []
    return ["", "Failed runs:", *(f"- {label(r)}: {r['error']}" for r in errors)]


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (no display here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
