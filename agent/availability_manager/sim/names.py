"""How the simulator names its nodes: index 0.. -> 192.0.2.1.. -> A, B, C, ..."""

from __future__ import annotations

from ..types import NodeId, node_id_from_address


def node_address(index: int) -> NodeId:
    """Node `index` (0-based) lives at 192.0.2.(index + 1) on the sync network."""
    return node_id_from_address(f"192.0.2.{index + 1}")


def node_name(node: NodeId) -> str:
    """A, B, C, ... Z for 192.0.2.1 .. .26, then N27, N28, ...: short names
    for traces and reports."""
    index = (node & 0xFF) - 1
    return chr(ord("A") + index) if 0 <= index < 26 else f"N{index + 1}"
