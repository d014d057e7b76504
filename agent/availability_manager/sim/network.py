"""The simulated sync network: a broadcast segment with faults.

Owns who can hear whom and what happens to each datagram on the way: loss,
duplication, delay with jitter (which reorders), and partitions. It knows
nothing of the protocol; datagrams are opaque bytes. Every random draw comes
from the one `random.Random` the simulator passes in, in a fixed order, so a
run replays exactly from its seed.

A partition splits the nodes into groups; a datagram only reaches nodes of the
sender's group. The network does not decide whether a partition also cuts the
data plane: that is the runner's business (see `runner.Cluster.partition`).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable

from ..types import NodeId
from .clock import Scheduler


@dataclasses.dataclass(frozen=True)
class LinkProfile:
    """Behaviour of a (directed) link. Probabilities are 0..1, times in seconds."""

    loss: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.0002  # one switch hop on a LAN
    jitter: float = 0.0001  # uniform extra delay: > 0 reorders datagrams close in time

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {value}")
        if self.delay < 0 or self.jitter < 0:
            raise ValueError("delay and jitter must not be negative")


Deliver = Callable[[NodeId, NodeId, bytes], None]  # (receiver, sender, datagram)


@dataclasses.dataclass
class NetworkStats:
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    partitioned: int = 0


class Network:
    def __init__(self, scheduler: Scheduler, rng: random.Random, deliver: Deliver) -> None:
        self._scheduler = scheduler
        self._rng = rng
        self._deliver = deliver
        self._attached: list[NodeId] = []  # kept sorted: the broadcast order is deterministic
        self._default = LinkProfile()
        self._links: dict[tuple[NodeId, NodeId], LinkProfile] = {}
        self._group: dict[NodeId, int] = {}  # empty: no partition
        self.stats = NetworkStats()

    # -- topology --------------------------------------------------------------

    def attach(self, node: NodeId) -> None:
        if node not in self._attached:
            self._attached.append(node)
            self._attached.sort()

    def detach(self, node: NodeId) -> None:
        """The node's interface is gone (crash): datagrams to it vanish, even those in flight."""
        if node in self._attached:
            self._attached.remove(node)

    def attached(self) -> tuple[NodeId, ...]:
        return tuple(self._attached)

    def set_default(self, profile: LinkProfile) -> None:
        self._default = profile

    def set_link(self, src: NodeId, dst: NodeId, profile: LinkProfile | None) -> None:
        if profile is None:
            self._links.pop((src, dst), None)
        else:
            self._links[(src, dst)] = profile

    def clear_links(self) -> None:
        self._links.clear()

    def partition(self, groups: Iterable[Iterable[NodeId]]) -> None:
        """Only nodes of one group hear each other; unlisted nodes form one more group."""
        self._group = {}
        for index, group in enumerate(groups, start=1):
            for node in group:
                self._group[node] = index

    def heal(self) -> None:
        self._group = {}

    def partitioned(self) -> bool:
        return bool(self._group)

    def can_reach(self, src: NodeId, dst: NodeId) -> bool:
        return self._group.get(src, 0) == self._group.get(dst, 0)

    def faulty(self) -> bool:
        """True while anything degrades the network (loss, partition, ...)."""
        if self._group or self._links:
            return True
        d = self._default
        return d.loss > 0 or d.duplicate > 0

    # -- traffic ---------------------------------------------------------------

    def broadcast(self, src: NodeId, datagram: bytes) -> None:
        self.stats.sent += 1
        now = self._scheduler.now
        rng = self._rng
        for dst in self._attached:
            if dst == src:
                continue
            if not self.can_reach(src, dst):
                self.stats.partitioned += 1
                continue
            link = self._links.get((src, dst), self._default)
            copies = 1
            if link.duplicate and rng.random() < link.duplicate:
                copies = 2
                self.stats.duplicated += 1
            for _ in range(copies):
                if link.loss and rng.random() < link.loss:
                    self.stats.lost += 1
                    continue
                delay = link.delay + (rng.random() * link.jitter if link.jitter else 0.0)
                self._scheduler.at(now + delay, self._arrival(dst, src, datagram))

    def _arrival(self, dst: NodeId, src: NodeId, datagram: bytes) -> Callable[[], None]:
        def arrive() -> None:
            # A node that crashed (or a partition that formed) after the send
            # still loses the datagram: check again on arrival.
            if dst in self._attached and self.can_reach(src, dst):
                self.stats.delivered += 1
                self._deliver(dst, src, datagram)

        return arrive
