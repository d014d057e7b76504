"""Test-only: conntrack writes that fail on request, for the lab's
fault-injection tests (lab/tests/test_kernel_faults.py).

The agent wraps its conntrack socket in `RefusingConntrack` only when the
environment variable FWCLUSTER_FAULTS_DIR is set (never in a packaged unit);
then, while the file `refuse-inject.<node id>` exists in that directory, every
injection is refused as a kernel with a full conntrack table refuses it
(ENOMEM). Everything else passes through. The kernel gives no way to make one
namespace refuse injections without touching every other one on the machine
(nf_conntrack_max is global), hence this wrapper; nft refusals need none (the
tests make the kernel itself refuse).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..connection import Connection
from ..ct_messages import Expectation

if TYPE_CHECKING:  # the runtime imports this module's user, main.py, lazily
    from .runtime import ConntrackTable as Table

ENV = "FWCLUSTER_FAULTS_DIR"
REFUSAL = "Cannot allocate memory (injected fault)"


def flag_path(faults_dir: Path, node: str) -> Path:
    return faults_dir / f"refuse-inject.{node}"


class RefusingConntrack:
    def __init__(self, table: Table, flag: Path) -> None:
        self._table = table
        self._flag = flag
        self.refused: list[tuple[Connection, str]] = []

    def fileno(self) -> int:
        return self._table.fileno()

    def read_events(self) -> Sequence[tuple[str, Connection | Expectation]]:
        return self._table.read_events()

    def dump(self) -> list[Connection]:
        return self._table.dump()

    def inject(self, conns: list[Connection]) -> int:
        if self._flag.exists():
            self.refused = [(c, REFUSAL) for c in conns]
            return 0
        done = self._table.inject(conns)
        self.refused = list(self._table.refused)
        return done

    def delete(self, conns: list[Connection]) -> int:
        done = self._table.delete(conns)
        self.refused = list(self._table.refused)
        return done

    def inject_expectations(self, exps: list[Expectation]) -> int:
        return self._table.inject_expectations(exps)

    def close(self) -> None:
        self._table.close()


def maybe_refusing(table: Table, node: str) -> Table:
    """`table` itself, or wrapped when FWCLUSTER_FAULTS_DIR is set."""
    faults_dir = os.environ.get(ENV)
    if not faults_dir:
        return table
    return RefusingConntrack(table, flag_path(Path(faults_dir), node))
