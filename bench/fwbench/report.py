"""Where a benchmark writes its section and plot, and the header every
section shares (date, commit, exact command, machine, load).

Full runs write docs/benchmarks/<name>.md and .png; --quick runs write to a
temporary directory (or --out), never into docs/.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

from . import env

DOCS = env.ROOT / "docs" / "benchmarks"


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a small run in seconds")
    parser.add_argument(
        "--out", type=Path, help="directory for the section (default: docs/benchmarks)"
    )


def out_dir(args: argparse.Namespace, name: str) -> Path:
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


def table(columns: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def write(d: Path, name: str, lines: list[str], raw: Any) -> Path:
    """The section, and the raw numbers as JSON for re-plotting: beside the
    section for quick runs, in the run root (not docs/) for full ones."""
    path = d / f"{name}.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    raw_dir = env.RUN_ROOT if d == DOCS else d
    raw_dir.mkdir(parents=True, exist_ok=True)
    (raw_dir / f"{name}.json").write_text(json.dumps(raw, indent=1, default=str) + "\n")
    print(f"wrote {path}", flush=True)
    return path


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
