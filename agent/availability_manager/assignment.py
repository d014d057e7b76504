"""The aimed cluster configuration: which node should own which bucket.

A pure function of the membership (node ids and weights), the bucket count and
the hash seed, so every node that sees the same membership computes the same
assignment without talking to anyone (the seed's "aimed configuration").

Requirements, and how they are met:

- complete and disjoint: the result is one owner per bucket.
- balanced: every node gets floor or ceil of its weighted fair share
  ``buckets * w / W`` (exactly the share when that is an integer), so for
  equal weights the counts differ by at most one.
- minimal movement: the seed's sorted contiguous ranges move almost every
  bucket when a node with a low id fails or joins. Here each bucket ranks the
  nodes by a weighted rendezvous (HRW) score; the unconstrained argmax of that
  score moves exactly the failed node's buckets on a failure and exactly the
  newcomer's winnings on a join, but its counts are only balanced on average
  (about sqrt(buckets/N) off). So we

  1. give every bucket to its HRW-preferred node,
  2. fix each node's quota: floor of its share, plus one for the nodes that
     hold the most surplus over their exact share (they have a fractional
     share; the count of such +1s is what the floors leave over),
  3. repair: move buckets from nodes over quota to nodes under quota, always
     the move that loses the least HRW score (so each bucket stays with its
     preferred node unless balance forces it off, and then goes to the next
     best node that has room). This moves exactly the total surplus, the
     fewest moves that can balance step 1.

Trade-off (measured by bench/bucket_movement.py, see
docs/benchmarks/bucket_movement.md): exact balance and exact minimal movement
cannot both hold for every membership change. The buckets a failed node leaves
go to their second-choice nodes at random, not one per survivor, so the repair
of the new membership moves a few buckets between survivors too. With 256
buckets this costs on average a handful of buckets beyond the failed node's
share (about 10 at 16 nodes, 0 at 2 nodes; worst seen 24), and similarly on a
join (about 11 beyond the newcomer's share at 16 nodes, worst 21); the
contiguous ranges move 90 to 130 of the 256 buckets whatever N is.

Scores are integers: a 64-bit uniform per (node, bucket) from a SHAKE-128
stream keyed by seed and node becomes a Gumbel variate plus ln(weight) (the
Gumbel-max trick gives weighted HRW), scaled by 2**32 and rounded. Only two
libm logs per score touch floats; a last-bit difference between two libms
changes a rounded score with negligible probability, and a node that computes
another aim never becomes "stable" (ranges.py), so it would show. Ties are
broken by node id, never by dict order or Python's hash().
"""

from __future__ import annotations

import functools
import hashlib
import math
import struct
from collections.abc import Mapping, Sequence

from .types import MAX_NODE_ID, NodeId

MIN_WEIGHT = 1
MAX_WEIGHT = 1000
MAX_BUCKETS = 4096

_M64 = (1 << 64) - 1
_SCALE = float(1 << 32)
_U53 = 2.0**-53
_SEED = struct.Struct("!QI")


def validate_members(members: Mapping[NodeId, int], buckets: int) -> None:
    """Raise ValueError unless node ids are u32, weights 1..1000, buckets 1..4096."""
    if not 1 <= buckets <= MAX_BUCKETS:
        raise ValueError(f"buckets must be 1..{MAX_BUCKETS}, got {buckets}")
    for node, weight in members.items():
        if not 0 <= node <= MAX_NODE_ID:
            raise ValueError(f"node id {node} is not a 32-bit unsigned integer")
        if not MIN_WEIGHT <= weight <= MAX_WEIGHT:
            raise ValueError(
                f"node {node}: weight must be {MIN_WEIGHT}..{MAX_WEIGHT}, got {weight}"
            )


def _blake64(seed: int, value: int, person: bytes) -> int:
    data = _SEED.pack(seed & _M64, value)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=person).digest(), "big")


@functools.lru_cache(maxsize=4096)
def _node_key(node: NodeId, seed: int) -> int:
    return _blake64(seed, node, b"fwcl-node")


# ~11 kB per row of 256 buckets: 256 rows bound the cache to a few MB
@functools.lru_cache(maxsize=256)
def _score_row(node: NodeId, weight: int, buckets: int, seed: int) -> tuple[int, ...]:
    """Integer HRW scores of `node` for every bucket (higher is preferred).

    One SHAKE-128 stream per (seed, node) gives a 64-bit uniform per bucket,
    independent across nodes and buckets; -ln(-ln u) is a Gumbel variate, and
    ln(weight) + Gumbel makes the argmax a weighted draw (the Gumbel-max trick).
    """
    stream = hashlib.shake_128(b"fwcl-hrw" + _SEED.pack(seed & _M64, node)).digest(8 * buckets)
    log = math.log
    lw = log(weight)
    return tuple(
        [
            round((lw - log(-log(((x >> 11) + 0.5) * _U53))) * _SCALE)
            for x in struct.unpack(f"!{buckets}Q", stream)
        ]
    )


def aimed_assignment(members: Mapping[NodeId, int], buckets: int, seed: int) -> tuple[NodeId, ...]:
    """Owner of every bucket (index = bucket) for this membership; () if empty.

    `members` maps node id to weight (1..1000). Raises ValueError on an
    invalid membership. Deterministic in (members, buckets, seed), whatever
    the mapping's order.
    """
    validate_members(members, buckets)
    return _aimed(frozenset(members.items()), buckets, seed)


@functools.lru_cache(maxsize=256)
def _aimed(key: frozenset[tuple[NodeId, int]], buckets: int, seed: int) -> tuple[NodeId, ...]:
    if not key:
        return ()
    items = sorted(key)
    nodes = [n for n, _ in items]
    weights = [w for _, w in items]
    rows = [_score_row(n, w, buckets, seed) for n, w in items]
    count = len(nodes)

    # 1. every bucket to its preferred node (ties: lowest node id, index() finds the first)
    indices = range(count)
    owner = [col.index(max(col)) for col in zip(*rows, strict=True)]
    held = [0] * count
    for i in owner:
        held[i] += 1

    # 2. quotas: floor of the share, +1 for the fractional shares holding the most surplus
    total = sum(weights)
    quota = [buckets * w // total for w in weights]
    spare = buckets - sum(quota)
    fractional = [i for i in indices if (buckets * weights[i]) % total]
    # surplus over the exact share, times `total` so it stays an integer
    fractional.sort(
        key=lambda i: (buckets * weights[i] - held[i] * total, _node_key(nodes[i], seed))
    )
    for i in fractional[:spare]:
        quota[i] += 1

    # 3. repair: cheapest moves from nodes over quota to nodes under quota
    excess = [held[i] - quota[i] for i in indices]
    under = [i for i in indices if excess[i] < 0]
    if under:
        # (loss, bucket, node) packed into one int, which sorts several times
        # faster than tuples; loss >= 0 since every bucket is still with its argmax
        width = buckets * count
        candidates = [
            (rows[o][b] - rows[m][b]) * width + b * count + m
            for b, o in enumerate(owner)
            if excess[o] > 0
            for m in under
        ]
        candidates.sort()
        moved_bucket = bytearray(buckets)
        for packed in candidates:
            b, m = divmod(packed % width, count)
            o = owner[b]
            if moved_bucket[b] or excess[o] <= 0 or excess[m] >= 0:
                continue
            owner[b] = m
            moved_bucket[b] = 1
            excess[o] -= 1
            excess[m] += 1
    return tuple(nodes[i] for i in owner)


def contiguous_assignment(members: Mapping[NodeId, int], buckets: int) -> tuple[NodeId, ...]:
    """The seed's aimed configuration: nodes sorted by id, each a contiguous range.

    Range sizes follow the weights (equal weights: equal ranges, the seed's
    0..84 / 85..169 / 170..255 for three nodes and 256 buckets). The baseline
    for the movement benchmark.
    """
    validate_members(members, buckets)
    if not members:
        return ()
    nodes = sorted(members)
    total = sum(members.values())
    owner: list[NodeId] = []
    cumulative = 0
    for node in nodes:
        cumulative += members[node]
        end = buckets * cumulative // total
        owner.extend([node] * (end - len(owner)))
    return tuple(owner)


def moved(a: Sequence[NodeId], b: Sequence[NodeId]) -> int:
    """Number of buckets whose owner differs between two assignments."""
    if len(a) != len(b):
        raise ValueError(f"assignments of different sizes: {len(a)} and {len(b)}")
    return sum(1 for x, y in zip(a, b, strict=True) if x != y)


def buckets_of(assignment: Sequence[NodeId], node: NodeId) -> frozenset[int]:
    """The buckets `node` owns in `assignment`."""
    return frozenset(b for b, owner in enumerate(assignment) if owner == node)


def membership_digest(members: Mapping[NodeId, int]) -> int:
    """u64 digest of a membership (ids and weights), carried in RangeState so a
    receiver can tell whether a sender computes its aim from the same view."""
    canon = b"".join(struct.pack("!IH", n, w) for n, w in sorted(members.items()))
    digest = hashlib.blake2b(canon, digest_size=8, person=b"fwcl-members").digest()
    return int.from_bytes(digest, "big")
