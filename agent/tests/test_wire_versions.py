"""Wire version negotiation for rolling upgrades (wire.py, availability.py).

Availability alone, then whole Nodes on test_node's hand-driven cluster
(fixed clock, stepped), then the decoder of the release that spoke only
version 1, taken from the repository's history, reading what this one sends.
"""

from __future__ import annotations

import dataclasses
import random
import subprocess
import sys
from pathlib import Path

import pytest
from test_config import GOOD, parse, with_change
from test_ct_helpers_sync import pasv_expectation
from test_node import Cluster, Host, config, conn_in_bucket, nid

from availability_manager import wire
from availability_manager.availability import Availability, Heartbeat, PeerRefused
from availability_manager.ct_messages import (
    CtExpect,
    CtNew,
    encode_ct,
    helper_of,
    with_helper,
)
from availability_manager.daemon.config import ConfigError
from availability_manager.node import Destination, Node
from availability_manager.node_events import InjectExpectations

FP = b"\x01" * 8
REPO = Path(__file__).resolve().parents[2]
V1_COMMIT = "425ed33"  # the last commit whose agent spoke only wire version 1


def hb(version: int, incarnation: int = 1, size: int = 2) -> Heartbeat:
    return Heartbeat(incarnation, size, FP, version, 0, 1, 0, 1)


# -- Availability ---------------------------------------------------------------


def test_cluster_version_is_the_lowest_any_heard_node_announces() -> None:
    av = Availability(1, 1, FP, interval=0.05, misses=3, wire_version=2, now=0.0)
    assert av.cluster_wire_version() == 2  # alone
    av.receive(hb(1), 2, 0.0)  # an old node is heard (not even admitted yet)
    assert av.cluster_wire_version() == 1
    av.receive(hb(2), 3, 0.01)
    assert av.cluster_wire_version() == 1
    # the v1 node is upgraded: it comes back with a higher incarnation and v2
    av.receive(hb(2, incarnation=2), 2, 0.02)
    assert av.cluster_wire_version() == 2
    # an old node rejoins (a timeout later: one restart per timeout): down again
    t = 0.02 + av.timeout
    av.receive(hb(1, incarnation=3), 2, t)
    assert av.cluster_wire_version() == 1
    # it goes silent (stopped for its upgrade): up once it timed out
    av.receive(hb(2), 3, t + 0.07)
    av.handle_timer(t + av.timeout + 0.001)
    assert 2 not in av.members()
    assert av.cluster_wire_version() == 2


def test_a_forced_v1_node_announces_and_speaks_v1() -> None:
    av = Availability(1, 1, FP, wire_version=1, now=0.0)
    (sent,) = av.messages_to_send(0.0)
    assert sent.wire_version == 1
    av.receive(hb(2), 2, 0.0)
    assert av.cluster_wire_version() == 1


def test_a_peer_announcing_a_version_below_ours_minimum_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wire, "WIRE_VERSION_MIN", 2)
    av = Availability(1, 1, FP, wire_version=2, now=0.0)
    av.receive(hb(1), 2, 0.0)
    assert list(av.iter_events()) == [PeerRefused(2, "wire-version-too-old")]
    assert av.cluster_wire_version() == 2


# -- Nodes ----------------------------------------------------------------------


def mixed_cluster(versions: dict[int, int]) -> Cluster:
    c = Cluster(0)
    c.hosts = {
        nid(i): Host(Node(config(i, max_wire_version=v), random.Random(i), c.now))
        for i, v in versions.items()
    }
    c.run(1.0)
    return c


def versions(c: Cluster) -> dict[int, int]:
    return {i: h.node.stats()["wire_version"] for i, h in c.hosts.items() if h.alive}


def restart(c: Cluster, i: int, version: int, incarnation: int) -> None:
    c.hosts[nid(i)] = Host(
        Node(
            config(
                i,
                max_wire_version=version,
                incarnation=incarnation,
                initial_counter=incarnation * 10**6,
            ),
            random.Random(i + 100),
            c.now,
        )
    )


def test_max_wire_version_is_validated() -> None:
    for bad in (0, wire.WIRE_VERSION + 1):
        with pytest.raises(ValueError, match="max_wire_version"):
            config(1, max_wire_version=bad)
    # the agent's config knob, default the build's version
    assert parse(GOOD).max_wire_version == wire.WIRE_VERSION
    assert parse(with_change("max_wire_version", 1)).max_wire_version == 1
    with pytest.raises(ConfigError, match="max_wire_version"):
        parse(with_change("max_wire_version", wire.WIRE_VERSION + 1))


def test_rolling_upgrade_raises_the_version_only_when_the_last_v1_node_is_gone() -> None:
    c = mixed_cluster({1: 1, 2: 1, 3: 1})
    assert set(versions(c).values()) == {1}
    # upgrade nodes 2 and 3 one at a time: the cluster speaks v1 while node 1 is v1
    for step, i in enumerate((2, 3)):
        c.hosts[nid(i)].alive = False
        c.run(0.5)
        restart(c, i, 2, incarnation=2 + step)
        c.run(1.0)
        assert set(versions(c).values()) == {1}, f"after upgrading node {i}"
    # an FTP control connection of an upgraded node is sent as v1 sends it
    bucket = min(c.host(2).owned)
    control = with_helper(conn_in_bucket(bucket, 7), "ftp")
    c.new_connection(2, control)
    for i in (1, 3):
        assert helper_of(c.host(i).node.peer_cache(nid(2))[control.key]) == ""
    # the last v1 node stops for its upgrade: the survivors rise to 2 and
    # re-send their tables, now with the helper names
    c.host(1).alive = False
    c.run(0.5)
    assert set(versions(c).values()) == {2}
    assert helper_of(c.host(3).node.peer_cache(nid(2))[control.key]) == "ftp"
    restart(c, 1, 2, incarnation=5)
    c.run(1.0)
    assert set(versions(c).values()) == {2}
    assert helper_of(c.host(1).node.peer_cache(nid(2))[control.key]) == "ftp"
    # an old node rejoining brings everybody back to 1
    c.host(3).alive = False
    c.run(0.5)
    restart(c, 3, 1, incarnation=9)
    c.run(1.0)
    assert set(versions(c).values()) == {1}
    assert all(c.host(i).node.stats()["wire_version_changes"] >= 1 for i in (1, 2))


def header_versions_sent(c: Cluster, i: int, duration: float = 0.2) -> set[int]:
    """The version bytes of the datagrams node i sends while the cluster runs."""
    node = c.host(i).node
    plain = node.datagrams_to_send
    seen: set[int] = set()

    def recording(now: float) -> list[tuple[bytes, Destination]]:
        out = plain(now)
        seen.update(wire.decode_header(d).version for d, _ in out)
        return out

    node.datagrams_to_send = recording  # type: ignore[method-assign]
    try:
        c.run(duration)
    finally:
        del node.datagrams_to_send
    return seen


def test_datagram_headers_carry_the_version_the_cluster_speaks() -> None:
    c = mixed_cluster({1: 1, 2: 2, 3: 2})
    assert header_versions_sent(c, 1) == {1}
    assert header_versions_sent(c, 2) == {1}  # a v2 node, but a v1 member is there
    c.host(1).alive = False
    c.run(0.5)
    assert header_versions_sent(c, 2) == {2}


def test_takeover_injects_the_masters_helper_and_then_its_expectations() -> None:
    c = mixed_cluster({1: 2, 2: 2, 3: 2})
    owner = c.host(1)
    bucket = min(owner.owned)
    control = with_helper(conn_in_bucket(bucket, 3), "ftp")
    c.new_connection(1, control)
    exp = pasv_expectation(control)
    owner.node.expectation_new(exp, c.now)
    c.pump()
    owner.alive = False
    c.run(0.5)
    taker = next(h for h in c.hosts.values() if h.alive and bucket in h.owned)
    order = [
        type(e).__name__
        for _, e in taker.events
        if type(e).__name__ in ("InjectConnections", "InjectExpectations")
    ]
    injected = [e for _, e in taker.events if isinstance(e, InjectExpectations)]
    assert len(injected) == 1 and [x.key for x in injected[0].exps] == [exp.key]
    assert injected[0].exps[0].bucket == bucket
    assert order.index("InjectConnections") < order.index("InjectExpectations")
    assert helper_of(taker.table[control.key]) == "ftp"
    assert taker.node.stats()["injected_expectations"] == 1


# -- the previous release's decoder -------------------------------------------------


def _v1_tree(tmp: Path) -> Path | None:
    """The agent package of the v1 release, from git history (None without it)."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", V1_COMMIT, "agent/availability_manager"],
            check=True,
            capture_output=True,
            timeout=60,
        ).stdout
    except (subprocess.CalledProcessError, FileNotFoundError, subprocess.TimeoutExpired):
        return None
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True, timeout=60)
    return tmp / "agent"


def test_the_v1_release_decodes_what_a_v2_node_sends(tmp_path: Path) -> None:
    root = _v1_tree(tmp_path)
    if root is None:
        pytest.skip(f"repository history without {V1_COMMIT}")
    control = with_helper(conn_in_bucket(4, 1), "ftp")
    exp = dataclasses.replace(pasv_expectation(control), bucket=4)
    # one payload mixing the new message between two old ones, as the Node packs them
    payload = (
        encode_ct(CtNew.from_connection(control))
        + encode_ct(CtExpect.from_expectation(exp))
        + encode_ct(CtNew.from_connection(conn_in_bucket(5, 2)))
    )
    script = (
        "import sys\n"
        "from availability_manager import wire, ct_messages\n"
        "assert wire.WIRE_VERSION == 1\n"
        "msgs = wire.decode_messages(bytes.fromhex(sys.argv[1]))\n"
        "print(' '.join(f'{type(m).__name__}:{m.to_connection().bucket}' for m in msgs))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, payload.hex()],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["CtNew:4", "CtNew:5"]  # the expectation was skipped
