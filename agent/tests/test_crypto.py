"""Tests of the datagram encryption layer (crypto.py).

Every drop is checked by its reason in `Encryption.drops`, and every test
that drops something also checks that nothing else was counted.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from availability_manager import wire
from availability_manager.crypto import MAX_COUNTER_JUMP, CounterExhausted, Encryption, Keyring

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
SENDER = 1
RECEIVER = 3  # differs from SENDER in one bit: a flipped sender id can hit it
START = 1_700_000_000_000_000  # a start time in microseconds


def pair(
    keyring: Keyring | None = None, window: int = 1024, start: int = START
) -> tuple[Encryption, Encryption]:
    keyring = keyring or Keyring.single(KEY_A)
    return (
        Encryption(SENDER, keyring, start, replay_window=window),
        Encryption(RECEIVER, keyring, 5, replay_window=window),
    )


payloads = st.binary(min_size=0, max_size=wire.MAX_DATAGRAM - wire.HEADER_SIZE - wire.TAG_SIZE)


# -- round trip -----------------------------------------------------------------


@given(payloads)
def test_round_trip_returns_plaintext_and_header(payload: bytes) -> None:
    tx, rx = pair()
    datagram = tx.seal(payload)
    assert len(datagram) == wire.HEADER_SIZE + len(payload) + wire.TAG_SIZE
    opened = rx.open(datagram)
    assert opened is not None
    header, plaintext = opened
    assert plaintext == payload
    assert header == wire.Header(wire.WIRE_VERSION, 0, SENDER, START, len(payload) + 16)
    assert rx.drops == collections.Counter()
    assert tx.counter == START + 1


def test_seal_header_matches_wire_header_encoding() -> None:
    tx, _ = pair()
    datagram = tx.seal(b"x")
    expected = wire.Header(wire.WIRE_VERSION, 0, SENDER, START, 1 + wire.TAG_SIZE).encode()
    assert datagram[: wire.HEADER_SIZE] == expected


def test_ciphertext_hides_plaintext_and_nonce_differs_per_datagram() -> None:
    tx, _ = pair()
    payload = b"secret conntrack entry" * 4
    first, second = tx.seal(payload), tx.seal(payload)
    assert payload not in first
    assert first[wire.HEADER_SIZE :] != second[wire.HEADER_SIZE :]


def test_max_plaintext_fits_exactly_and_one_more_byte_raises() -> None:
    tx, rx = pair()
    assert tx.max_plaintext == wire.MAX_DATAGRAM - wire.HEADER_SIZE - wire.TAG_SIZE
    datagram = tx.seal(bytes(tx.max_plaintext))
    assert len(datagram) == wire.MAX_DATAGRAM
    assert rx.open(datagram) is not None
    with pytest.raises(ValueError, match="max_plaintext"):
        tx.seal(bytes(tx.max_plaintext + 1))
    assert tx.counter == START + 1  # the refused seal consumed no nonce


def test_counter_exhaustion_refuses_to_wrap() -> None:
    tx, rx = pair(start=2**64 - 2)
    assert rx.open(tx.seal(b"a")) is not None
    last = tx.seal(b"b")
    assert rx.open(last) is not None
    assert rx.open(last) is None and rx.drops == collections.Counter({"replayed": 1})
    with pytest.raises(CounterExhausted):
        tx.seal(b"c")
    with pytest.raises(CounterExhausted):
        tx.seal(b"c")  # still refused, nothing wrapped
    assert tx.counter == 2**64


# -- tampering --------------------------------------------------------------------


def expected_flip_reason(flipped: bytes) -> str:
    """What the receiver must count for a datagram with one bit flipped."""
    magic, version, key_id, sender, _counter, length, reserved = wire.HEADER.unpack_from(flipped)
    if magic != wire.MAGIC:
        return "bad-magic"
    if version == 0 or version > wire.WIRE_VERSION_MAX_ACCEPTED:
        return "unsupported-version"
    if reserved != 0:
        return "bad-reserved"
    if length != len(flipped) - wire.HEADER_SIZE:
        return "bad-length"
    if sender == RECEIVER:
        return "own-datagram"
    if key_id != 0:
        return "unknown-key"
    return "bad-tag"  # counter, accepted version, other sender, ciphertext or tag


@given(payload=payloads, data=st.data())
def test_any_bit_flip_is_dropped_with_its_reason(payload: bytes, data: st.DataObject) -> None:
    tx, rx = pair()
    datagram = tx.seal(payload)
    bit = data.draw(st.integers(0, len(datagram) * 8 - 1), label="bit")
    flipped = bytearray(datagram)
    flipped[bit // 8] ^= 1 << (bit % 8)
    assert rx.open(bytes(flipped)) is None
    assert rx.drops == collections.Counter({expected_flip_reason(bytes(flipped)): 1})
    # the tampered copy moved nothing: the genuine datagram is still accepted
    assert rx.open(datagram) is not None


def test_every_header_byte_flip_reason_is_covered() -> None:
    """Walk all 160 header bits once so every branch above is exercised."""
    tx, _ = pair()
    datagram = tx.seal(b"payload")
    seen: collections.Counter[str] = collections.Counter()
    for bit in range(wire.HEADER_SIZE * 8):
        _, rx = pair()
        flipped = bytearray(datagram)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert rx.open(bytes(flipped)) is None
        reason = expected_flip_reason(bytes(flipped))
        assert rx.drops == collections.Counter({reason: 1})
        seen[reason] += 1
    assert set(seen) == {
        "bad-magic",
        "unsupported-version",
        "unknown-key",
        "own-datagram",
        "bad-tag",
        "bad-length",
        "bad-reserved",
    }


@given(payload=payloads, data=st.data())
def test_truncation_at_any_length_is_dropped(payload: bytes, data: st.DataObject) -> None:
    tx, rx = pair()
    datagram = tx.seal(payload)
    cut = data.draw(st.integers(0, len(datagram) - 1), label="cut")
    assert rx.open(datagram[:cut]) is None
    reason = "truncated-header" if cut < wire.HEADER_SIZE else "bad-length"
    assert rx.drops == collections.Counter({reason: 1})
    assert rx.open(datagram) is not None


@given(payload=payloads, extra=st.binary(min_size=1, max_size=64))
def test_appended_bytes_are_dropped(payload: bytes, extra: bytes) -> None:
    tx, rx = pair()
    datagram = tx.seal(payload)
    longer = datagram + extra
    reason = "oversized-datagram" if len(longer) > wire.MAX_DATAGRAM else "bad-length"
    assert rx.open(longer) is None
    assert rx.drops == collections.Counter({reason: 1})


def test_payload_too_short_for_a_tag_is_dropped() -> None:
    _, rx = pair()
    header = wire.Header(wire.WIRE_VERSION, 0, SENDER, START, 15).encode()
    assert rx.open(header + bytes(15)) is None
    assert rx.drops == collections.Counter({"truncated-payload": 1})


def test_own_datagram_is_dropped() -> None:
    tx, _ = pair()
    assert tx.open(tx.seal(b"echo from the broadcast")) is None
    assert tx.drops == collections.Counter({"own-datagram": 1})


# -- replay window ----------------------------------------------------------------


@given(count=st.integers(1, 40), data=st.data())
def test_replay_of_any_earlier_datagram_is_dropped(count: int, data: st.DataObject) -> None:
    tx, rx = pair()
    sent = [tx.seal(i.to_bytes(2, "big")) for i in range(count)]
    for datagram in sent:
        assert rx.open(datagram) is not None
    replays = data.draw(st.lists(st.sampled_from(sent), min_size=1, max_size=10), label="replays")
    for datagram in replays:
        assert rx.open(datagram) is None
    assert rx.drops == collections.Counter({"replayed": len(replays)})


@given(st.randoms(use_true_random=False))
def test_reordering_within_the_window_is_accepted_once(rng: random.Random) -> None:
    window = 64
    tx, rx = pair(window=window)
    sent = [tx.seal(i.to_bytes(2, "big")) for i in range(window)]
    shuffled = sent[:]
    rng.shuffle(shuffled)
    got = [rx.open(d) for d in shuffled]
    assert all(g is not None for g in got)
    assert sorted(g[1] for g in got if g is not None) == [i.to_bytes(2, "big") for i in range(64)]
    assert rx.drops == collections.Counter()
    for datagram in shuffled:
        assert rx.open(datagram) is None
    assert rx.drops == collections.Counter({"replayed": window})


def test_older_than_the_window_is_dropped_as_too_old() -> None:
    window = 8
    tx, rx = pair(window=window)
    sent = [tx.seal(bytes([i])) for i in range(20)]
    assert rx.open(sent[19]) is not None
    # counters 12..18 are within the window (19 - 12 < 8); 0..11 are not
    for i in range(12, 19):
        assert rx.open(sent[i]) is not None, i
    for i in range(12):
        assert rx.open(sent[i]) is None
    assert rx.drops == collections.Counter({"too-old": 12})


def test_large_jump_clears_the_window() -> None:
    tx, rx = pair(window=16)
    first = tx.seal(b"first")
    assert rx.open(first) is not None
    for _ in range(100):
        tx.seal(b"lost")
    assert rx.open(tx.seal(b"after the gap")) is not None
    assert rx.open(first) is None
    assert rx.drops == collections.Counter({"too-old": 1})


@given(gaps=st.lists(st.integers(0, 200), min_size=1, max_size=30))
def test_window_memory_stays_bounded(gaps: list[int]) -> None:
    """The bitmap is trimmed to the window size, however far counters jump."""
    window = 32
    tx, rx = pair(window=window)
    for gap in gaps:
        for _ in range(gap):
            tx.seal(b"lost")
        assert rx.open(tx.seal(b"delivered")) is not None
    assert rx.drops == collections.Counter()
    assert rx._windows[SENDER].bitmap.bit_length() <= window


def test_windows_are_per_sender() -> None:
    keyring = Keyring.single(KEY_A)
    a = Encryption(10, keyring, 1000)
    b = Encryption(11, keyring, 1000)  # same counters as a, other sender id
    rx = Encryption(12, keyring, 0)
    assert rx.open(a.seal(b"a")) is not None
    assert rx.open(b.seal(b"b")) is not None
    assert rx.drops == collections.Counter()


@given(
    forged_counters=st.lists(
        st.integers(0, 2**64 - 1) | st.integers(START - 40, START + 40), min_size=1, max_size=10
    ),
    body=st.binary(min_size=16, max_size=200),
)
def test_forgeries_do_not_move_the_window(forged_counters: list[int], body: bytes) -> None:
    tx, rx = pair(window=32)
    assert rx.open(tx.seal(b"genuine 0")) is not None
    for counter in forged_counters:
        forged = wire.Header(wire.WIRE_VERSION, 0, SENDER, counter, len(body)).encode() + body
        assert rx.open(forged) is None
    # the window holds only START: what is refused before the tag check is
    # decided by that alone, whatever forgeries came before
    expected: collections.Counter[str] = collections.Counter()
    for counter in forged_counters:
        if counter == START:
            expected["replayed"] += 1
        elif counter < START and START - counter >= 32:
            expected["too-old"] += 1
        elif counter - START > MAX_COUNTER_JUMP:
            expected["counter-jump"] += 1
        else:
            expected["bad-tag"] += 1
    assert rx.drops == expected
    for i in range(1, 40):
        assert rx.open(tx.seal(f"genuine {i}".encode())) is not None
    assert rx.drops == expected


# -- keys -----------------------------------------------------------------------


def test_wrong_key_with_the_same_id_is_a_bad_tag() -> None:
    tx = Encryption(SENDER, Keyring.single(KEY_B), START)
    rx = Encryption(RECEIVER, Keyring.single(KEY_A), 0)
    assert rx.open(tx.seal(b"x")) is None
    assert rx.drops == collections.Counter({"bad-tag": 1})


def test_unknown_key_id_is_dropped() -> None:
    tx = Encryption(SENDER, Keyring.single(KEY_A, key_id=7), START)
    rx = Encryption(RECEIVER, Keyring.single(KEY_A, key_id=0), 0)
    assert rx.open(tx.seal(b"x")) is None
    assert rx.drops == collections.Counter({"unknown-key": 1})


@given(st.randoms(use_true_random=False))
def test_key_rotation_loses_nothing(rng: random.Random) -> None:
    """Three nodes go through the three rotation steps one node at a time, in
    a random order, exchanging traffic after every single change."""
    old = Keyring.single(KEY_A, key_id=1)
    nodes = [Encryption(n, old, START + n * 7) for n in (1, 2, 3)]
    steps: list[Callable[[Keyring], Keyring]] = [
        lambda k: k.with_key(2, KEY_B),
        lambda k: k.switch_to(2),
        lambda k: k.without_key(1),
    ]
    sent = 0

    def exchange() -> None:
        nonlocal sent
        for src in nodes:
            datagram = src.seal(f"from {src.node_id}".encode())
            sent += 1
            for dst in nodes:
                if dst is not src:
                    assert dst.open(datagram) is not None

    for step in steps:
        order = nodes[:]
        rng.shuffle(order)
        for node in order:
            node.set_keyring(step(node.keyring))
            exchange()
    assert sent == 9 * 3
    for node in nodes:
        assert node.drops == collections.Counter()
        assert node.opened == 9 * 2  # 9 exchanges, one datagram from each of 2 peers
        assert dict(node.keyring.keys) == {2: KEY_B}


def test_after_rotation_the_old_key_is_refused() -> None:
    stale = Encryption(SENDER, Keyring.single(KEY_A, key_id=1), START)
    rx = Encryption(RECEIVER, Keyring({1: KEY_A, 2: KEY_B}, 1), 0)
    assert rx.open(stale.seal(b"before")) is not None
    rx.set_keyring(rx.keyring.switch_to(2).without_key(1))
    assert rx.open(stale.seal(b"after")) is None
    assert rx.drops == collections.Counter({"unknown-key": 1})


# -- restarts ---------------------------------------------------------------------


@given(sent_before=st.integers(1, 50), uptime_us=st.integers(1, 10**12))
def test_restarted_sender_with_higher_counter_is_accepted(sent_before: int, uptime_us: int) -> None:
    tx, rx = pair()
    for _ in range(sent_before):
        assert rx.open(tx.seal(b"old life")) is not None
    # the runtime restarts with its new start time; it is above every counter
    # of the old life as long as that life sent < 1 datagram per microsecond
    restarted = Encryption(SENDER, tx.keyring, START + max(uptime_us, sent_before))
    for _ in range(5):
        assert rx.open(restarted.seal(b"new life")) is not None
    assert rx.drops == collections.Counter()


def test_restart_with_a_clock_gone_backwards_is_refused() -> None:
    tx, rx = pair(window=16)
    for _ in range(100):
        tx.seal(b"unseen")
    assert rx.open(tx.seal(b"old life")) is not None
    restarted = Encryption(SENDER, tx.keyring, START)  # would reuse nonces
    assert rx.open(restarted.seal(b"new life, reused nonce")) is None
    assert rx.drops == collections.Counter({"too-old": 1})


# -- validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "send", "message"),
    [
        ({}, 0, "at least one key"),
        ({0: b"short"}, 0, "32 bytes"),
        ({256: KEY_A}, 256, "0..255"),
        ({-1: KEY_A}, -1, "0..255"),
        ({0: KEY_A}, 1, "send_key_id 1"),
        ({0: "k" * 32}, 0, "32 bytes"),
    ],
)
def test_keyring_validation(keys: dict[int, bytes], send: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Keyring(keys, send)


def test_keyring_steps_validate_and_hide_keys() -> None:
    keyring = Keyring.single(KEY_A, key_id=1)
    assert KEY_A.hex() not in repr(keyring) and str(KEY_A) not in repr(keyring)
    with pytest.raises(ValueError, match="already in use"):
        keyring.with_key(1, KEY_B)
    with pytest.raises(ValueError, match="send key"):
        keyring.with_key(2, KEY_B).without_key(1)
    with pytest.raises(ValueError, match="not in the keyring"):
        keyring.without_key(9)
    with pytest.raises(ValueError, match="send_key_id"):
        keyring.switch_to(2)


def test_keyring_is_a_private_copy() -> None:
    keys = {0: KEY_A}
    keyring = Keyring(keys, 0)
    keys[0] = KEY_B
    assert keyring.keys[0] == KEY_A


@pytest.mark.parametrize(
    ("node_id", "counter", "window"),
    [(-1, 0, 1024), (2**32, 0, 1024), (1, -1, 1024), (1, 2**64, 1024), (1, 0, 0)],
)
def test_encryption_validation(node_id: int, counter: int, window: int) -> None:
    with pytest.raises(ValueError):
        Encryption(node_id, Keyring.single(KEY_A), counter, replay_window=window)


@settings(max_examples=300)
@given(st.binary(min_size=0, max_size=wire.MAX_DATAGRAM + 10))
def test_random_bytes_are_dropped_never_raise(junk: bytes) -> None:
    _, rx = pair()
    assert rx.open(junk) is None
    assert sum(rx.drops.values()) == 1
