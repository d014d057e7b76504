"""Starting and stopping `traced_client` in the lab's client namespace, in
the background, as a recorded lab process (so `lab down` ends it if the
benchmark dies first), and reading back its summary and gap table.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from fwcluster_lab.build import TRAFFIC_PORT, server_control_socket
from fwcluster_lab.netns import LabError, spawn, stop
from fwcluster_lab.state import LabState

from . import env

PROC = "fwbench-traffic"

Gap = tuple[float, float | None]  # (last answer before, first answer after or None)


@dataclasses.dataclass
class TrafficResult:
    summary: dict[str, Any]
    gaps: dict[str, dict[int, list[Gap]]]  # kind -> flow -> long gaps
    ports: dict[str, dict[int, int]]  # kind (tcp, udp) -> flow -> client source port


def _dir(state: LabState) -> Path:
    d = state.run_dir / "fwbench-traffic"
    d.mkdir(parents=True, exist_ok=True)
    return d


def start(state: LabState, options: list[str], ready_timeout: float = 60.0) -> None:
    topo = state.topology()
    server = topo.servers[0]
    d = _dir(state)
    for name in ("summary.json", "gaps.json", "status.json"):
        (d / name).unlink(missing_ok=True)
    if "--duration" not in options:
        options = [
            "--duration",
            "3600",
            *options,
        ]  # until stop(), within the client's cap
    argv = [
        sys.executable,
        "-m",
        "fwbench.traced_client",
        "--gaps",
        str(d / "gaps.json"),
        "--server",
        str(server.links[0].address.ip),
        "--port",
        str(TRAFFIC_PORT),
        "--control",
        str(server_control_socket(state.run_dir, server.name)),
        "--json",
        str(d / "summary.json"),
        "--status",
        str(d / "status.json"),
        *options,
    ]
    proc = spawn(topo.clients[0].ns, argv, d / "client.log", PROC)
    state.procs[PROC] = proc
    state.save()
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if (d / "status.json").exists():
            return
        if not proc.alive():
            raise LabError(f"traffic client exited early; see {d / 'client.log'}")
        time.sleep(0.05)
    raise LabError("traffic client did not report ready in time")


def stop_and_read(state: LabState, timeout: float = 90.0) -> TrafficResult:
    proc = state.procs.get(PROC)
    if proc is None:
        raise LabError("no traffic running")
    # SIGTERM ends the sending phase; the client drains and writes both files.
    stop(proc, signal.SIGTERM, timeout=timeout)
    del state.procs[PROC]
    state.save()
    d = _dir(state)
    if not (d / "summary.json").exists():
        # Keep its log: the lab's run directory goes when the lab comes down.
        kept = env.RUN_ROOT / f"{state.run_dir.name}-client.log"
        if (d / "client.log").exists():
            kept.write_bytes((d / "client.log").read_bytes())
        raise LabError(f"traffic client left no summary; see {kept}")
    summary = json.loads((d / "summary.json").read_text())
    table = json.loads((d / "gaps.json").read_text())
    raw = table["gaps"]
    ports = {
        kind: {int(flow): int(port) for flow, port in flows.items()}
        for kind, flows in table["ports"].items()
    }
    gaps = {
        kind: {
            int(flow): [(float(a), None if b is None else float(b)) for a, b in items]
            for flow, items in flows.items()
        }
        for kind, flows in raw.items()
    }
    return TrafficResult(summary, gaps, ports)
