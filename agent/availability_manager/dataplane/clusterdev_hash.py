"""The Python twin of the clusterdev kernel module's bucket hash.

The module (kmod/clusterdev/clusterdev_hook.c, `clusterdev_bucket`) puts a
connection into a bucket with Linux's jhash2 (jhash.py: lookup3's word hash)
over the connection's endpoints in canonical order, seeded by the agent, then
scales the 32-bit hash into [0, buckets) the way reciprocal_scale() does. This
file must agree with it bit for bit: the guest tests compare both on the
conntrack marks of real flows (kmod/tests/guest_tests.py).

Words hashed (all host-order u32):
  addresses:        lo.addr, hi.addr                      (IPv6: 4 words each)
  addresses+ports:  lo.addr, hi.addr, lo.port << 16 | hi.port, protocol
where lo/hi are the two endpoints ordered by (address, port) when ports count,
by address alone otherwise, so both directions of a connection agree. ICMP and
ICMPv6 use the echo id as the port of both ends; protocols without ports use 0.
"""

from __future__ import annotations

import ipaddress

from ..types import ClusterSettings
from .jhash import jhash2, reciprocal_scale

IPPROTO_ICMP = 1
IPPROTO_ICMPV6 = 58

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _addr_words(addr: Address) -> tuple[int, ...]:
    packed = addr.packed
    return tuple(int.from_bytes(packed[i : i + 4], "big") for i in range(0, len(packed), 4))


def connection_bucket(
    src: Address,
    dst: Address,
    sport: int,
    dport: int,
    proto: int,
    *,
    buckets: int,
    seed: int,
    hash_fields: str,
) -> int:
    """The bucket the module puts this connection in (either direction gives the same).

    For ICMP/ICMPv6 pass the echo id as `sport` (dport is ignored)."""
    if src.version != dst.version:
        raise ValueError("source and destination address families differ")
    if not 1 <= buckets <= 4096:
        raise ValueError(f"buckets must be 1..4096, got {buckets}")
    ports = hash_fields == "addresses+ports"
    if proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        dport = sport
    s = (_addr_words(src), sport & 0xFFFF if ports else 0)
    d = (_addr_words(dst), dport & 0xFFFF if ports else 0)
    lo, hi = (s, d) if s <= d else (d, s)
    words = [*lo[0], *hi[0]]
    if ports:
        words += [lo[1] << 16 | hi[1], proto & 0xFF]
    return reciprocal_scale(jhash2(words, seed), buckets)


def settings_bucket(
    settings: ClusterSettings, src: Address, dst: Address, sport: int, dport: int, proto: int
) -> int:
    """connection_bucket with the cluster's settings."""
    return connection_bucket(
        src,
        dst,
        sport,
        dport,
        proto,
        buckets=settings.buckets,
        seed=settings.hash_seed,
        hash_fields=settings.hash_fields,
    )
