"""The arithmetic of bench/early_drop_cost.py, kept apart so that its unit
tests import it without the lab: d (what a node pays for a packet it drops
as foreign, as a share of what forwarding one costs) and issue 13's gain
model."""

from __future__ import annotations

import statistics
from typing import Any

MODES = ("off", "early")  # the early chain off (today's ruleset) and on


def gain(d: float, n: int) -> float:
    """Issue 13's model: N nodes forward 1 / (1/N + d (N-1)/N) times one node."""
    return 1.0 / (1.0 / n + d * (n - 1) / n)


def analyse(rounds: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Medians over rounds of the per-packet costs, and d per round."""
    cost = {
        k: statistics.median(r[k]["us_per_packet"] for r in rounds) for k in rounds[0]
    }  # fmt: skip
    d: dict[str, float] = {}
    for mode in MODES:
        for case in ("foreign_unknown", "foreign_known"):
            per_round = []
            for r in rounds:
                base = r["sender_only"]["us_per_packet"]
                fwd = r[f"{mode}/forward"]["us_per_packet"] - base
                per_round.append((r[f"{mode}/{case}"]["us_per_packet"] - base) / fwd)
            d[f"{mode}/{case}"] = statistics.median(per_round)
        base_fwd = [
            r[f"{mode}/forward"]["us_per_packet"] - r["sender_only"]["us_per_packet"]
            for r in rounds
        ]
        floor = [
            (r["ingress_drop"]["us_per_packet"] - r["sender_only"]["us_per_packet"]) / f
            for r, f in zip(rounds, base_fwd, strict=True)
        ]
        d[f"{mode}/ingress_floor"] = statistics.median(floor)
        hook = [
            (r["prerouting_drop"]["us_per_packet"] - r["sender_only"]["us_per_packet"])
            / f
            for r, f in zip(rounds, base_fwd, strict=True)
        ]
        d[f"{mode}/prerouting_floor"] = statistics.median(hook)
    # the early chain's foreign packet against today's forwarded one: the
    # early chain makes forwarding dearer too, and one node alone would run
    # without it
    d["early/foreign_unknown_vs_off_forward"] = statistics.median(
        (
            r["early/foreign_unknown"]["us_per_packet"]
            - r["sender_only"]["us_per_packet"]
        )
        / (r["off/forward"]["us_per_packet"] - r["sender_only"]["us_per_packet"])
        for r in rounds
    )
    forward_ratio = statistics.median(
        (r["early/forward"]["us_per_packet"] - r["sender_only"]["us_per_packet"])
        / (r["off/forward"]["us_per_packet"] - r["sender_only"]["us_per_packet"])
        for r in rounds
    )
    return {"cost_us": cost, "d": d, "forward_early_vs_off": forward_ratio}
