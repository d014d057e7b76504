"""The Python twin of the kernel's bucket hash (dataplane/bucket.py).

Byte-exactness against the kernel is tested in tests/lab/test_nftables_backend.py
with real flows; here: Linux jhash against published lookup3 vectors, the nft
register layout, the orientation rule's symmetry, and the mark layout.
"""

from __future__ import annotations

import collections
import ipaddress
import random
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from availability_manager.connection import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP
from availability_manager.dataplane.bucket import (
    bucket_of,
    bucket_of_mark,
    hash_key,
    is_forward,
    mark_of_bucket,
    mask_shift,
    nft_concat,
)
from availability_manager.dataplane.jhash import jhash, reciprocal_scale
from availability_manager.types import ClusterSettings

ZONES = ("inside", "dmz", "outside")
PORTS = ClusterSettings(buckets=256, hash_seed=0x5EEDF17E, hash_fields="addresses+ports")
ADDRS = ClusterSettings(buckets=256, hash_seed=0x5EEDF17E, hash_fields="addresses")


def test_jhash_matches_published_lookup3_vectors() -> None:
    # Linux's jhash() is Bob Jenkins' hashlittle(); these are the values
    # printed by the driver in his lookup3.c.
    assert jhash(b"", 0) == 0xDEADBEEF
    assert jhash(b"Four score and seven years ago", 0) == 0x17770551
    assert jhash(b"Four score and seven years ago", 1) == 0xCD628161


def test_jhash_reads_every_byte_of_every_tail_length() -> None:
    for n in range(1, 41):
        data = bytes(range(1, n + 1))
        base = jhash(data, 7)
        for i in range(n):  # flipping any byte changes the hash
            flipped = bytearray(data)
            flipped[i] ^= 0x80
            assert jhash(bytes(flipped), 7) != base, (n, i)
        assert jhash(data + b"\0", 7) != base  # the length is part of the hash


def test_nft_concat_pads_each_field_to_a_register() -> None:
    a, b = bytes([192, 0, 2, 10]), bytes([198, 51, 100, 10])
    sport, dport = struct.pack("!H", 40000), struct.pack("!H", 80)
    assert nft_concat(a, b, sport, dport) == a + b + sport + b"\0\0" + dport + b"\0\0"
    v6 = ipaddress.ip_address("2001:db8::1").packed
    assert len(nft_concat(v6, v6, sport, dport)) == 40
    assert len(nft_concat(a, b, sport)) == 12  # icmp id


def test_reciprocal_scale_is_a_range_map_not_a_modulo() -> None:
    assert reciprocal_scale(0, 256) == 0
    assert reciprocal_scale(0xFFFFFFFF, 256) == 255
    assert reciprocal_scale(0x80000000, 256) == 128  # % 256 would give 0
    rng = random.Random(1)
    for _ in range(1000):
        h, n = rng.getrandbits(32), rng.randint(1, 4096)
        assert 0 <= reciprocal_scale(h, n) < n


addresses4 = st.binary(min_size=4, max_size=4)
addresses6 = st.binary(min_size=16, max_size=16)
ports = st.integers(0, 0xFFFF)


@given(
    st.sampled_from([PORTS, ADDRS]),
    st.one_of(st.tuples(addresses4, addresses4), st.tuples(addresses6, addresses6)),
    ports,
    ports,
    st.sampled_from([PROTO_TCP, PROTO_UDP, 132, 47]),
    st.permutations(ZONES),
)
def test_both_directions_between_two_zones_share_a_bucket(
    settings: ClusterSettings,
    addrs: tuple[bytes, bytes],
    sport: int,
    dport: int,
    proto: int,
    zones: list[str],
) -> None:
    src, dst = addrs
    a, b = zones[0], zones[1]
    there = bucket_of(
        settings,
        ZONES,
        in_zone=a,
        out_zone=b,
        proto=proto,
        src=src,
        dst=dst,
        sport=sport,
        dport=dport,
    )
    back = bucket_of(
        settings,
        ZONES,
        in_zone=b,
        out_zone=a,
        proto=proto,
        src=dst,
        dst=src,
        sport=dport,
        dport=sport,
    )
    assert there == back


@given(addresses4, addresses4, ports, st.permutations(ZONES))
def test_icmp_echo_and_its_reply_share_a_bucket(
    src: bytes, dst: bytes, ident: int, zones: list[str]
) -> None:
    a, b = zones[0], zones[1]
    request = bucket_of(
        PORTS,
        ZONES,
        in_zone=a,
        out_zone=b,
        proto=PROTO_ICMP,
        src=src,
        dst=dst,
        sport=ident,
        dport=8 << 8,
    )
    reply = bucket_of(
        PORTS,
        ZONES,
        in_zone=b,
        out_zone=a,
        proto=PROTO_ICMP,
        src=dst,
        dst=src,
        sport=ident,
        dport=0,
    )
    assert request == reply


def test_icmp_echo_hashes_its_id_other_types_only_addresses() -> None:
    src, dst = bytes([192, 0, 2, 10]), bytes([198, 51, 100, 10])
    echo = hash_key(PORTS, PROTO_ICMP, src, dst, 0x1234, 8 << 8, True)
    assert echo == nft_concat(src, dst, b"\x12\x34")
    timestamp = hash_key(PORTS, PROTO_ICMP, src, dst, 0x1234, 13 << 8, True)
    assert timestamp == nft_concat(src, dst)
    v6 = ipaddress.ip_address("2001:db8::1").packed
    assert hash_key(PORTS, PROTO_ICMPV6, v6, v6, 7, 128 << 8, True) == nft_concat(v6, v6, b"\0\x07")
    # an ICMPv4 echo over IPv6 addresses is not a thing nft matches
    assert hash_key(PORTS, PROTO_ICMP, v6, v6, 7, 8 << 8, True) == nft_concat(v6, v6)


def test_orientation_rule() -> None:
    assert is_forward(ZONES, "inside", "outside")
    assert not is_forward(ZONES, "outside", "inside")
    assert is_forward(ZONES, "dmz", "dmz")  # hairpin: as the packet is
    assert is_forward(ZONES, "outside", None)  # to a local address
    assert is_forward(ZONES, "outside", "mgmt")  # to an interface that is no zone


def test_address_only_hash_ignores_ports() -> None:
    src, dst = bytes([192, 0, 2, 10]), bytes([198, 51, 100, 10])
    buckets = {
        bucket_of(
            ADDRS,
            ZONES,
            in_zone="inside",
            out_zone="outside",
            proto=PROTO_TCP,
            src=src,
            dst=dst,
            sport=p,
            dport=80,
        )
        for p in range(1000, 1100)
    }
    assert len(buckets) == 1


def test_buckets_spread_evenly_and_follow_the_seed() -> None:
    rng = random.Random(3)
    flows = [
        (rng.getrandbits(32).to_bytes(4, "big"), rng.randint(1024, 65535)) for _ in range(25600)
    ]
    dst = bytes([198, 51, 100, 10])

    def buckets(settings: ClusterSettings) -> list[int]:
        return [
            bucket_of(
                settings,
                ZONES,
                in_zone="inside",
                out_zone="outside",
                proto=PROTO_TCP,
                src=s,
                dst=dst,
                sport=p,
                dport=443,
            )
            for s, p in flows
        ]

    counts = collections.Counter(buckets(PORTS))
    assert len(counts) == 256
    assert max(counts.values()) < 2 * 100 and min(counts.values()) > 100 // 2
    other_seed = ClusterSettings(buckets=256, hash_seed=0x1, hash_fields="addresses+ports")
    same = sum(x == y for x, y in zip(buckets(PORTS), buckets(other_seed), strict=True))
    assert same < len(flows) // 50  # about 1/256 by chance


@pytest.mark.parametrize("mask", [0xFFFF, 0xFFFF0000, 0x1FFF00, 0xFFFFFFFF])
def test_mark_layout_round_trips(mask: int) -> None:
    for bucket in (0, 1, 255, 4095):
        mark = mark_of_bucket(bucket, mask)
        assert mark & ~mask == 0
        assert bucket_of_mark(mark | (~mask & 0xFFFFFFFF), mask) == bucket
    assert bucket_of_mark(~mask & 0xFFFFFFFF, mask) is None  # unclassified


def test_mark_layout_rejects_bad_masks_and_overflows() -> None:
    with pytest.raises(ValueError):
        mask_shift(0)
    with pytest.raises(ValueError):
        mask_shift(0xF0F0)  # not contiguous
    with pytest.raises(ValueError):
        mark_of_bucket(255, 0xFF)  # bucket + 1 = 256 does not fit
    assert mask_shift(0xFF00) == 8
