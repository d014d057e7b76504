"""Parsers of what the daemons and the generator print, on captured output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fwbench import gen, report
from fwbench.baseline_cluster import external_cache_count
from fwbench.syncloss import _first_pairs

CONNTRACKD_STATS = """cache internal:
current active connections:\t           7
connections created:\t\t           9\tfailed:\t           0

cache external:
current active connections:\t       12345
connections created:\t\t       12350\tfailed:\t           0

traffic processed:
"""


def test_external_cache_count_reads_the_external_section_only() -> None:
    assert external_cache_count(CONNTRACKD_STATS) == 12345


def test_external_cache_count_is_zero_without_output() -> None:
    assert external_cache_count("") == 0


def test_generator_output_is_summed_over_senders() -> None:
    out = (
        "sender 0 sent 500 errors 1 start 100.5 end 101.5\n"
        "sender 1 sent 700 errors 0 start 100.0 end 101.0\n"
        "total start 100.0 end 101.5\n"
    )
    offer = gen.parse(out)
    assert (offer.sent, offer.errors, offer.start, offer.end) == (1200, 1, 100.0, 101.5)
    assert offer.rate == pytest.approx(800.0)


def test_generator_without_result_lines_is_an_error() -> None:
    with pytest.raises(gen.GeneratorError):
        gen.parse("socket(SOCK_RAW): Operation not permitted\n")


def test_generator_argv_refuses_port_overflow() -> None:
    with pytest.raises(ValueError):
        gen.argv("192.0.2.100", "203.0.113.100", 65000, 64000 * 600, 1000.0)


def test_conntrack_line_first_pairs_are_the_original_direction() -> None:
    line = (
        "udp      17 29 src=192.0.2.100 dst=203.0.113.100 sport=1025 dport=20001 "
        "[UNREPLIED] src=203.0.113.100 dst=192.0.2.100 sport=20001 dport=1025 mark=0 use=1"
    )
    pairs = _first_pairs(line)
    assert (pairs["sport"], pairs["dport"]) == ("1025", "20001")


def test_median_min_max_skips_missing_values() -> None:
    assert report.mmm([3, None, 1, 2]) == (2.0, 1.0, 3.0)
    assert report.mmm([None]) is None
    assert report.fmt_mmm([None]) == "n/a"


def test_rerunning_one_side_keeps_the_other_sides_results(tmp_path: Path) -> None:
    old = [
        {"cluster": "keepalived default", "x": 1},
        {"cluster": "fwcluster", "x": 2},
    ]
    (tmp_path / "compare_sync.json").write_text(json.dumps(old))
    new = [{"cluster": "fwcluster", "x": 3}]
    merged = report.keep_previous(tmp_path, "sync", new, "fwcluster")
    assert merged == [
        {"cluster": "keepalived default", "x": 1},
        {"cluster": "fwcluster", "x": 3},
    ]


def test_rerunning_both_sides_keeps_nothing(tmp_path: Path) -> None:
    (tmp_path / "compare_sync.json").write_text(json.dumps([{"cluster": "fwcluster"}]))
    assert report.keep_previous(tmp_path, "sync", [], "baseline,fwcluster") == []
