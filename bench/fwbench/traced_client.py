"""The lab's traffic client, plus the start and end time of every long gap of
every flow: what "from the kill to the last stalled stream moving again"
needs and the client's summary (only the longest gap per flow) lacks.

Run in the client namespace as `python -m fwbench.traced_client --gaps FILE
[--gap-min-ms MS] <options of fwcluster_lab.traffic>`. Counting, pacing and
the summary are the lab client's own (docs/lab.md); this module only
records, on every answer, a gap longer than --gap-min-ms as (start, end) in
the client's monotonic clock, which is the machine's CLOCK_MONOTONIC and so
comparable with the benchmark's own time.monotonic().
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

MAX_GAPS_PER_FLOW = 200  # bounded memory even for a flapping flow
_min_gap_s = 0.0
_original_answered = GapMeter.answered
_original_close = GapMeter.close


def _long_gaps(meter: GapMeter) -> list[list[float | None]]:
    gaps: list[list[float | None]] = meter.__dict__.setdefault("long_gaps", [])
    return gaps


def _answered(self: GapMeter, now: float) -> None:
    ref = self.last_answer if self.last_answer is not None else self.first_send
    if ref is not None and now - ref > _min_gap_s:
        gaps = _long_gaps(self)
        if len(gaps) < MAX_GAPS_PER_FLOW:
            gaps.append([ref, now])
    _original_answered(self, now)


def _close(self: GapMeter, end: float) -> None:
    # Still waiting at the end of the run: a gap that never ended (end None).
    ref = self.last_answer if self.last_answer is not None else self.first_send
    if ref is not None and end - ref > _min_gap_s:
        _long_gaps(self).append([ref, None])
    _original_close(self, end)


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


def gap_table(client: traffic.Client) -> dict[str, dict[str, list[list[float | None]]]]:
    kinds: dict[str, list[GapMeter]] = {
        "tcp": [s.stats.gaps for s in client.streams],
        "udp": [u.stats.gaps for u in client.udp],
        "ping": [p.gaps for p in client.ping],
    }
    return {
        kind: {str(i): _long_gaps(m) for i, m in enumerate(meters) if _long_gaps(m)}
        for kind, meters in kinds.items()
    }


def main(argv: list[str] | None = None) -> int:
    global _min_gap_s
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--gaps", type=Path, required=True)
    own.add_argument("--gap-min-ms", type=float, default=0.0)
    mine, rest = own.parse_known_args(argv)
    args = traffic.parse_args(rest)
    # Default: anything clearly longer than one interval (a healthy gap).
    _min_gap_s = (mine.gap_min_ms or args.interval_ms * 1.5) / 1000.0
    GapMeter.answered = _answered  # type: ignore[method-assign]
    GapMeter.close = _close  # type: ignore[method-assign]
    raise_nofile()
    tag = args.run_tag if args.run_tag is not None else secrets.randbits(32)
    client = traffic.Client(args, tag)
    ports: dict[str, dict[str, int]] = {}
    open_all = client.open_all

    def open_and_note(now: float) -> None:
        open_all(now)
        ports.update(local_ports(client))  # sockets are bound once connect() was called

    client.open_all = open_and_note  # type: ignore[method-assign]

    def on_signal(_signo: int, _frame: object) -> None:
        client.stop_requested = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    summary: dict[str, Any] = client.run()
    tmp = mine.gaps.with_suffix(".tmp")
    tmp.write_text(json.dumps({"gaps": gap_table(client), "ports": ports}) + "\n")
    os.replace(tmp, mine.gaps)
    if args.json is not None:  # the summary last: its presence means both are written
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, args.json)
    print(human_line(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
