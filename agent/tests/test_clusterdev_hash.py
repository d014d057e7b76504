"""The Python twin of clusterdev's bucket hash (dataplane/clusterdev_hash.py).

The decisive check is in the guest (kmod/tests/guest_tests.py: hash_twin
compares with the conntrack marks the module writes). Here: jhash2 against
the kernel's own jhash.h compiled for userspace when kernel headers and a C
compiler exist, and the properties the cluster relies on."""

from __future__ import annotations

import glob
import ipaddress
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from availability_manager.dataplane.clusterdev_hash import connection_bucket
from availability_manager.dataplane.jhash import jhash2

_HEADERS = sorted(glob.glob("/usr/src/linux-headers-*-common/include/linux/jhash.h"))

# Just enough of the kernel's headers for jhash.h to compile in userspace.
_SHIM = """
#include <stdint.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>
typedef uint32_t u32; typedef uint8_t u8;
#define fallthrough __attribute__((__fallthrough__))
static inline u32 rol32(u32 w, unsigned s) { return (w << s) | (w >> ((-s) & 31)); }
static inline u32 __get_unaligned_cpu32(const void *p) { u32 v; memcpy(&v, p, 4); return v; }
#include JHASH
int main(int argc, char **argv) {
    /* argv: seed n w0 .. w(n-1) */
    u32 seed = strtoul(argv[1], 0, 0), n = strtoul(argv[2], 0, 0), k[16];
    for (u32 i = 0; i < n && i < 16; i++) k[i] = strtoul(argv[3 + i], 0, 0);
    printf("%u\\n", jhash2(k, n, seed));
    return argc < 3;
}
"""


@pytest.fixture(scope="module")
def kernel_jhash(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not _HEADERS or not shutil.which("gcc"):
        pytest.skip("no kernel headers or gcc: run kmod/tools/install-build-deps.sh")
    work = tmp_path_factory.mktemp("jhash")
    inc = work / "include" / "linux"
    (inc / "unaligned").mkdir(parents=True)
    for name in ("bitops.h", "unaligned/packed_struct.h", "unaligned.h"):
        (inc / name).write_text("/* provided by the test's shim */\n")
    src = work / "jhash.c"
    src.write_text(_SHIM)
    exe = work / "jhash"
    subprocess.run(
        ["gcc", "-O1", f'-DJHASH="{_HEADERS[0]}"', f"-I{work / 'include'}", "-o", exe, src],
        check=True,
    )
    return exe


def test_jhash2_equals_kernel_jhash2(kernel_jhash: Path) -> None:
    rng = random.Random(7)
    for n in range(11):  # every tail length, one and several mixing rounds
        for _ in range(5):
            seed = rng.getrandbits(32)
            words = [rng.getrandbits(32) for _ in range(n)]
            out = subprocess.run(
                [kernel_jhash, str(seed), str(n), *map(str, words)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            assert jhash2(words, seed) == int(out), (seed, words)


ipv4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
ipv6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)
port = st.integers(0, 65535)
fields = st.sampled_from(["addresses", "addresses+ports"])


@given(ipv4 | ipv6, st.data(), port, port, st.sampled_from([6, 17, 132]), fields)
def test_both_directions_same_bucket(a, data, p, q, proto, hash_fields) -> None:  # type: ignore[no-untyped-def]
    b = data.draw(ipv4 if a.version == 4 else ipv6)
    kw = dict(buckets=256, seed=0x5EEDF17E, hash_fields=hash_fields)
    there = connection_bucket(a, b, p, q, proto, **kw)  # type: ignore[arg-type]
    back = connection_bucket(b, a, q, p, proto, **kw)  # type: ignore[arg-type]
    assert there == back
    assert 0 <= there < 256


@given(ipv4, ipv4, port, port)
def test_addresses_mode_ignores_ports(a, b, p, q) -> None:  # type: ignore[no-untyped-def]
    kw = dict(buckets=64, seed=1, hash_fields="addresses")
    assert connection_bucket(a, b, p, q, 6, **kw) == connection_bucket(a, b, 1, 2, 17, **kw)  # type: ignore[arg-type]


def test_icmp_uses_id_for_both_ends() -> None:
    a, b = ipaddress.IPv4Address("192.0.2.100"), ipaddress.IPv4Address("198.51.100.10")
    kw = dict(buckets=256, seed=3, hash_fields="addresses+ports")
    # An echo request (id 7) and its reply hash alike whatever the second port says.
    assert connection_bucket(a, b, 7, 0, 1, **kw) == connection_bucket(b, a, 7, 99, 1, **kw)  # type: ignore[arg-type]


def test_seed_changes_the_split() -> None:
    rng = random.Random(1)
    flows = [
        (ipaddress.IPv4Address(rng.getrandbits(32)), ipaddress.IPv4Address(rng.getrandbits(32)),
         rng.getrandbits(16), rng.getrandbits(16))
        for _ in range(200)
    ]  # fmt: skip

    def split(seed: int) -> list[int]:
        return [
            connection_bucket(s, d, p, q, 6, buckets=256, seed=seed, hash_fields="addresses+ports")
            for s, d, p, q in flows
        ]

    one, other = split(1), split(2)
    assert sum(x != y for x, y in zip(one, other, strict=True)) > 150


def test_buckets_spread_evenly() -> None:
    rng = random.Random(2)
    counts = [0] * 16
    for _ in range(16000):
        a = ipaddress.IPv4Address(rng.getrandbits(32))
        b = ipaddress.IPv4Address(rng.getrandbits(32))
        kw = dict(buckets=16, seed=5, hash_fields="addresses+ports")
        counts[connection_bucket(a, b, rng.getrandbits(16), 443, 6, **kw)] += 1  # type: ignore[arg-type]
    assert min(counts) > 800 and max(counts) < 1200, counts


def test_mixed_families_refused() -> None:
    with pytest.raises(ValueError):
        connection_bucket(
            ipaddress.IPv4Address("192.0.2.1"), ipaddress.IPv6Address("2001:db8::1"), 1, 2, 6,
            buckets=8, seed=0, hash_fields="addresses",
        )  # fmt: skip
