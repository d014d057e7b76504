"""Running the traffic client from the lab: in the foreground (`lab traffic`),
or in the background (`lab traffic start` ... `lab traffic stop`) so that a
test can start traffic, break something, and then collect the counters.

The background client is a recorded process like the agents; `stop` sends it
SIGTERM, which ends its sending phase, lets it drain, and makes it write the
summary file that `stop` then reads.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .build import TRAFFIC_PORT, lab_env, server_control_socket
from .netns import LabError, in_ns, spawn, stop
from .state import LabState

CLIENT_PROC = "traffic-client"


def _dir(state: LabState) -> Path:
    d = state.run_dir / "traffic"
    d.mkdir(parents=True, exist_ok=True)
    return d


def client_argv(state: LabState, options: list[str], json_path: Path, status: Path) -> list[str]:
    topo = state.topology()
    server = topo.servers[0]
    return [
        sys.executable,
        "-m",
        "fwcluster_lab.traffic",
        "--server",
        str(server.links[0].address.ip),
        "--port",
        str(TRAFFIC_PORT),
        "--control",
        str(server_control_socket(state.run_dir, server.name)),
        "--json",
        str(json_path),
        "--status",
        str(status),
        *options,
    ]


def run_foreground(state: LabState, options: list[str], json_path: Path | None) -> dict[str, Any]:
    out = json_path or _dir(state) / "last.json"
    out.unlink(missing_ok=True)
    argv = client_argv(state, options, out, _dir(state) / "status.json")
    proc = subprocess.run(
        in_ns(state.topology().clients[0].ns, argv),
        env=lab_env(),
        stdout=subprocess.DEVNULL,  # the lab prints the summary line itself
        check=False,
    )
    if proc.returncode != 0 or not out.exists():
        raise LabError(f"traffic client failed ({proc.returncode})")
    summary: dict[str, Any] = json.loads(out.read_text())
    return summary


def start(state: LabState, options: list[str], ready_timeout: float = 30.0) -> dict[str, Any]:
    old = state.procs.get(CLIENT_PROC)
    if old is not None and old.alive():
        raise LabError("traffic is already running: `lab traffic stop` first")
    d = _dir(state)
    out, status = d / "background.json", d / "background-status.json"
    out.unlink(missing_ok=True)
    status.unlink(missing_ok=True)
    # Background runs last until stopped, within the client's hard cap.
    if "--duration" not in options:
        options = ["--duration", "3600", *options]
    argv = client_argv(state, options, out, status)
    proc = spawn(state.topology().clients[0].ns, argv, d / "client.log", CLIENT_PROC, lab_env())
    state.procs[CLIENT_PROC] = proc
    state.save()
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if status.exists():
            ready: dict[str, Any] = json.loads(status.read_text())
            return ready
        if not proc.alive():
            raise LabError(f"traffic client exited early; see {d / 'client.log'}")
        time.sleep(0.05)
    raise LabError("traffic client did not report ready in time")


def stop_background(state: LabState, timeout: float = 60.0) -> dict[str, Any]:
    proc = state.procs.get(CLIENT_PROC)
    out = _dir(state) / "background.json"
    if proc is None:
        raise LabError("no background traffic recorded: `lab traffic start` first")
    # SIGTERM ends the sending phase; the client drains, writes its summary, exits.
    stop(proc, signal.SIGTERM, timeout=timeout)
    del state.procs[CLIENT_PROC]
    state.save()
    if not out.exists():
        raise LabError(f"traffic client left no summary; see {out.parent / 'client.log'}")
    summary: dict[str, Any] = json.loads(out.read_text())
    return summary
