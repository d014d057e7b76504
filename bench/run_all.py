"""Run every benchmark and assemble docs/benchmarks.md from their sections.

Each benchmark `bench/<name>.py` writes docs/benchmarks/<name>.md (and plots
beside it). This script runs them (or only assembles with --assemble-only)
and concatenates the sections under a header with the date and commit.
`--quick` runs each benchmark's short smoke version (used by make test).
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import time
from pathlib import Path

from fwbench import env

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ROOT / "docs" / "benchmarks"
# order of sections in docs/benchmarks.md; anything not listed comes after these
ORDER = [
    "failover",
    "sync_throughput",
    "sync_path",
    "sync_capacity",  # written by hand from sync_path runs (issue 12)
    "dataplane_cost",
    "clusterdev_cost",  # boots a guest (virtme-ng); skipped with a message without one
    "false_takeover_soak",
    "rb_overhead",
    "bucket_movement",
    "bucket_hash",
    "gc_pause",
    "compare_intro",
    "compare_failover",
    "compare_sync",
    "compare_syncloss",
    "compare_active",
]
# idle_floor: a tool run by hand in a lab node's namespace in place of its
# agent (its figures are in lab_scale.md), not a benchmark with a section
SKIP = {"run_all", "idle_floor"}
# the keepalived + conntrackd comparisons need Debian packages and ~40 min:
# tools/bench-compare.sh (make bench-compare) runs them; here they are only assembled
SEPARATE = "compare_"


def _ordered(names: set[str]) -> list[str]:
    return sorted(
        names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)
    )


def benchmarks() -> list[str]:
    return _ordered({p.stem for p in (ROOT / "bench").glob("*.py")} - SKIP)


def sections() -> list[str]:
    return _ordered({p.stem for p in SECTIONS.glob("*.md")})


def assemble() -> None:
    today = datetime.date.today().isoformat()
    parts = [
        "# fwcluster benchmarks\n",
        f"Assembled {today} at commit {env.commit()} by `make bench` (`bench/run_all.py`).",
        "Each section names the command that produced it; the machine is the project's",
        "standard one (2 cores, Debian 12, Python 3.11) unless a section says otherwise.",
        "Numbers are measurements, not goals; where a goal is missed the section says so.\n",
    ]
    for name in sections():
        parts.append((SECTIONS / f"{name}.md").read_text().strip() + "\n")
    (ROOT / "docs" / "benchmarks.md").write_text("\n".join(parts))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke runs only")
    parser.add_argument("--assemble-only", action="store_true")
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    args = parser.parse_args()
    failed = []
    if not args.assemble_only:
        for name in args.names or [
            b for b in benchmarks() if not b.startswith(SEPARATE)
        ]:
            cmd = [sys.executable, str(ROOT / "bench" / f"{name}.py")]
            if args.quick:
                cmd.append("--quick")
            print(f"=== bench {name}", flush=True)
            start = time.monotonic()
            if subprocess.run(cmd, cwd=ROOT, check=False).returncode != 0:
                failed.append(name)
            # each benchmark's time, so a slow smoke run is found by reading
            # `make test`'s log rather than by timing it again
            print(f"=== bench {name} took {time.monotonic() - start:.0f} s", flush=True)
    if not args.quick:
        assemble()
    if failed:
        print(f"bench: failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
