"""The lab's traffic client, plus the start and end time of every long gap of
every flow: what "from the kill to the last stalled stream moving again"
needs and the client's summary (only the longest gap per flow) lacks.

Run in the client namespace as `python -m fwbench.traced_client --gaps FILE
[--gap-min-ms MS] <options of fwcluster_lab.traffic>`. Counting, pacing and
the summary are the lab client's own (docs/lab.md); this module only asks
each flow's GapMeter to keep its gaps longer than --gap-min-ms as (start,
end) in the client's monotonic clock, which is the machine's CLOCK_MONOTONIC
and so comparable with the benchmark's own time.monotonic(), and notes each
flow's source port once the sockets are bound.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

from fwcluster_lab import traffic
from fwcluster_lab.traffic_server import raise_nofile
from fwcluster_lab.traffic_stats import GapMeter, human_line


def local_ports(client: traffic.Client) -> dict[str, dict[str, int]]:
    """Each TCP stream's and UDP flow's source port: what a node's conntrack
    table shows, so a benchmark can tell which node carried which flow."""
    out: dict[str, dict[str, int]] = {"tcp": {}, "udp": {}}
    for i, st in enumerate(client.streams):
        if st.sock is not None:
            out["tcp"][str(i)] = st.sock.getsockname()[1]
    for i, u in enumerate(client.udp):
        out["udp"][str(i)] = u.sock.getsockname()[1]
    return out


def meters(client: traffic.Client) -> dict[str, list[GapMeter]]:
    return {
        "tcp": [s.stats.gaps for s in client.streams],
        "udp": [u.stats.gaps for u in client.udp],
        "ping": [p.gaps for p in client.ping],
    }


def gap_table(client: traffic.Client) -> dict[str, dict[str, list[list[float | None]]]]:
    return {
        kind: {str(i): m.long_gaps for i, m in enumerate(ms) if m.long_gaps}
        for kind, ms in meters(client).items()
    }


class TracedClient(traffic.Client):
    """The lab's client, its flows' meters keeping their long gaps."""

    def __init__(
        self, args: argparse.Namespace, run_tag: int, min_gap_s: float
    ) -> None:
        super().__init__(args, run_tag)
        self.min_gap_s = min_gap_s
        self.ports: dict[str, dict[str, int]] = {}

    def open_all(self, now: float) -> None:
        super().open_all(now)  # every flow exists and every socket is bound now
        for ms in meters(self).values():
            for m in ms:
                m.long_gap_s = self.min_gap_s
        self.ports = local_ports(self)


def main(argv: list[str] | None = None) -> int:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--gaps", type=Path, required=True)
    own.add_argument("--gap-min-ms", type=float, default=0.0)
    mine, rest = own.parse_known_args(argv)
    args = traffic.parse_args(rest)
    # Default: anything clearly longer than one interval (a healthy gap).
    min_gap_s = (mine.gap_min_ms or args.interval_ms * 1.5) / 1000.0
    raise_nofile()
    tag = args.run_tag if args.run_tag is not None else secrets.randbits(32)
    client = TracedClient(args, tag, min_gap_s)

    def on_signal(_signo: int, _frame: object) -> None:
        client.stop_requested = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    summary: dict[str, Any] = client.run()
    tmp = mine.gaps.with_suffix(".tmp")
    tmp.write_text(
        json.dumps({"gaps": gap_table(client), "ports": client.ports}) + "\n"
    )
    os.replace(tmp, mine.gaps)
    if args.json is not None:  # the summary last: its presence means both are written
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, args.json)
    print(human_line(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
