"""What the simulator (and the tests) inject into a Node, never shipped in its types.

Owns the Node subclass the simulator runs (`ObservedNode`: its reliable-broadcast
deliveries feed the FIFO invariant) and the known-bad variants the tests use to
show that the invariants bite (`ImmediateRelease`), and what a hostile member
can seal besides its honest traffic (`ObservedNode.forge_claim_of_everything`).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from .. import wire
from ..availability import NodeDown, NodeUp
from ..broadcast import BroadcastEvent, Delivered, OutOfSync
from ..node import Node
from ..node_config import NodeConfig
from ..ranges import RangeDistribution, RangeState
from ..types import NodeId
from .invariants import Invariants


class ImmediateRelease(RangeDistribution):
    """Known-bad: a bucket is dropped as soon as it leaves the aim, before
    anyone claims it, which opens holes in transit (the `hole` invariant)."""

    def _on_new_view(self, now: float) -> None:
        self._release(self._owned - self._aimed, now)

    def _on_claim(self, source: NodeId, now: float) -> None:
        pass  # already released on the view change


class ObservedNode(Node):
    """A Node whose deliveries and stream restarts the FIFO invariant sees, with
    the range distribution of the run (`ranges`: the class, or a bad variant)."""

    def __init__(
        self,
        config: NodeConfig,
        rng: random.Random,
        now: float,
        *,
        invariants: Invariants,
        clock: Callable[[], float],
        ranges: type[RangeDistribution] = RangeDistribution,
    ) -> None:
        self._invariants = invariants
        self._clock = clock
        self._ranges_class = ranges
        super().__init__(config, rng, now)

    def _new_ranges(self, config: NodeConfig, now: float) -> RangeDistribution:
        return self._ranges_class(
            config.node_id,
            config.settings.buckets,
            config.settings.hash_seed,
            now=now,
            handover_delay=config.handover_delay,
            handover_quantum=config.handover_quantum,
        )

    def _peer_up(self, event: NodeUp, now: float) -> None:
        self._invariants.restart_stream(self.node_id, event.node)
        super()._peer_up(event, now)

    def _peer_down(self, event: NodeDown, now: float) -> None:
        self._invariants.restart_stream(self.node_id, event.node)
        super()._peer_down(event, now)

    def _on_broadcast(self, event: BroadcastEvent, now: float) -> None:
        if isinstance(event, Delivered):
            self._invariants.delivered(self.node_id, event.source, event.seq, self._clock())
        elif isinstance(event, OutOfSync) and event.role == "receiver":
            self._invariants.restart_stream(self.node_id, event.peer)
        super()._on_broadcast(event, now)

    def forge_claim_of_everything(self) -> bytes:
        """A datagram a buggy or hostile member can send: a claim of every
        bucket in the current view (right digest), sealed with the cluster
        key under this node's id and its own counter (so no replay window
        refuses it)."""
        buckets = self.config.settings.buckets
        claim = RangeState.of(frozenset(range(buckets)), buckets, self._ranges.digest())
        return self._encryption.seal(wire.encode_messages([claim]))
