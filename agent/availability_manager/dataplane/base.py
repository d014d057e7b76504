"""The contract between the agent and a data-plane backend.

A backend programs the kernel so that, on this node, packets of known
connections pass and a NEW connection passes only if its bucket is owned by
this node; it records each connection's bucket in the conntrack mark under
`mark_mask`, so the agent reads buckets back from conntrack instead of
recomputing them. Two backends implement it: `nftables` (module-free) and
`clusterdev` (the kernel module in kmod/).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Sequence
from typing import Protocol

from ..node_events import Switch
from ..types import ClusterSettings
from .early_drop import EarlyDrop

_MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


@dataclasses.dataclass(frozen=True)
class Zone:
    """One side of the firewall: an interface carrying shared cluster addresses."""

    name: str
    interface: str
    cluster_ips: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]
    cluster_mac: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,14}", self.name):
            raise ValueError(f"zone name {self.name!r}: lowercase letters, digits, _ (max 15)")
        if not 1 <= len(self.interface) <= 15 or "/" in self.interface or " " in self.interface:
            raise ValueError(f"zone {self.name}: bad interface name {self.interface!r}")
        if not self.cluster_ips:
            raise ValueError(f"zone {self.name}: at least one cluster IP is required")
        mac = self.cluster_mac.lower()
        if not _MAC.match(mac):
            raise ValueError(f"zone {self.name}: cluster_mac {self.cluster_mac!r} is not a MAC")
        if not int(mac[:2], 16) & 1:
            raise ValueError(
                f"zone {self.name}: cluster_mac {self.cluster_mac} must be a multicast MAC "
                "(lowest bit of the first octet set), so that every node receives every frame"
            )


@dataclasses.dataclass(frozen=True)
class DataPlaneConfig:
    node_id: int
    settings: ClusterSettings
    zones: tuple[Zone, ...]  # ordered: orientation of the symmetric hash follows this order
    mark_mask: int = (
        0x0000FFFF  # bits of the conntrack mark that hold bucket + 1 (0 = unclassified)
    )
    tcp_loose: bool = False  # nf_conntrack_tcp_loose: mid-stream pickup (see docs/dataplane.md)
    early_drop: EarlyDrop = dataclasses.field(
        default_factory=EarlyDrop
    )  # foreign packets dropped before conntrack (nftables)
    # The dead man's switch (fence.py): the node stops forwarding this long
    # after its agent last ran, when its peers' timeout takes the buckets
    # over. None: no fence (the clusterdev backend has none yet).
    fence_timeout_s: float | None = None
    # The zone heartbeats' UDP port and group (None: no zone heartbeats): the
    # nftables input chain lets only link-local heartbeats reach that socket.
    zone_heartbeat_port: int | None = None
    zone_heartbeat_group: str = "239.255.77.2"


class DataPlane(Protocol):
    """What the agent calls. All methods are synchronous and idempotent."""

    name: str

    @property
    def fence_mark(self) -> int:
        """The socket mark that makes a heartbeat's packet refresh the fence
        in the kernel on its way out (fence.py); 0: this backend has no such
        fence, and keep_alive is all there is."""

    def install(self) -> None:
        """Program everything except ownership (this node owns no bucket yet)."""

    def set_owned_buckets(self, owned: frozenset[int], switches: Sequence[Switch] = ()) -> None:
        """Atomically replace the set of buckets whose NEW and known
        connections this node forwards, and the timed `switches` of a
        make-before-break handoff (node_events.Switch: forward a bucket until
        or from a wall-clock instant; nftables does it exactly in the kernel)."""

    def uninstall(self) -> None:
        """Remove everything install() did and restore what it changed (sysctls)."""

    def status(self) -> dict[str, object]:
        """Backend name, owned buckets as programmed, counters if available."""

    def keep_alive(self, timeout_s: float | None = None) -> None:
        """The agent runs: keep the data plane's fence from expiring for
        `timeout_s` more (at most, and by default, `fence_timeout_s`); called
        from the event loop after a heartbeat whose packets did not refresh
        it on their way out (`fence_mark`); cheap, never blocking. A no-op
        for a backend without one."""

    def check(self) -> str | None:
        """What of install()'s and set_owned_buckets()'s work the kernel no
        longer has (someone flushed the ruleset, removed a link), None when
        all is in place. install() puts it back."""
