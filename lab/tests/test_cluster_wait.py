"""When `lab wait` considers the cluster settled, on hand-made agent answers."""

from __future__ import annotations

from typing import Any

from fwcluster_lab.cluster import settled

IDS = {"fw1": "198.51.100.11", "fw2": "198.51.100.12"}


def status(owned: list[int], members: list[str], ready: bool = True) -> dict[str, Any]:
    return {
        "ready": ready,
        "stable": ready,
        "buckets": 4,
        "owned": owned,
        "members": [{"node": m} for m in members],
    }


def test_settled_when_all_agree_and_every_bucket_is_owned() -> None:
    both = ["198.51.100.11", "198.51.100.12"]
    assert settled({"fw1": status([0, 1], both), "fw2": status([2, 3], both)}, IDS) == ""


def test_not_settled_reasons() -> None:
    both = ["198.51.100.11", "198.51.100.12"]
    assert "does not answer" in settled({"fw1": status([0, 1], both), "fw2": None}, IDS)
    assert "not stable" in settled({"fw1": status([0, 1, 2, 3], both, ready=False)}, IDS)
    # fw1 alone must see only itself
    assert "sees members" in settled({"fw1": status([0, 1, 2, 3], both)}, IDS)
    assert "3 of 4 buckets" in settled({"fw1": status([0, 1], both), "fw2": status([2], both)}, IDS)
    assert settled({}, IDS) == "no living agents"
