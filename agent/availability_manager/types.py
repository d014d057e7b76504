"""Small value types shared by all layers: node ids and the cluster-wide settings."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import struct

NodeId = int
"""A node's id: an unsigned 32-bit integer, by default its IPv4 address on the
sync network (as in the seed design). Ordering of node ids is only used to
break ties deterministically."""

MAX_NODE_ID = 0xFFFFFFFF

HASH_FIELDS = ("addresses", "addresses+ports")
BACKENDS = ("nftables", "clusterdev", "sim")


def node_id_from_address(address: str) -> NodeId:
    """The default node id for an IPv4 sync address."""
    return int(ipaddress.IPv4Address(address))


def format_node_id(node: NodeId) -> str:
    return str(ipaddress.IPv4Address(node))


@dataclasses.dataclass(frozen=True)
class ClusterSettings:
    """Settings every node must agree on. Their fingerprint travels in every
    heartbeat; a node with another fingerprint is refused (never admitted),
    because it would compute other buckets for the same connection."""

    buckets: int = 256
    hash_seed: int = 0x5EED_F17E
    hash_fields: str = "addresses+ports"
    backend: str = "nftables"

    def __post_init__(self) -> None:
        if not 1 <= self.buckets <= 4096:
            raise ValueError(f"buckets must be 1..4096, got {self.buckets}")
        if not 0 <= self.hash_seed <= 0xFFFFFFFF:
            raise ValueError(f"hash_seed must be a 32-bit unsigned integer, got {self.hash_seed}")
        if self.hash_fields not in HASH_FIELDS:
            raise ValueError(f"hash_fields must be one of {HASH_FIELDS}, got {self.hash_fields!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")

    def fingerprint(self) -> bytes:
        """8 bytes identifying these settings, equal on every node that agrees."""
        canon = struct.pack("!HI", self.buckets, self.hash_seed)
        canon += self.hash_fields.encode() + b"\0" + self.backend.encode()
        return hashlib.blake2b(canon, digest_size=8, person=b"fwcl-settings").digest()
