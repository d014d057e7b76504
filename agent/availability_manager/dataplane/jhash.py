"""Linux's jhash (lookup3 by Bob Jenkins, include/linux/jhash.h), the hash
both data planes put connections into buckets with: nft's `jhash` expression
(bucket.py) and the clusterdev module (clusterdev_hash.py).

`jhash` takes bytes, `jhash2` 32-bit words; over the same words laid out in
host (little-endian) order they agree, as in the kernel. The cross-checks:
tests/test_clusterdev_hash.py against the kernel's jhash.h compiled for
userspace, and the lab and guest tests against the conntrack marks of real
flows.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Sequence

if sys.byteorder != "little":  # pragma: no cover - no big-endian target exists
    raise ImportError("the jhash twin assumes a little-endian kernel (x86_64, aarch64)")

JHASH_INITVAL = 0xDEADBEEF
_M32 = 0xFFFFFFFF


def _rol(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M32


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    # lookup3's mix(): six rounds of subtract, xor-rotate, add.
    for r1, r2, r3 in ((4, 6, 8), (16, 19, 4)):
        a = (a - c) & _M32
        a ^= _rol(c, r1)
        c = (c + b) & _M32
        b = (b - a) & _M32
        b ^= _rol(a, r2)
        a = (a + c) & _M32
        c = (c - b) & _M32
        c ^= _rol(b, r3)
        b = (b + a) & _M32
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    # lookup3's final(): fold each register into the next, seven times.
    c = ((c ^ b) - _rol(b, 14)) & _M32
    a = ((a ^ c) - _rol(c, 11)) & _M32
    b = ((b ^ a) - _rol(a, 25)) & _M32
    c = ((c ^ b) - _rol(b, 16)) & _M32
    a = ((a ^ c) - _rol(c, 4)) & _M32
    b = ((b ^ a) - _rol(a, 14)) & _M32
    c = ((c ^ b) - _rol(b, 24)) & _M32
    return c


def jhash(data: bytes, initval: int) -> int:
    """Linux's jhash(key, length, initval) over bytes."""
    length = len(data)
    a = b = c = (JHASH_INITVAL + length + initval) & _M32
    off = 0
    while length > 12:
        x, y, z = struct.unpack_from("<III", data, off)
        a, b, c = _mix((a + x) & _M32, (b + y) & _M32, (c + z) & _M32)
        length -= 12
        off += 12
    if length == 0:
        return c
    # The tail is read byte by byte into little-endian words: the same as
    # zero-padding it to 12 bytes, except that an empty tail skips _final.
    x, y, z = struct.unpack("<III", data[off:].ljust(12, b"\0"))
    return _final((a + x) & _M32, (b + y) & _M32, (c + z) & _M32)


def jhash2(words: Sequence[int], initval: int) -> int:
    """Linux's jhash2(k, length, initval) over 32-bit words: jhash over the
    words in host order (the initial value counts bytes, 4 a word, in both)."""
    return jhash(struct.pack(f"<{len(words)}I", *words), initval)


def reciprocal_scale(value: int, n: int) -> int:
    """The kernel's reduction of a 32-bit hash to 0..n-1: (value * n) >> 32."""
    return (value * n) >> 32
