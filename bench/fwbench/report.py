"""Where a benchmark writes its section and plot, and what every section
says about how it was measured (command, date, commit, machine, load).

Full runs write docs/benchmarks/<name>.md and .png; --quick runs write to a
temporary directory (or --out), never into docs/. Two kinds of section:
the daemon benchmarks' (`header`: one run, the machine and its load) and
the comparisons' (`runs_header`: per-run stamps, so a table re-made from
the JSON of earlier runs, or merged from two sides run apart, still says
how each row was measured; their JSON stays beside the section).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import env
from .measure import loadavg_text

DOCS = env.DOCS


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a small run in seconds")
    parser.add_argument(
        "--out", type=Path, help="directory for the section (default: docs/benchmarks)"
    )


def out_dir(args: argparse.Namespace, name: str = "compare") -> Path:
    if args.out is not None:
        d: Path = args.out
    elif args.quick:
        d = Path(tempfile.mkdtemp(prefix=f"fwbench-{name}-"))
    else:
        d = DOCS
    d.mkdir(parents=True, exist_ok=True)
    return d


def command_line() -> str:
    script = Path(sys.argv[0]).resolve()
    try:
        shown = str(script.relative_to(env.ROOT))
    except ValueError:
        shown = str(script)
    return shlex.join([".venv/bin/python", shown, *sys.argv[1:]])


def now_utc() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def header(title: str, facts: dict[str, str], load: str) -> list[str]:
    return [
        f"## {title}",
        "",
        f"Produced by `{command_line()}` on {facts['date']} at commit {facts['commit']}.",
        (
            f"Machine: {facts['cpus']} CPUs ({facts['cpu']}), {facts['memory']}, "
            f"kernel {facts['kernel']}, Python {facts['python']}."
        ),
        f"Load during the run: {load}.",
        "",
    ]


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def write(
    d: Path, name: str, lines: list[str], raw: Any, raw_beside: bool = False
) -> Path:
    """The section, and the raw numbers as JSON for re-plotting: beside the
    section for quick runs and with raw_beside, else in the run root (not docs/)."""
    path = d / f"{name}.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    raw_dir = env.RUN_ROOT if d == DOCS and not raw_beside else d
    raw_dir.mkdir(parents=True, exist_ok=True)
    (raw_dir / f"{name}.json").write_text(json.dumps(raw, indent=1, default=str) + "\n")
    log(f"wrote {path}")
    return path


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (no display here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def log(msg: str) -> None:
    now = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{now}] {msg}", file=sys.stderr, flush=True)


# --- the comparisons: options, per-run stamps, the other side's rows ---------


def parser(doc: str, runs: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    add_common_options(p)
    p.add_argument(
        "--runs", type=int, default=runs, help=f"repetitions (default {runs})"
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


def stamp(result: dict[str, Any]) -> dict[str, Any]:
    """Record with each run how, when and at which commit it was measured."""
    result["command"] = command_line()
    result["measured_at"] = now_utc()
    result["commit"] = env.commit()
    return result


def runs_header(title: str, results: Sequence[dict[str, Any]] = ()) -> list[str]:
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
        lines += ["", f"Table written {now_utc()} by `{command_line()}`.", ""]
    else:
        lines += [
            (
                f"Produced by `{command_line()}` on {now_utc()}, commit {env.commit()}, "
                f"load average at the end {loadavg_text()} (2 cores)."
            ),
            "",
        ]
    return lines


def load_previous(out: Path, name: str) -> list[dict[str, Any]]:
    """The per-run results the last run stored (for --render-only)."""
    data = json.loads((out / f"compare_{name}.json").read_text())
    if not isinstance(data, list):
        raise TypeError(f"compare_{name}.json does not hold a list of runs")
    return [r for r in data if isinstance(r, dict)]


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


def groups(
    results: Sequence[dict[str, Any]], *keys: str
) -> list[tuple[tuple[Any, ...], list[dict[str, Any]], list[dict[str, Any]]]]:
    """Per distinct value of `keys`, in order of appearance: the value, its
    runs, and those of them that did not fail."""
    out = []
    for value in dict.fromkeys(tuple(r.get(k) for k in keys) for r in results):
        rs = [r for r in results if tuple(r.get(k) for k in keys) == value]
        out.append((value, rs, [r for r in rs if "error" not in r]))
    return out


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


def failed_runs(
    results: Sequence[dict[str, Any]], label: Callable[[dict[str, Any]], str]
) -> list[str]:
    """The section's list of runs that failed, each with its error."""
    errors = [r for r in results if "error" in r]
    if not errors:
        return []
    return ["", "Failed runs:", *(f"- {label(r)}: {r['error']}" for r in errors)]
