"""What the failure tests of one node (fw3) stepping back share: waiting,
reading who owns which bucket, and counting fw3's connections as its peers
hold them. Used by test_link_failure.py and test_health_failures.py."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from test_cluster_behaviour import ctl, status

from fwcluster_lab.state import LabState

NODES = ("fw1", "fw2", "fw3")
SURVIVORS = ("fw1", "fw2")


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, poll: float = 0.02) -> float:
    """Seconds until `cond` held; fails the test after `timeout`."""
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, f"not within {timeout} s: {cond}"
        time.sleep(poll)
    return time.monotonic() - t0


def owned(state: LabState) -> dict[str, set[int]]:
    return {n: set(status(state, n)["owned"]) for n in NODES}


def fw3_stepped_back(state: LabState) -> bool:
    o = owned(state)
    return not o["fw3"] and o["fw1"] | o["fw2"] == set(range(256))


def fw3_back(state: LabState) -> bool:
    o = owned(state)
    return len(o["fw3"]) in (85, 86) and set().union(*o.values()) == set(range(256))


def fw3_connections(state: LabState) -> int:
    """fw3's connections as the survivors' caches hold them."""
    victim = status(state, "fw3")["node_id"]
    cached = [json.loads(ctl(state, n, "connections", "--json"))["peers"] for n in SURVIVORS]
    return min(int(peers[victim]["entries"]) for peers in cached)
