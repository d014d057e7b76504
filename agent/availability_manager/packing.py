"""Packing encoded messages into as few datagram-sized chunks as fit."""

from __future__ import annotations


def pack(encoded: list[bytes], limit: int) -> list[bytes]:
    """Concatenate encoded messages, in order, into as few chunks of at most
    `limit` bytes as a greedy fill gives (each message must fit on its own)."""
    chunks: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for item in encoded:
        if len(item) > limit:
            raise ValueError(f"message of {len(item)} bytes exceeds the limit {limit}")
        if size + len(item) > limit and current:
            chunks.append(b"".join(current))
            current, size = [], 0
        current.append(item)
        size += len(item)
    if current:
        chunks.append(b"".join(current))
    return chunks
