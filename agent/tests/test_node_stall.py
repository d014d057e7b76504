"""A node whose host stalls past its peers' patience (SIGSTOP, CPU
starvation): the peers take its buckets, and when it runs again they hand
them back, each at its own whole-second instant. Driven by hand like
test_node.py, with the runtime's fence modelled: the stalled node's data
plane forwards nothing while `Node.relearning`.
"""

from __future__ import annotations

import random

from test_node import BUCKETS, STEP, Cluster, Host, config, nid, sync_datagrams

from availability_manager import node_events as ev
from availability_manager.node import Node

OFFSET = 5000.0  # every node's wall clock: node time + OFFSET


class StallingCluster(Cluster):
    """Cluster whose host `stalled` runs no timer and reads nothing; what
    the others send it waits in its socket until it runs again."""

    def __init__(self) -> None:
        super().__init__(0)
        self.stalled: Host | None = None
        self.queued: list[bytes] = []

    def pump(self) -> None:
        moving = True
        while moving:
            moving = False
            for h in self.hosts.values():
                if h is self.stalled:
                    continue
                self._perform(h)
                for dgram in sync_datagrams(h.node, self.now):
                    moving = True
                    for other in self.hosts.values():
                        if other is self.stalled:
                            self.queued.append(dgram)
                        elif other is not h:
                            other.node.receive_datagram(dgram, self.now)

    def run(self, duration: float) -> None:
        end = self.now + duration
        while self.now < end - 1e-9:
            self.now = round(self.now + STEP, 6)
            for h in self.hosts.values():
                t = h.node.next_timer()
                if h is not self.stalled and t is not None and t <= self.now:
                    h.node.handle_timer(self.now)
            self.pump()
            self.sample()

    def sample(self) -> None:
        """Called after every step (the test records forwarding here)."""

    def resume(self, since: float) -> None:
        """The stalled host runs again: it is told of its stall first, as the
        runtime does on its first input, then reads what waited."""
        h, self.stalled = self.stalled, None
        assert h is not None
        h.node.host_stalled(since, self.now)
        for dgram in self.queued:
            h.node.receive_datagram(dgram, self.now)
        self.queued = []
        self.pump()


def settled(c: StallingCluster, count: int) -> StallingCluster:
    """`count` nodes with the daemon's handovers (make-before-break, whole
    seconds) and one wall clock, settled."""
    for i in range(1, count + 1):
        cfg = config(i, handover_delay=0.1, handover_quantum=1.0)
        c.hosts[nid(i)] = Host(Node(cfg, random.Random(i), c.now))
        c.hosts[nid(i)].node.set_clock_offset(OFFSET)
    c.run(1.5)
    return c


def forwarded(h: Host, wall: float) -> frozenset[int]:
    """What h's data plane forwards at wall-clock `wall`, as last programmed."""
    changes = [e for _, e in h.events if isinstance(e, ev.ActiveBucketsChanged)]
    if not changes:
        return frozenset()
    last = changes[-1]
    out = set(last.active)
    for w in last.switches:
        if (wall >= w.at) if w.start else (wall < w.at):
            out |= w.buckets
    return frozenset(out)


class Recording(StallingCluster):
    def __init__(self) -> None:
        super().__init__()
        self.samples: list[tuple[float, list[int]]] = []  # (now, forwarders per bucket)

    def sample(self) -> None:
        counts = [0] * BUCKETS
        for h in self.hosts.values():
            if h is self.stalled or h.node.relearning:  # the runtime's fence
                continue
            for b in forwarded(h, self.now + OFFSET):
                counts[b] += 1
        self.samples.append((self.now, counts))


def test_a_node_back_from_a_long_stall_starts_each_bucket_at_its_givers_instant() -> None:
    """Node 1 stalls 1 s (its peers declare it dead after 0.17 s). Back, it
    forwards nothing until it has read their claims, then starts every
    bucket at the instant its taker hands it back: from its return on every
    bucket has exactly one forwarder at every step. Kept as forwarded from
    before the stall (make-before-break), its buckets were forwarded by
    nobody from the first peer's handback until the node was stable."""
    c = settled(Recording(), 3)
    assert isinstance(c, Recording)
    stalled = c.host(1)
    own = stalled.owned
    assert own and forwarded(stalled, c.now + OFFSET) == own
    since = c.now
    c.stalled = stalled
    c.run(1.0)
    peers = c.host(2), c.host(3)
    assert forwarded(peers[0], c.now + OFFSET) | forwarded(peers[1], c.now + OFFSET) == set(
        range(BUCKETS)
    ), "the peers took the stalled node's buckets"
    c.resume(since)
    assert stalled.node.relearning
    back = c.now
    c.run(3.0)
    assert stalled.owned == own, "the stalled node got its share back"
    assert not stalled.node.relearning
    for t, counts in c.samples:
        if t > back:
            assert counts == [1] * BUCKETS, (t, counts)
    # a second instant: the two peers handed back at different whole seconds
    # or at one; either way the test above held at every step
    starts = {
        w.at
        for _, e in stalled.events
        if isinstance(e, ev.ActiveBucketsChanged)
        for w in e.switches
        if w.start
    }
    assert starts, "the node started its buckets at its peers' handoff instants"


def test_a_short_stall_leaves_the_forwarding_as_it_was() -> None:
    """A stall shorter than the peers' patience: nobody took anything, the
    node keeps forwarding its buckets and nothing is relearnt."""
    c = settled(StallingCluster(), 2)
    h = c.host(1)
    own = h.owned
    since = c.now
    c.stalled = h
    c.run(0.04)  # less than a heartbeat timeout less an interval (0.11 s) since the last
    c.resume(since)
    assert not h.node.relearning
    c.run(0.5)
    assert h.owned == own and forwarded(h, c.now + OFFSET) == own
