"""Records and counters of the traffic generator, and the summary built from them.

No sockets here: the client (traffic.py) and server (traffic_server.py) feed
these objects with what happened and the time it happened (`now`, seconds,
from the caller's monotonic clock), so every definition below is unit-tested
on a hand-driven clock.

A record is 16 bytes: flow id, sequence number, run tag, check word (all u32,
network order). The check word ties the three together, so a record that was
mangled, or that belongs to another run or flow, is recognised as such.

Definitions (also in docs/lab.md):
- stall of a flow: the largest gap between two successive echoes (TCP) or
  first-time replies (UDP, ping), counting from the first send. At the end, a
  TCP stream that broke or still owes echoes adds the gap from its last echo
  to the end of the run (it is stuck); a datagram flow whose last request went
  unanswered adds the gap from its last reply to its last request (a datagram
  lost in the middle is only a gap: it never comes back).
- a TCP stream is *ok* when it connected, never broke (reset, EOF, timeout,
  corrupt echo) and every record it sent came back; otherwise it is *lost*.
- a duplicate is a delivery seen twice: a UDP or ping reply whose sequence
  number was already answered (client side), or a UDP request the server had
  already seen (server side, a frame forwarded by two nodes).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable, Mapping
from typing import Any

RECORD = struct.Struct("!IIII")
RECORD_SIZE = RECORD.size
# A stream's longest gap is a stall when one record interval cannot explain
# it: a healthy stream's gaps are about one interval (more on a busy machine),
# so the threshold is a few intervals, and never below 50 ms.
STALL_INTERVALS = 3.0
STALL_FLOOR_S = 0.050
# Upper bounds (ms) of the stall histogram bins; the last bin is open-ended.
STALL_BINS_MS = (50, 100, 200, 500, 1000, 2000, 5000)


def check_word(run_tag: int, flow: int, seq: int) -> int:
    # A cheap mix (Knuth's multiplicative constants), not a MAC: it catches
    # mangled, misrouted and stale records, not forged ones.
    return ((flow * 2654435761) ^ (seq * 40503) ^ (run_tag * 2246822519)) & 0xFFFFFFFF


def make_record(run_tag: int, flow: int, seq: int) -> bytes:
    return RECORD.pack(flow, seq, run_tag, check_word(run_tag, flow, seq))


def parse_record(data: bytes | bytearray | memoryview) -> tuple[int, int, int] | None:
    """(run_tag, flow, seq) of a well-formed record, None for anything else."""
    if len(data) != RECORD_SIZE:
        return None
    flow, seq, run_tag, check = RECORD.unpack(data)
    if check != check_word(run_tag, flow, seq):
        return None
    return run_tag, flow, seq


@dataclasses.dataclass
class GapMeter:
    """Largest gap between successive answers of one flow, from its first send.

    With `long_gap_s` set (bench/fwbench/traced_client.py does), it also keeps
    when each gap longer than that began and ended: [start, end], end None
    for a gap still open when the run ended; at most LONG_GAPS_KEPT."""

    LONG_GAPS_KEPT = 200  # bounded memory even for a flapping flow
    first_send: float | None = None
    last_answer: float | None = None
    max_gap: float = 0.0
    long_gap_s: float | None = None

    def __init__(self) -> None:
        self.long_gaps: list[list[float | None]] = []

    def sent(self, now: float) -> None:
        if self.first_send is None:
            self.first_send = now

    def answered(self, now: float) -> None:
        ref = self.last_answer if self.last_answer is not None else self.first_send
        if ref is not None:
            self.max_gap = max(self.max_gap, now - ref)
            self._keep(ref, now, now - ref)
        self.last_answer = now

    def close(self, end: float) -> None:
        """The run ended while this flow still waited for an answer."""
        ref = self.last_answer if self.last_answer is not None else self.first_send
        if ref is not None:
            self.max_gap = max(self.max_gap, end - ref)
            self._keep(ref, None, end - ref)

    def _keep(self, start: float, end: float | None, gap: float) -> None:
        long = self.long_gap_s is not None and gap > self.long_gap_s
        if long and len(self.long_gaps) < self.LONG_GAPS_KEPT:
            self.long_gaps.append([start, end])


@dataclasses.dataclass
class StreamStats:
    """One long-lived TCP stream, as its client sees it."""

    flow: int
    established: bool = False
    broken: str | None = None  # reset, eof, timeout, corrupt, connect-failed, connect-timeout, ...
    records_sent: int = 0
    records_echoed: int = 0
    gaps: GapMeter = dataclasses.field(default_factory=GapMeter)

    @property
    def outstanding(self) -> int:
        return self.records_sent - self.records_echoed

    @property
    def ok(self) -> bool:
        return self.established and self.broken is None and self.outstanding == 0

    def sent(self, now: float) -> None:
        self.records_sent += 1
        self.gaps.sent(now)

    def echoed(self, now: float) -> None:
        self.records_echoed += 1
        self.gaps.answered(now)

    def break_(self, reason: str) -> None:
        if self.broken is None:
            self.broken = reason

    def finish(self, end: float) -> None:
        if self.broken is not None or self.outstanding > 0:
            self.gaps.close(end)


@dataclasses.dataclass
class DatagramFlowStats:
    """One UDP or ping flow: requests by sequence number, replies by first arrival."""

    flow: int
    sent: int = 0
    replied: int = 0
    duplicates: int = 0
    foreign: int = 0  # replies that name a sequence number never sent
    seen: bytearray = dataclasses.field(default_factory=bytearray)  # bit per sequence number
    gaps: GapMeter = dataclasses.field(default_factory=GapMeter)
    last_request: float = 0.0

    def request(self, now: float) -> int:
        """Count one request; returns its sequence number."""
        seq = self.sent
        self.sent += 1
        if len(self.seen) * 8 < self.sent:
            self.seen.extend(bytes(max(64, len(self.seen))))
        self.gaps.sent(now)
        self.last_request = now
        return seq

    def answered(self, seq: int) -> bool:
        return 0 <= seq < self.sent and bool(self.seen[seq >> 3] & (1 << (seq & 7)))

    def reply(self, seq: int, now: float) -> None:
        if not 0 <= seq < self.sent:
            self.foreign += 1
            return
        byte, bit = seq >> 3, 1 << (seq & 7)
        if self.seen[byte] & bit:
            self.duplicates += 1
            return
        self.seen[byte] |= bit
        self.replied += 1
        self.gaps.answered(now)

    @property
    def lost(self) -> int:
        return self.sent - self.replied

    def finish(self, end: float) -> None:
        """A lost datagram is lost for good, so a loss in the middle is only a gap.
        If the flow's last request went unanswered, it was dark from its last
        reply until it stopped sending: that gap counts (not the drain after)."""
        if self.sent and not self.answered(self.sent - 1):
            self.gaps.close(min(end, self.last_request))


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)


def stall_histogram(stalls_s: Iterable[float]) -> dict[str, int]:
    labels = []
    low = 0
    for high in STALL_BINS_MS:
        labels.append(f"{low}-{high}")
        low = high
    labels.append(f">{low}")
    counts = dict.fromkeys(labels, 0)
    for s in stalls_s:
        ms = s * 1000.0
        for label, high in zip(labels, STALL_BINS_MS, strict=False):
            if ms < high:
                counts[label] += 1
                break
        else:
            counts[labels[-1]] += 1
    return counts


def _datagram_summary(flows: list[DatagramFlowStats]) -> dict[str, Any]:
    return {
        "flows": len(flows),
        "sent": sum(f.sent for f in flows),
        "replied": sum(f.replied for f in flows),
        "lost": sum(f.lost for f in flows),
        "duplicates": sum(f.duplicates for f in flows),
        "foreign": sum(f.foreign for f in flows),
        "longest_stall_ms": _ms(max((f.gaps.max_gap for f in flows), default=0.0)),
    }


def stall_threshold_s(interval_s: float) -> float:
    """The gap beyond which a stream counts as stalled, for this record interval."""
    return max(STALL_FLOOR_S, STALL_INTERVALS * interval_s)


def summarize(
    *,
    run_tag: int,
    interval_s: float,
    duration_s: float,
    streams: list[StreamStats],
    udp: list[DatagramFlowStats],
    ping: list[DatagramFlowStats],
    server: Mapping[str, Any] | None,
    stall_threshold_ms: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON summary of one run. Call `finish(end)` on every flow first.
    The stall threshold defaults to `stall_threshold_s(interval_s)`."""
    threshold_s = (
        stall_threshold_s(interval_s) if stall_threshold_ms is None else stall_threshold_ms / 1e3
    )
    broken: dict[str, int] = {}
    for s in streams:
        if s.broken is not None:
            broken[s.broken] = broken.get(s.broken, 0) + 1
    measured = [s for s in streams if s.gaps.first_send is not None]
    stalls = [s.gaps.max_gap for s in measured]
    stalled = sum(1 for x in stalls if x > threshold_s)
    tcp = {
        "streams": len(streams),
        "established": sum(1 for s in streams if s.established),
        "ok": sum(1 for s in streams if s.ok),
        "lost": sum(1 for s in streams if not s.ok),
        "broken": dict(sorted(broken.items())),
        "incomplete": sum(1 for s in streams if s.broken is None and s.outstanding > 0),
        "records_sent": sum(s.records_sent for s in streams),
        "records_echoed": sum(s.records_echoed for s in streams),
        "bytes_sent": sum(s.records_sent for s in streams) * RECORD_SIZE,
        "bytes_echoed": sum(s.records_echoed for s in streams) * RECORD_SIZE,
        "longest_stall_ms": _ms(max(stalls, default=0.0)),
    }
    udp_s = _datagram_summary(udp)
    ping_s = _datagram_summary(ping)
    server_run: Mapping[str, Any] = (server or {}).get("run") or {}
    server_dups = int(server_run.get("udp_duplicate_requests", 0))
    udp_s["server_requests"] = int(server_run.get("udp_requests", 0))
    udp_s["server_duplicate_requests"] = server_dups
    summary: dict[str, Any] = {
        "run": f"{run_tag:08x}",
        "duration_s": round(duration_s, 3),
        "interval_ms": _ms(interval_s),
        "connections": tcp["streams"],
        "established": tcp["established"],
        "lost": tcp["lost"],
        "lost_packets": udp_s["lost"] + ping_s["lost"],
        "duplicates": udp_s["duplicates"] + ping_s["duplicates"] + server_dups,
        "longest_stall_ms": tcp["longest_stall_ms"],
        # the share of streams whose longest gap is over the threshold
        "stall_threshold_ms": _ms(threshold_s),
        "stalled_share": round(stalled / len(stalls), 4) if stalls else 0.0,
        "stall_histogram_ms": stall_histogram(stalls),
        "tcp": tcp,
        "udp": udp_s,
        "ping": ping_s,
        "server": dict(server) if server is not None else None,
    }
    if extra:
        summary.update(extra)
    return summary


def human_line(summary: Mapping[str, Any]) -> str:
    tcp, udp, ping = summary["tcp"], summary["udp"], summary["ping"]
    return (
        f"run {summary['run']}: {summary['duration_s']}s, "
        f"tcp {tcp['established']}/{tcp['streams']} established, {tcp['lost']} lost, "
        f"longest stall {summary['longest_stall_ms']} ms, "
        f"{summary['stalled_share'] * 100:.1f}% stalled >{summary['stall_threshold_ms']:g}ms; "
        f"udp {udp['replied']}/{udp['sent']} replies, {udp['lost']} lost; "
        f"ping {ping['replied']}/{ping['sent']}, {ping['lost']} lost; "
        f"{summary['duplicates']} duplicates"
    )
