"""Heartbeat settings of the lab's agents for one benchmark run.

The lab writes every agent's `heartbeat` section from
`fwcluster_lab.agent.HEARTBEAT`; a benchmark that compares settings side by
side (detection time against false takeovers, make-before-break drains
against the old break-before-make) sets it here from its command line,
before it builds a lab.
"""

from __future__ import annotations

import argparse

from fwcluster_lab import agent as lab_agent


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--heartbeat-ms",
        type=int,
        help="the agents' heartbeat.interval_ms (default: the lab's)",
    )
    parser.add_argument("--misses", type=int, help="the agents' heartbeat.misses")
    parser.add_argument(
        "--handover-delay-ms",
        type=int,
        help="the agents' heartbeat.handover_delay_ms (0: the old break-before-make)",
    )


def apply(args: argparse.Namespace) -> dict[str, int]:
    """Sets the lab's heartbeat section from the options; returns it."""
    chosen = {
        "interval_ms": args.heartbeat_ms,
        "misses": args.misses,
        "handover_delay_ms": args.handover_delay_ms,
    }
    lab_agent.HEARTBEAT = {
        **lab_agent.HEARTBEAT,
        **{k: v for k, v in chosen.items() if v is not None},
    }
    return dict(lab_agent.HEARTBEAT)


def describe(heartbeat: dict[str, int]) -> str:
    text = f"heartbeats {heartbeat['interval_ms']} ms, dead after {heartbeat['misses']} misses"
    if "handover_delay_ms" in heartbeat:
        text += f", handover_delay_ms {heartbeat['handover_delay_ms']}"
    return text
