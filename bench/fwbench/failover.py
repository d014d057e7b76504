"""One failover run: traffic through a fresh cluster, the busiest node dies
(or is moved away gracefully), the traffic's own counters say what it cost.

The traffic is the lab's generator (long-lived TCP streams echoing records,
UDP request/response flows, pings; docs/lab.md "Counter definitions"), run
in the background from the client namespace. Detection is read from what a
surviving node wrote with a timestamp: keepalived's notify script entering
"primary", or the agent's "peer ... down" log line.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from fwcluster_lab import traffic_control

from .cluster import Cluster, running
from .env import loadavg


@dataclasses.dataclass(frozen=True)
class Load:
    tcp: int
    udp: int
    ping: int
    interval_ms: float
    settle_s: float  # traffic before the fault
    after_s: float  # traffic after the fault, before stopping

    def options(self) -> list[str]:
        return [
            "--tcp", str(self.tcp), "--udp", str(self.udp), "--ping", str(self.ping),
            "--interval-ms", f"{self.interval_ms:g}",
            # A stream is only "lost" if it never recovers: the baseline at its
            # defaults may need several seconds plus TCP's backoff.
            "--stream-timeout", "30", "--drain", "5",
        ]  # fmt: skip


def one_run(cluster: Cluster, mode: str, load: Load) -> dict[str, Any]:
    """mode: 'kill' or 'graceful'. Builds and removes the cluster itself."""
    with running(cluster):
        t_start = time.time()
        traffic_control.start(cluster.state, load.options(), ready_timeout=60.0)
        try:
            time.sleep(load.settle_s)
            victim = cluster.victim()
            t0 = cluster.kill(victim) if mode == "kill" else cluster.graceful(victim)
            time.sleep(load.after_s)
        finally:
            summary = traffic_control.stop_background(cluster.state, timeout=90.0)
        detected = cluster.detected_at(t0)
        tcp = summary.get("tcp", {})
        client = summary.get("client", {})
        return {
            "cluster": cluster.kind,
            "mode": mode,
            "victim": victim,
            "flaps_before_fault": cluster.flaps(t_start, t0),
            "detection_ms": None if detected is None else (detected - t0) * 1000,
            # Every flow kind counts: the last one to move again ends the outage.
            "longest_stall_ms": max(
                float(summary.get(k, {}).get("longest_stall_ms") or 0.0)
                for k in ("tcp", "udp", "ping")
            ),
            "connections": summary.get("connections"),
            "established": summary.get("established"),
            "lost": summary.get("lost"),
            "tcp_lost": tcp.get("lost"),
            "lost_packets": summary.get("lost_packets"),
            "duplicates": summary.get("duplicates"),
            # TCP streams whose longest gap exceeded 2.5 intervals (the client's
            # default threshold): a healthy stream's gap is one interval.
            "stall_threshold_ms": summary.get("stall_threshold_ms"),
            "share_stalled": summary.get("stalled_share"),
            "client_late_slots": client.get("late_slots"),
            "client_max_loop_lag_ms": client.get("max_loop_lag_ms"),
            "loadavg_1m": loadavg()[0],
            "summary": summary,
        }
