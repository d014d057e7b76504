"""Authenticated encryption of every datagram on the sync network.

This module owns the cluster keys, the per-node send counter (the nonce) and
the per-sender replay windows; nothing else. It is sans-I/O: bytes in, bytes
out, no clock (the runtime passes the counter's start value).

    datagram = Header (20 bytes, clear, AEAD associated data)
             | ChaCha20-Poly1305(key[key_id], nonce, plaintext, aad=Header)
    nonce    = sender node id (4 bytes, big endian) | counter (8 bytes)

Nonce uniqueness: the counter starts at the node's start time in microseconds
and grows by one per datagram, so a restarted node starts above every counter
its previous life used (unless it sent more than a million datagrams a second,
for its whole life). `seal` refuses to wrap the 64-bit counter.

Receive path (`open`), in order; the first failing check drops the datagram
with a counted reason in `drops` (never an exception):

    header checks (wire.decode_header)  -> WireError.reason (bad-magic, ...)
    sender is this node                 -> "own-datagram"
    sender not in the configured members-> "unknown-sender" (before any state)
    key id not in the keyring           -> "unknown-key"
    counter at/below window's lower end -> "too-old"
    counter already seen in the window  -> "replayed"
    counter > MAX_COUNTER_JUMP ahead    -> "counter-jump"
    AEAD tag does not verify            -> "bad-tag"
    a new sender beyond max_senders     -> "too-many-senders"
    accepted: the sender's window is updated (only now, so a forgery with a
    huge counter cannot push genuine traffic out of the window)

Key rotation without downtime: (1) give every node a keyring holding the old
and the new key, still sending with the old one (`Keyring.with_key`); (2) switch
every node's `send_key_id` to the new key (`Keyring.switch_to`); (3) remove the
old key (`Keyring.without_key`). Each step is applied with `set_keyring` at
runtime; between steps every node accepts what every other node sends.
"""

from __future__ import annotations

import collections
import dataclasses
import struct
import types
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from . import wire

KEY_SIZE = 32
MAX_COUNTER = 2**64 - 1
# How far ahead of the highest counter heard from a sender the next may be
# (microseconds, since counters start at the clock: about 200 days of
# downtime). Every key holder can seal under any node id; without this bound
# one datagram with counter 2**64 - 1 would make the victim's real ones
# "too-old" for good. With it, pushing a window to the end of the counter
# space takes about a million datagrams, each of them counted.
MAX_COUNTER_JUMP = 1 << 44
# Replay windows kept by default: one per sender ever authenticated. Bounded
# so that forged ids (any key holder can invent them) cannot grow the table.
MAX_SENDERS = 1024
_NONCE = struct.Struct("!IQ")


class CounterExhausted(RuntimeError):
    """The 64-bit send counter would wrap: sending again would reuse a nonce."""


@dataclasses.dataclass(frozen=True)
class Keyring:
    """The cluster keys a node accepts, and the one it sends with.

    `keys` maps a key id (0..255, carried in every header) to a 32-byte key.
    Keys are kept out of `repr` so they never end up in a log line.
    """

    keys: Mapping[int, bytes] = dataclasses.field(repr=False, hash=False)
    send_key_id: int

    def __post_init__(self) -> None:
        if not isinstance(self.keys, Mapping) or not self.keys:
            raise ValueError("keyring: at least one key is required")
        for key_id, key in self.keys.items():
            if not isinstance(key_id, int) or isinstance(key_id, bool) or not 0 <= key_id <= 255:
                raise ValueError(f"keyring: key id {key_id!r} is not an integer 0..255")
            if not isinstance(key, bytes) or len(key) != KEY_SIZE:
                raise ValueError(f"keyring: key {key_id} must be {KEY_SIZE} bytes")
        if self.send_key_id not in self.keys:
            raise ValueError(
                f"keyring: send_key_id {self.send_key_id!r} is not one of the key ids "
                f"{sorted(self.keys)}"
            )
        # A private read-only copy: the caller's dict can change without
        # changing a keyring already handed to an Encryption.
        object.__setattr__(self, "keys", types.MappingProxyType(dict(self.keys)))

    @classmethod
    def single(cls, key: bytes, key_id: int = 0) -> Keyring:
        return cls({key_id: key}, key_id)

    def with_key(self, key_id: int, key: bytes) -> Keyring:
        """Rotation step 1: also accept `key`, still sending with the current key."""
        if key_id in self.keys:
            raise ValueError(f"keyring: key id {key_id} is already in use")
        return Keyring({**self.keys, key_id: key}, self.send_key_id)

    def switch_to(self, key_id: int) -> Keyring:
        """Rotation step 2: send with `key_id` (which must already be accepted)."""
        return Keyring(self.keys, key_id)

    def without_key(self, key_id: int) -> Keyring:
        """Rotation step 3: stop accepting `key_id` (not the send key)."""
        if key_id not in self.keys:
            raise ValueError(f"keyring: key id {key_id} is not in the keyring")
        if key_id == self.send_key_id:
            raise ValueError(f"keyring: key id {key_id} is the send key; switch first")
        return Keyring({k: v for k, v in self.keys.items() if k != key_id}, self.send_key_id)


class _ReplayWindow:
    """Highest counter accepted from one sender, plus a bitmap of the last
    `size` counters: bit i set <=> counter (highest - i) was accepted."""

    __slots__ = ("bitmap", "highest")

    def __init__(self, counter: int) -> None:
        self.highest = counter
        self.bitmap = 1

    def check(self, counter: int, size: int) -> str | None:
        """The drop reason for `counter`, or None if it is fresh. Changes nothing."""
        if counter > self.highest:
            return None
        behind = self.highest - counter
        if behind >= size:
            return "too-old"
        if (self.bitmap >> behind) & 1:
            return "replayed"
        return None

    def accept(self, counter: int, size: int) -> None:
        """Record `counter` (which passed `check` and authenticated)."""
        if counter > self.highest:
            shift = counter - self.highest
            # Python ints shift cheaply; the mask keeps the bitmap to `size` bits.
            self.bitmap = ((self.bitmap << shift) | 1) & ((1 << size) - 1) if shift < size else 1
            self.highest = counter
        else:
            self.bitmap |= 1 << (self.highest - counter)


class Encryption:
    """Seals datagrams sent by `node_id` and opens datagrams from its peers."""

    def __init__(
        self,
        node_id: int,
        keyring: Keyring,
        initial_counter: int,
        replay_window: int = 1024,
        *,
        allowed_senders: frozenset[int] | None = None,
        max_senders: int = MAX_SENDERS,
    ) -> None:
        """`allowed_senders`: the node ids of the cluster (None: any); a
        datagram from another id is dropped before anything is kept of it.
        `max_senders`: replay windows kept at most; a further sender is
        dropped (its datagrams could not be replay-checked)."""
        if not 1 <= max_senders <= 1 << 20:
            raise ValueError(f"max_senders must be 1..{1 << 20}, got {max_senders}")
        if not 0 <= node_id <= 0xFFFFFFFF:
            raise ValueError(f"node_id must be a 32-bit unsigned integer, got {node_id}")
        if not 0 <= initial_counter <= MAX_COUNTER:
            raise ValueError(f"initial_counter must be 0..2**64-1, got {initial_counter}")
        if not 1 <= replay_window <= 1 << 16:
            raise ValueError(f"replay_window must be 1..65536, got {replay_window}")
        self.node_id = node_id
        self.replay_window = replay_window
        self.drops: collections.Counter[str] = collections.Counter()
        self.sealed = 0
        self.opened = 0
        # The header's version byte: the version the cluster speaks (the Node
        # lowers it while a previous release is a member), so a datagram says
        # what its messages mean. Receivers accept any version up to theirs.
        self.version = wire.WIRE_VERSION
        self._counter = initial_counter
        self._windows: dict[int, _ReplayWindow] = {}
        self._allowed = allowed_senders
        self._max_senders = max_senders
        self._keyring = keyring
        self._aeads: dict[int, ChaCha20Poly1305] = {}
        self.set_keyring(keyring)

    @property
    def keyring(self) -> Keyring:
        return self._keyring

    @property
    def counter(self) -> int:
        """The counter (nonce) the next sealed datagram will carry."""
        return self._counter

    @property
    def max_plaintext(self) -> int:
        """The largest plaintext that fits in one datagram."""
        return wire.MAX_DATAGRAM - wire.HEADER_SIZE - wire.TAG_SIZE

    def set_keyring(self, keyring: Keyring) -> None:
        """Swap the keys at runtime (a rotation step). Replay windows are kept:
        a sender's counter runs across keys, so its window does too."""
        # One cipher object per key, built once, not per datagram.
        self._aeads = {kid: ChaCha20Poly1305(key) for kid, key in keyring.keys.items()}
        self._keyring = keyring

    def seal(self, plaintext: bytes) -> bytes:
        """One datagram carrying `plaintext`, sealed with the send key.

        Raises ValueError if it would not fit a datagram (the caller must
        respect `max_plaintext`) and CounterExhausted before reusing a nonce.
        """
        if len(plaintext) > self.max_plaintext:
            raise ValueError(
                f"plaintext of {len(plaintext)} bytes exceeds max_plaintext {self.max_plaintext}"
            )
        counter = self._counter
        if counter > MAX_COUNTER:
            raise CounterExhausted(f"node {self.node_id}: 64-bit send counter exhausted")
        key_id = self._keyring.send_key_id
        # Same bytes as wire.Header(...).encode(), without building a Header.
        header = wire.HEADER.pack(
            wire.MAGIC,
            self.version,
            key_id,
            self.node_id,
            counter,
            len(plaintext) + wire.TAG_SIZE,
            0,
        )
        sealed = self._aeads[key_id].encrypt(_NONCE.pack(self.node_id, counter), plaintext, header)
        self._counter = counter + 1
        self.sealed += 1
        return header + sealed

    def open(self, datagram: bytes) -> tuple[wire.Header, bytes] | None:
        """The header and plaintext of an authentic, fresh datagram, or None
        (the reason counted in `drops`)."""
        try:
            header = wire.decode_header(datagram)
        except wire.WireError as exc:
            self.drops[exc.reason] += 1
            return None
        if header.sender == self.node_id:
            self.drops["own-datagram"] += 1
            return None
        if self._allowed is not None and header.sender not in self._allowed:
            self.drops["unknown-sender"] += 1
            return None
        aead = self._aeads.get(header.key_id)
        if aead is None:
            self.drops["unknown-key"] += 1
            return None
        window = self._windows.get(header.sender)
        if window is not None:
            reason = window.check(header.counter, self.replay_window)
            if reason is None and header.counter - window.highest > MAX_COUNTER_JUMP:
                reason = "counter-jump"
            if reason is not None:
                self.drops[reason] += 1
                return None
        elif len(self._windows) >= self._max_senders:
            self.drops["too-many-senders"] += 1
            return None
        view = memoryview(datagram)
        try:
            plaintext = aead.decrypt(
                _NONCE.pack(header.sender, header.counter),
                view[wire.HEADER_SIZE :],
                view[: wire.HEADER_SIZE],
            )
        except InvalidTag:
            self.drops["bad-tag"] += 1
            return None
        if window is None:
            self._windows[header.sender] = _ReplayWindow(header.counter)
        else:
            window.accept(header.counter, self.replay_window)
        self.opened += 1
        return header, plaintext
