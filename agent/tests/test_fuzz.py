"""The project's own fuzz campaign (issue 18): property-based fuzzing of the
decoder, the AEAD layer and whole Nodes fed authenticated-but-hostile input.

`make test` runs each property briefly (FWCLUSTER_FUZZ_EXAMPLES, default
100 examples); `make fuzz` runs them at length. What every property checks:
nothing raises out of the input paths, every refusal is counted, and what
one key holder can make a node do stays within the bounds of test_bounds.py.
"""

from __future__ import annotations

import dataclasses
import os
import random

from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_node import BUCKETS, KEYRING, SETTINGS, Cluster, nid

from availability_manager import wire
from availability_manager.availability import Heartbeat
from availability_manager.broadcast import (
    MAX_NAK_RANGES,
    MAX_REPAIRS_PER_NAK,
    RbData,
    RbLost,
    RbNak,
    pack_range,
)
from availability_manager.crypto import Encryption
from availability_manager.node import Destination
from availability_manager.ranges import RangeState

EXAMPLES = int(os.environ.get("FWCLUSTER_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None)

# The regression input of issue 18 (plaintext: a heartbeat with a new
# incarnation and a far-off rb_next_seq, and a claim), found by the review's
# fuzzer; sealed here as node 192.0.2.2.
REGRESSION = bytes.fromhex(
    "0100003b00010008d6752b72674e4437000200020003000300083b0de65623a8a54f00040001020005"
    "00010000060002000100070004424e618100080001010800001a000100020020000200046941020d00"
    "030008c6f800fa1b6375c7"
)


def _valid_message_bytes() -> st.SearchStrategy[bytes]:
    seq = st.integers(0, 2**32 - 1)
    messages = st.one_of(
        st.builds(RbData, seq, st.binary(max_size=64)),
        st.builds(lambda a: RbLost(a, a), seq),
        st.builds(
            lambda t, starts: RbNak(t, tuple(pack_range(s, s) for s in starts)),
            seq,
            st.lists(seq, min_size=1, max_size=MAX_NAK_RANGES),
        ),
        st.builds(
            lambda o: RangeState.of(frozenset(o), BUCKETS, 1), st.sets(st.integers(0, BUCKETS - 1))
        ),
    )
    return st.lists(messages, min_size=1, max_size=4).map(wire.encode_messages)


def _mutate(data: bytes, pos: int, byte: int) -> bytes:
    """A valid encoding with one byte replaced (lengths, types, values)."""
    i = pos % len(data)
    return data[:i] + bytes([byte]) + data[i + 1 :]


@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=1500),
        _valid_message_bytes(),
        st.builds(_mutate, _valid_message_bytes(), st.integers(0, 2000), st.integers(0, 255)),
    )
)
@example(data=REGRESSION)
def test_the_decoder_returns_messages_or_raises_a_wire_error(data: bytes) -> None:
    try:
        msgs = wire.decode_messages(data)
    except wire.WireError as exc:
        assert exc.reason  # a named, countable reason
        return
    # whatever decoded encodes again to a message the decoder accepts alike
    assert wire.decode_messages(wire.encode_messages(msgs)) == msgs


@FUZZ
@given(
    plaintext=st.binary(max_size=200),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=3),
    cut=st.integers(0, 10_000),
)
def test_the_aead_layer_opens_only_what_was_sealed_unchanged(
    plaintext: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    tx = Encryption(nid(2), KEYRING, 1000)
    rx = Encryption(nid(1), KEYRING, 1)
    sealed = bytearray(tx.seal(plaintext))
    for pos, mask in flips:
        sealed[pos % len(sealed)] ^= mask
    data = bytes(sealed[: len(sealed) - cut % 3 * (cut % 7)])
    opened = rx.open(data)
    if opened is not None:
        assert opened[1] == plaintext and opened[0].sender == nid(2)
    else:
        assert sum(rx.drops.values()) == 1  # refused once, with a reason
        assert rx.open(tx.seal(plaintext)) is not None  # and the window was not moved


# -- whole Nodes --------------------------------------------------------------------


def _hostile_message() -> st.SearchStrategy[object]:
    seq = st.integers(0, 2**32 - 1)
    u64 = st.integers(0, 2**64 - 1)
    return st.one_of(
        st.builds(
            Heartbeat,
            incarnation=u64,
            cluster_size=st.integers(1, 5),
            fingerprint=st.sampled_from([SETTINGS.fingerprint(), b"other-fp"]),
            wire_version=st.integers(1, 3),
            state=st.integers(0, 2),
            weight=st.integers(1, 1000),
            rb_next_seq=seq,
            own_status=st.integers(0, 1),
        ),
        st.builds(
            lambda o, d: RangeState.of(frozenset(o), BUCKETS, d),
            st.sets(st.integers(0, BUCKETS - 1)),
            u64,
        ),
        st.builds(RbData, seq, st.binary(max_size=200)),
        st.builds(
            lambda t, rs: RbNak(t, tuple(pack_range(a, (a + n) % 2**32) for a, n in rs)),
            st.sampled_from([nid(1), nid(2), nid(3), 7]),
            st.lists(st.tuples(seq, st.integers(0, 2**19)), min_size=1, max_size=MAX_NAK_RANGES),
        ),
        st.builds(lambda a, n: RbLost(a, (a + n) % 2**32), seq, st.integers(0, 2**20)),
    )


@settings(max_examples=max(10, EXAMPLES // 5), deadline=None)
@given(
    batches=st.lists(
        st.tuples(
            st.sampled_from([nid(2), nid(3), nid(9), 12345]),  # real peers and invented ids
            st.integers(0, 2**64 - 1),
            st.lists(_hostile_message(), min_size=1, max_size=3),
            st.booleans(),
        ),
        min_size=1,
        max_size=12,
    ),
    seed=st.integers(0, 2**16),
)
def test_hostile_key_holders_cannot_crash_a_node_or_exceed_its_bounds(
    batches: list[tuple[int, int, list[object], bool]], seed: int
) -> None:
    c = Cluster(3)
    c.run(0.6)
    a = c.host(1)
    rng = random.Random(seed)
    before = a.node.stats()
    for sender, counter, msgs, via_zone in batches:
        dgram = Encryption(sender, KEYRING, counter).seal(wire.encode_messages(msgs))
        via = Destination.ZONES if via_zone else Destination.SYNC
        retransmitted = a.node.stats()["rb_retransmitted"]
        a.node.receive_datagram(dgram, c.now, via)
        sent = [d for d, _ in a.node.datagrams_to_send(c.now)]
        # one datagram can cause at most one NAK's worth of repairs
        assert a.node.stats()["rb_retransmitted"] - retransmitted <= MAX_REPAIRS_PER_NAK
        for d in sent:
            for h in (c.host(2), c.host(3)):
                h.node.receive_datagram(d, c.now)
        c.run(rng.choice((0.0, 0.005, 0.05)))
    stats = a.node.stats()
    assert stats["datagrams_opened"] >= before["datagrams_opened"]
    # hostile claims never make the node stop forwarding what it alone aims for
    c.run(1.0)
    assert a.node.phase() in ("member", "joining")


@FUZZ
@given(counter=st.integers(0, 2**64 - 2), fingerprint_ours=st.booleans())
@example(counter=10**9, fingerprint_ours=True)
def test_the_regression_input_is_harmless(counter: int, fingerprint_ours: bool) -> None:
    c = Cluster(3)
    c.run(0.6)
    a = c.host(1)
    plaintext = REGRESSION
    if fingerprint_ours:
        hb, claim = wire.decode_messages(REGRESSION)
        hb = dataclasses.replace(hb, fingerprint=SETTINGS.fingerprint())
        plaintext = wire.encode_messages([hb, claim])
    active = a.node.active_buckets()
    a.node.receive_datagram(Encryption(nid(2), KEYRING, counter).seal(plaintext), c.now)
    a.node.datagrams_to_send(c.now)
    assert a.node.stats()["rb_retransmitted"] <= MAX_REPAIRS_PER_NAK
    assert a.node.active_buckets() >= active - c.host(2).owned  # the claim took nothing of ours
