"""Counter definitions of the traffic generator, driven by hand on a fixed clock."""

from __future__ import annotations

from typing import Any

import pytest

from fwcluster_lab.traffic_stats import (
    RECORD_SIZE,
    DatagramFlowStats,
    GapMeter,
    StreamStats,
    human_line,
    make_record,
    parse_record,
    stall_histogram,
    summarize,
)


def test_record_round_trip_and_every_single_byte_change_is_rejected() -> None:
    rec = make_record(0xDEADBEEF, 7, 123456)
    assert len(rec) == RECORD_SIZE
    assert parse_record(rec) == (0xDEADBEEF, 7, 123456)
    for i in range(RECORD_SIZE):
        mangled = bytearray(rec)
        mangled[i] ^= 0x01
        assert parse_record(bytes(mangled)) is None, f"flip in byte {i} not caught"
    assert parse_record(rec[:-1]) is None
    assert parse_record(rec + b"\0") is None


def test_records_of_other_runs_flows_and_seqs_differ() -> None:
    base = make_record(1, 2, 3)
    assert base != make_record(9, 2, 3)
    assert base != make_record(1, 9, 3)
    assert base != make_record(1, 2, 9)


def test_gap_meter_counts_from_first_send_and_keeps_the_largest_gap() -> None:
    g = GapMeter()
    now = 0.0
    g.sent(now)
    for step in (0.02, 0.02, 0.5, 0.02):
        now += step
        g.answered(now)
    assert g.max_gap == pytest.approx(0.5)
    g.sent(now + 10.0)  # a later send does not move the origin
    assert g.first_send == 0.0


def test_gap_meter_keeps_long_gaps_only_when_asked() -> None:
    plain, traced = GapMeter(), GapMeter()
    traced.long_gap_s = 0.1
    for g in (plain, traced):
        g.sent(0.0)
        for t in (0.02, 0.52, 0.54):
            g.answered(t)
        g.close(0.9)  # still waiting at the end: an open gap
    assert plain.long_gaps == []
    assert traced.long_gaps == [[0.02, 0.52], [0.54, None]]
    assert traced.max_gap == plain.max_gap == pytest.approx(0.5)


def test_gap_meter_first_answer_gap_is_measured_from_first_send() -> None:
    g = GapMeter()
    g.sent(1.0)
    g.answered(1.3)
    assert g.max_gap == pytest.approx(0.3)


def test_stream_ok_only_when_established_unbroken_and_fully_echoed() -> None:
    s = StreamStats(0, established=True)
    s.sent(0.0)
    s.sent(0.02)
    s.echoed(0.021)
    assert not s.ok and s.outstanding == 1
    s.echoed(0.041)
    assert s.ok
    s.break_("reset")
    s.break_("eof")  # the first reason sticks
    assert not s.ok and s.broken == "reset"
    assert not StreamStats(1).ok  # never established


def test_stream_stalled_at_the_end_counts_the_gap_to_the_end() -> None:
    s = StreamStats(0, established=True)
    s.sent(0.0)
    s.echoed(0.02)
    s.sent(0.04)  # never answered
    s.finish(3.0)
    assert s.gaps.max_gap == pytest.approx(2.98)
    done = StreamStats(1, established=True)
    done.sent(0.0)
    done.echoed(0.02)
    done.finish(3.0)  # nothing owed: the quiet tail is not a stall
    assert done.gaps.max_gap == pytest.approx(0.02)


def test_datagram_flow_duplicates_foreign_and_loss() -> None:
    f = DatagramFlowStats(0)
    seqs = [f.request(i * 0.02) for i in range(5)]
    assert seqs == [0, 1, 2, 3, 4]
    f.reply(0, 0.01)
    f.reply(0, 0.011)  # same seq again: a duplicate delivery
    f.reply(2, 0.05)
    f.reply(99, 0.06)  # never sent
    assert (f.replied, f.duplicates, f.foreign, f.lost) == (2, 1, 1, 3)


def test_datagram_flow_tracks_many_sequence_numbers() -> None:
    f = DatagramFlowStats(0)
    for i in range(5000):
        f.request(float(i))
    for i in range(0, 5000, 2):
        f.reply(i, float(i))
    for i in range(0, 5000, 2):
        f.reply(i, float(i))
    assert (f.replied, f.duplicates, f.lost) == (2500, 2500, 2500)


def test_stall_histogram_bins() -> None:
    h = stall_histogram([0.0, 0.049, 0.05, 0.099, 0.3, 7.0])
    assert h["0-50"] == 2
    assert h["50-100"] == 2
    assert h["200-500"] == 1
    assert h[">5000"] == 1
    assert sum(h.values()) == 6


def _stream(flow: int, gap: float, broken: str | None = None) -> StreamStats:
    s = StreamStats(flow, established=True)
    s.sent(0.0)
    s.echoed(gap)
    if broken:
        s.break_(broken)
    return s


def test_summary_counts() -> None:
    streams = [_stream(0, 0.02), _stream(1, 0.2), _stream(2, 0.03, "reset"), StreamStats(3)]
    streams[3].break_("connect-timeout")
    udp = DatagramFlowStats(0)
    udp.request(0.0)
    udp.reply(0, 0.01)
    udp.reply(0, 0.02)
    server = {"run": {"udp_requests": 2, "udp_duplicate_requests": 1}}
    s = summarize(
        run_tag=0xABC,
        interval_s=0.02,
        duration_s=1.0,
        streams=streams,
        udp=[udp],
        ping=[],
        server=server,
    )
    assert s["connections"] == 4
    assert s["established"] == 3
    assert s["lost"] == 2
    assert s["tcp"]["broken"] == {"connect-timeout": 1, "reset": 1}
    assert s["duplicates"] == 2  # one reply seen twice + one request seen twice
    assert s["longest_stall_ms"] == pytest.approx(200.0)
    # three streams sent something; one of them stalled over 3 intervals (60 ms)
    assert s["stall_threshold_ms"] == 60.0
    assert s["stalled_share"] == pytest.approx(1 / 3, abs=1e-3)
    assert s["run"] == "00000abc"
    assert "1 lost" not in human_line(s) and "2 lost" in human_line(s)


@pytest.mark.parametrize(
    ("interval_s", "threshold_ms", "share"),
    [(0.01, 50.0, 2 / 3), (0.05, 150.0, 1 / 3), (0.1, 300.0, 0.0)],
)
def test_a_stall_is_a_gap_the_record_interval_cannot_explain(
    interval_s: float, threshold_ms: float, share: float
) -> None:
    # gaps of one interval are healthy, whatever the interval: never a stall
    streams = [_stream(0, 0.1), _stream(1, 0.2), _stream(2, interval_s)]
    kw: dict[str, Any] = {"run_tag": 1, "duration_s": 1.0, "udp": [], "ping": [], "server": None}
    s = summarize(interval_s=interval_s, streams=streams, **kw)
    assert s["stall_threshold_ms"] == threshold_ms
    assert s["stalled_share"] == pytest.approx(share, abs=1e-3)


def test_stall_threshold_can_be_chosen() -> None:
    streams = [_stream(0, 0.1), _stream(1, 0.3), _stream(2, 0.02)]
    s = summarize(
        run_tag=1,
        interval_s=0.1,
        duration_s=1.0,
        streams=streams,
        udp=[],
        ping=[],
        server=None,
        stall_threshold_ms=250.0,
    )
    assert s["stalled_share"] == pytest.approx(1 / 3, abs=1e-3)
    assert s["stall_threshold_ms"] == 250.0
    assert "stalled >250ms" in human_line(s)


def test_datagram_flow_loss_in_the_middle_is_only_a_gap() -> None:
    f = DatagramFlowStats(0)
    now = 0.0
    for seq in range(10):
        f.request(now)
        if seq != 4:  # one reply lost in the middle
            f.reply(seq, now + 0.001)
        now += 0.02
    f.finish(now + 2.0)  # a long drain after the last request must not count
    assert f.lost == 1
    assert f.gaps.max_gap == pytest.approx(0.04, abs=1e-6)


def test_datagram_flow_dark_at_the_end_stalls_until_its_last_request() -> None:
    f = DatagramFlowStats(0)
    now = 0.0
    for seq in range(10):
        f.request(now)
        if seq < 5:
            f.reply(seq, now + 0.001)
        now += 0.02
    f.finish(now + 2.0)
    # last reply at 0.081, last request at 0.18
    assert f.gaps.max_gap == pytest.approx(0.18 - 0.081, abs=1e-6)


def test_send_wheel_spreads_flows_evenly_over_the_interval() -> None:
    from fwcluster_lab.traffic import Client, parse_args

    args = parse_args(["--server", "192.0.2.1", "--tcp", "1000", "--ping", "10"])
    client = Client(args, run_tag=1)
    wheel = client.build_wheel(20)
    sizes = [len(tcp) + len(udp) + len(ping) for tcp, udp, ping in wheel]
    assert sum(sizes) == 1010
    assert max(sizes) - min(sizes) <= 1
    flows = [st.stats.flow for tcp, _, _ in wheel for st in tcp]
    assert sorted(flows) == list(range(1000))  # every stream exactly once


def test_icmp_echo_checksum_verifies() -> None:
    from fwcluster_lab.traffic import icmp_checksum, icmp_echo

    packet = icmp_echo(0x1234, 7, make_record(1, 2, 3))
    assert icmp_checksum(packet) == 0  # a correct checksum sums to zero
    assert packet[0] == 8 and packet[4:6] == b"\x12\x34"


def test_server_run_counters_mark_duplicates_and_bound_memory() -> None:
    from fwcluster_lab.traffic_server import MAX_SEQ_TRACKED, RunCounters

    run = RunCounters()
    assert run.mark(3, 0) is False
    assert run.mark(3, 1000) is False
    assert run.mark(3, 0) is True
    assert run.mark(4, 0) is False  # another flow, same seq: not a duplicate
    assert run.mark(3, MAX_SEQ_TRACKED) is None
    assert run.udp_unique_requests == 3
