"""Synthetic connections for the simulator: the traffic the data plane sees.

Owns the ground truth of which connections exist and where each packet of them
lands. A connection's bucket is a stable, symmetric hash of its tuple modulo
the bucket count (the simulator's stand-in for the data plane's seeded jhash).

The rules mirror the real data plane (docs/architecture.md):
- a NEW connection is accepted by every reachable node whose programmed bucket
  set holds its bucket (usually one; two while a bucket is in transit) and is
  reported to each such Node with `connection_new`; if no node owns the bucket
  the attempt fails (a hole, reported to the invariant checker);
- a later packet reaches every reachable node and passes on each node that has
  the entry in its table (tcp_loose=0: the others drop it as INVALID); its
  state change is reported with `connection_update` and its close with
  `connection_destroy`; if no reachable node has the entry, the connection is
  lost.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import random
import struct
from collections.abc import Callable, Sequence
from typing import Protocol

from ..connection import (
    IPS_ASSURED,
    IPS_SEEN_REPLY,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ESTABLISHED,
    TCP_SYN_SENT,
    Connection,
    Tuple,
)
from ..types import NodeId
from .clock import Scheduler
from .kernel import Kernel

RETRIES = 5  # retransmissions of a packet that found no node with its entry
RETRY_AFTER = 0.2  # seconds between them (a TCP RTO is at least 200 ms)

_CLIENTS_V4 = ipaddress.IPv4Network("198.51.100.0/24")
_SERVERS_V4 = ipaddress.IPv4Network("203.0.113.0/24")
_CLIENTS_V6 = ipaddress.IPv6Network("2001:db8:c::/64")
_SERVERS_V6 = ipaddress.IPv6Network("2001:db8:5::/64")


def bucket_of(proto: int, orig: Tuple, buckets: int, seed: int) -> int:
    """Symmetric: both directions of a connection land in the same bucket."""
    a = orig.src + struct.pack("!H", orig.sport)
    b = orig.dst + struct.pack("!H", orig.dport)
    lo, hi = (a, b) if a <= b else (b, a)
    digest = hashlib.blake2b(struct.pack("!BI", proto, seed) + lo + hi, digest_size=4).digest()
    return int.from_bytes(digest, "big") % buckets


@dataclasses.dataclass(frozen=True)
class WorkloadProfile:
    rate: float = 30.0  # new connections per second, cluster-wide
    mean_lifetime: float = 2.0  # seconds, exponential (TCP and UDP)
    ipv6_share: float = 0.1
    tcp_share: float = 0.7
    udp_share: float = 0.2  # the rest is ICMP echo


class Host(Protocol):
    """What the workload needs from the runner."""

    def dataplane_kernels(self) -> Sequence[Kernel]:
        """Kernels of the nodes that currently receive data-plane traffic."""
        ...

    def report(self, node: NodeId, kind: str, conn: Connection) -> None:
        """Tell that node's `Node` about a conntrack event ("new", "update", "destroy")."""
        ...

    def hole(self, bucket: int) -> None:
        """A NEW connection found no owner for its bucket."""
        ...


@dataclasses.dataclass
class WorkloadStats:
    attempted: int = 0
    created: int = 0  # accepted by at least one node
    refused: int = 0  # NEW found no owner
    closed: int = 0
    dropped_packets: int = 0  # a later packet found no node with the entry (retried)
    lost: int = 0  # ... and every retransmission too
    lost_keys: list[bytes] = dataclasses.field(default_factory=list)


class Workload:
    def __init__(
        self,
        scheduler: Scheduler,
        rng: random.Random,
        host: Host,
        buckets: int,
        hash_seed: int,
        profile: WorkloadProfile | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._rng = rng
        self._host = host
        self._buckets = buckets
        self._seed = hash_seed
        self.profile = profile or WorkloadProfile()
        self.live: dict[bytes, Connection] = {}  # connections that exist (ground truth)
        self.stats = WorkloadStats()
        self._running = False
        self._frozen = False  # no more packets at all: tables stop changing
        self._generation = 0  # invalidates the arrival chain of a stopped workload
        self.on_lost: Callable[[Connection], None] | None = None

    # -- control ---------------------------------------------------------------

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._generation += 1
        self._schedule_arrival(self._generation)

    def stop(self) -> None:
        """Stop creating connections and let the live ones finish their lives."""
        self._running = False

    def freeze(self) -> None:
        """Stop arrivals and every later packet of the live connections, so the
        tables stop changing and the caches can be compared with them."""
        self._running = False
        self._frozen = True

    # -- arrivals --------------------------------------------------------------

    def _schedule_arrival(self, generation: int) -> None:
        gap = self._rng.expovariate(self.profile.rate)

        def arrive() -> None:
            if not self._running or generation != self._generation:
                return
            self.open_one()
            self._schedule_arrival(generation)

        self._scheduler.after(gap, arrive)

    def _random_conn(self) -> Connection:
        rng = self._rng
        p = self.profile
        v6 = rng.random() < p.ipv6_share
        if v6:
            src = (_CLIENTS_V6.network_address + rng.randrange(1, 1 << 16)).packed
            dst = (_SERVERS_V6.network_address + rng.randrange(1, 256)).packed
        else:
            src = (_CLIENTS_V4.network_address + rng.randrange(1, 255)).packed
            dst = (_SERVERS_V4.network_address + rng.randrange(1, 255)).packed
        r = rng.random()
        if r < p.tcp_share:
            proto, sport, dport = PROTO_TCP, rng.randrange(1024, 65536), rng.choice((22, 80, 443))
            state, status = TCP_SYN_SENT, 0
        elif r < p.tcp_share + p.udp_share:
            proto, sport, dport = PROTO_UDP, rng.randrange(1024, 65536), rng.choice((53, 123, 443))
            state, status = 0, 0
        else:
            proto = PROTO_ICMPV6 if v6 else PROTO_ICMP
            echo_type = 128 if v6 else 8
            sport, dport, state, status = rng.randrange(0, 65536), echo_type << 8, 0, 0
        orig = Tuple(src, dst, sport, dport)
        if proto in (PROTO_ICMP, PROTO_ICMPV6):
            reply_type = 129 if v6 else 0
            reply = Tuple(dst, src, sport, reply_type << 8)
        else:
            reply = orig.inverse()
        bucket = bucket_of(proto, orig, self._buckets, self._seed)
        return Connection(proto, orig, reply, state=state, status=status, bucket=bucket)

    def open_one(self) -> Connection | None:
        """One NEW connection now; returns it if some node accepted it."""
        conn = self._random_conn()
        self.stats.attempted += 1
        if conn.key in self.live:
            return None  # a tuple collision: the packet belongs to the existing one
        accepted = False
        for kernel in self._host.dataplane_kernels():
            if kernel.accepts_new(conn.bucket):
                kernel.create(conn, self._scheduler.now)
                self._host.report(kernel.node, "new", conn)
                accepted = True
        if not accepted:
            self.stats.refused += 1
            self._host.hole(conn.bucket)
            return None
        self.stats.created += 1
        self.live[conn.key] = conn
        self._plan(conn)
        return conn

    # -- life of a connection -----------------------------------------------------

    def _plan(self, conn: Connection) -> None:
        rng = self._rng
        if conn.proto in (PROTO_ICMP, PROTO_ICMPV6):
            self._scheduler.after(0.001 + rng.random() * 0.05, lambda: self._close(conn.key))
            return
        # The reply comes a few milliseconds later: the state change every
        # protocol reports (TCP ESTABLISHED, UDP SEEN_REPLY).
        self._scheduler.after(0.002 + rng.random() * 0.01, lambda: self._reply(conn.key))
        life = rng.expovariate(1.0 / self.profile.mean_lifetime)
        self._scheduler.after(0.02 + life, lambda: self._close(conn.key))

    def _packet(self, key: bytes, attempt: int, retry: Callable[[], None]) -> list[Kernel] | None:
        """The nodes a mid-connection packet passes, or None. With no holder the
        packet is dropped and the endpoint retransmits (TCP, or the
        application for UDP/ICMP); after RETRIES drops the connection is lost."""
        conn = self.live.get(key)
        if conn is None or self._frozen:
            return None
        holders = [k for k in self._host.dataplane_kernels() if key in k.table]
        if holders:
            return holders
        if attempt < RETRIES:
            self.stats.dropped_packets += 1
            self._scheduler.after(RETRY_AFTER, retry)
            return None
        del self.live[key]
        self.stats.lost += 1
        self.stats.lost_keys.append(key)
        if self.on_lost is not None:
            self.on_lost(conn)
        return None

    def _reply(self, key: bytes, attempt: int = 0) -> None:
        holders = self._packet(key, attempt, lambda: self._reply(key, attempt + 1))
        if holders is None:
            return
        conn = self.live[key]
        state = TCP_ESTABLISHED if conn.proto == PROTO_TCP else conn.state
        updated = conn.with_state(state, conn.status | IPS_SEEN_REPLY | IPS_ASSURED)
        self.live[key] = updated
        for kernel in holders:
            kernel.update(updated)
            self._host.report(kernel.node, "update", updated)

    def _close(self, key: bytes, attempt: int = 0) -> None:
        holders = self._packet(key, attempt, lambda: self._close(key, attempt + 1))
        if holders is None:
            return
        conn = self.live.pop(key)
        self.stats.closed += 1
        for kernel in holders:
            held = kernel.destroy(key)
            self._host.report(kernel.node, "destroy", held if held is not None else conn)
