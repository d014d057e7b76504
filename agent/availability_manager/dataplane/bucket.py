"""The Python twin of the bucket the nftables ruleset computes in the kernel.

The ruleset (nft_ruleset.py) classifies a NEW connection with

    jhash <a> . <b> [. <p> . <q>] mod <buckets> seed <seed> offset 1

where the operands are ordered by zone (the orientation rule, see
docs/dataplane.md). This module reproduces, byte for byte, what the kernel
hashes and how it reduces the hash to a bucket:

* nft lays a concatenation out in 32-bit registers: every field starts on a
  4-byte boundary and a 2-byte field (a port, an ICMP id) is followed by two
  zero bytes (nft_payload zeroes the last register word it writes);
* nft_hash calls Linux's jhash() (jhash.py) over that buffer, reading 32-bit
  words in host byte order (little-endian on every platform we ship to);
* the result is reduced with reciprocal_scale(h, n) = (h * n) >> 32, not with
  a modulo: "mod" in the nft syntax is a range, not the arithmetic operator.

The kernel test (tests/lab/test_nftables_backend.py) compares this twin with
the conntrack marks of hundreds of real flows.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from ..connection import PROTO_ICMP, PROTO_ICMPV6, Connection
from ..types import ClusterSettings
from .jhash import jhash, reciprocal_scale

# Protocols whose transport header starts with 16-bit source and destination
# ports; nft's `th sport . th dport` reads them (tcp, udp, dccp, sctp, udplite).
PORT_PROTOS = frozenset({6, 17, 33, 132, 136})
ICMP_ECHO_TYPES = {PROTO_ICMP: (0, 8), PROTO_ICMPV6: (128, 129)}


def nft_concat(*fields: bytes) -> bytes:
    """The register layout of an nft concatenation: each field padded with
    zero bytes to a multiple of 4."""
    return b"".join(f + b"\0" * (-len(f) % 4) for f in fields)


def is_forward(zones_order: Sequence[str], in_zone: str, out_zone: str | None) -> bool:
    """The orientation rule: hash (src, dst) as-is when the packet goes from
    a zone to a later zone, to a local address (out_zone None), to an
    interface that is no zone, or stays in its zone (hairpin); hash it
    swapped when it goes from a zone to an earlier zone. Both directions of
    a connection between two zones therefore hash the same bytes."""
    if out_zone is None or in_zone not in zones_order or out_zone not in zones_order:
        return True
    return zones_order.index(in_zone) <= zones_order.index(out_zone)


def hash_key(
    settings: ClusterSettings,
    proto: int,
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    forward: bool,
) -> bytes:
    """The bytes the kernel hashes for a packet; ports as conntrack gives them
    (for ICMP: sport is the echo id, dport is type << 8 | code)."""
    if len(src) not in (4, 16) or len(dst) != len(src):
        raise ValueError("addresses must both be 4 or both be 16 bytes")
    a, b = (src, dst) if forward else (dst, src)
    if settings.hash_fields == "addresses+ports":
        if proto in PORT_PROTOS:
            p, q = (sport, dport) if forward else (dport, sport)
            return nft_concat(a, b, struct.pack("!H", p), struct.pack("!H", q))
        echo_types = ICMP_ECHO_TYPES.get(proto)
        family_ok = (proto == PROTO_ICMP) == (len(src) == 4)
        if echo_types is not None and family_ok and (dport >> 8) in echo_types:
            return nft_concat(a, b, struct.pack("!H", sport))
    return nft_concat(a, b)


def bucket_of(
    settings: ClusterSettings,
    zones_order: Sequence[str],
    *,
    in_zone: str,
    out_zone: str | None,
    proto: int,
    src: bytes,
    dst: bytes,
    sport: int = 0,
    dport: int = 0,
) -> int:
    """The bucket (0..buckets-1) the kernel gives the first packet of a
    connection arriving on `in_zone` and routed to `out_zone` (None: a local
    address of the node)."""
    key = hash_key(
        settings, proto, src, dst, sport, dport, is_forward(zones_order, in_zone, out_zone)
    )
    return reciprocal_scale(jhash(key, settings.hash_seed), settings.buckets)


def bucket_of_connection(
    settings: ClusterSettings,
    zones_order: Sequence[str],
    conn: Connection,
    *,
    in_zone: str,
    out_zone: str | None,
) -> int:
    """bucket_of() for the first packet of `conn` (its original tuple)."""
    o = conn.orig
    return bucket_of(
        settings,
        zones_order,
        in_zone=in_zone,
        out_zone=out_zone,
        proto=conn.proto,
        src=o.src,
        dst=o.dst,
        sport=o.sport,
        dport=o.dport,
    )


def mask_shift(mask: int) -> int:
    """Position of the lowest bit of a contiguous, non-zero mark mask."""
    if not 0 < mask <= 0xFFFFFFFF:
        raise ValueError(f"mark mask {mask:#x} must be a non-zero 32-bit value")
    shift = (mask & -mask).bit_length() - 1
    if (mask >> shift) & ((mask >> shift) + 1):
        raise ValueError(f"mark mask {mask:#x} must be one run of contiguous bits")
    return shift


def mark_of_bucket(bucket: int, mask: int) -> int:
    """The conntrack mark bits that record `bucket` (bucket + 1 under mask)."""
    shift = mask_shift(mask)
    value = bucket + 1
    if value > mask >> shift:
        raise ValueError(f"bucket {bucket} does not fit in mark mask {mask:#x}")
    return value << shift


def bucket_of_mark(mark: int, mask: int) -> int | None:
    """The bucket recorded in a conntrack mark, None when unclassified (0)."""
    value = (mark & mask) >> mask_shift(mask)
    return value - 1 if value else None
