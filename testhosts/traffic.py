"""Background traffic from the client to the server through the cluster, with
the lab's generator (fwcluster_lab.traffic_control), and its exact counters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fwcluster_lab import traffic_control
from fwcluster_lab.netns import LabError
from fwcluster_lab.traffic_stats import human_line

from .hosts import load_state


def _state() -> Any:
    state = load_state()
    if state is None:
        raise LabError("no test hosts are up: run `python -m testhosts up`")
    return state


def start(
    tcp: int, udp: int, ping: int, interval_ms: int, drain: float | None = None
) -> dict[str, Any]:
    """`drain`: seconds the generator waits for late answers once stopped."""
    options = ["--tcp", str(tcp), "--udp", str(udp), "--ping", str(ping)]
    options += ["--interval-ms", str(interval_ms)]
    if drain is not None:
        options += ["--drain", str(drain)]
    return traffic_control.start(_state(), options)


def stop(json_path: str | None = None) -> dict[str, Any]:
    summary = traffic_control.stop_background(_state())
    if json_path:
        Path(json_path).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def counts_line(summary: dict[str, Any]) -> str:
    """The connection counts a scenario prints: measured, lost, duplicates."""
    tcp = summary.get("tcp", {})
    return (
        f"connections: {summary.get('connections')} measured, "
        f"{tcp.get('established')} established, {summary.get('lost')} lost, "
        f"{summary.get('lost_packets')} packets lost, {summary.get('duplicates')} duplicates, "
        f"longest stall {summary.get('longest_stall_ms')} ms | {human_line(summary)}"
    )
