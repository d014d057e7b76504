"""The nftables side of a make-before-break handoff: timed switches.

A handoff (ranges.py) makes the giver stop forwarding some buckets and the
taker start at one wall-clock instant. nftables compares the packet's arrival
time with `meta time` (CLOCK_REALTIME in nanoseconds, the clock the agent's
wall time comes from), so the switch happens in the kernel, packet by packet,
whatever the agent's latency. nft (1.0.6, text and JSON alike) reads a
`meta time` value as a date or as whole seconds since the epoch (an integer
is multiplied by 10^9; checked with `nft --debug=netlink`), so switch
instants are whole seconds (NodeConfig.handover_quantum = 1 in the daemon)
and are written as integers, which no time zone can shift.

One transaction replaces the owned sets, the `switching` set (every bucket of
a pending switch: the early chain leaves their packets to the cluster chain)
and the rules of the `handover` chain: per switch instant and direction one
rule for known connections (by conntrack mark) that accepts before (stop) or
from (start) the instant. The cluster chain jumps there before it drops a
packet of a bucket it does not own; NEW packets carry their freshly set mark
there too.

The transaction is a netlink batch (`forwarding_batch`, nft_batch.py): the
marks of each rule go into one of SWITCH_SLOTS named sets the ruleset
declares, flushed and refilled with the rules. More distinct instants than
slots at once (never seen: a handoff takes the next whole second) take the
`nft -j` transaction of `render_forwarding_update`, with anonymous sets.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from ..node_events import Switch
from .base import DataPlaneConfig
from .bucket import mask_shift
from .nft_batch import Batch, counter_accept, ct_mark_masked_in, meta_time, u32_key
from .nft_ruleset import (
    HANDOVER_CHAIN,
    OWNED_MARKS_SET,
    OWNED_SET,
    SWITCH_SLOTS,
    SWITCHING_SET,
    TABLE,
    render_elements,
    switch_slot,
)


def _mark(config: DataPlaneConfig, bucket: int) -> int:
    return (bucket + 1) << mask_shift(config.mark_mask)


def _whole_second(switch: Switch) -> int:
    seconds = round(switch.at)
    if seconds != switch.at or not 0 < seconds < 1 << 34:
        raise ValueError(f"switch time {switch.at!r} is not a whole wall-clock second")
    return seconds


def _switch_rule(config: DataPlaneConfig, switch: Switch) -> dict[str, Any]:
    marks = [_mark(config, b) for b in sorted(switch.buckets)]
    seconds = _whole_second(switch)
    return {
        "rule": {
            "family": "inet",
            "table": TABLE,
            "chain": HANDOVER_CHAIN,
            "expr": [
                {
                    "match": {
                        "op": "==",
                        "left": {"&": [{"ct": {"key": "mark"}}, config.mark_mask]},
                        "right": {"set": marks},
                    }
                },
                {
                    "match": {
                        "op": ">=" if switch.start else "<",
                        "left": {"meta": {"key": "time"}},
                        "right": seconds,
                    }
                },
                {"counter": None},
                {"accept": None},
            ],
        }
    }


def _set_ops(name: str, values: Sequence[int]) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = [
        {"flush": {"set": {"family": "inet", "table": TABLE, "name": name}}}
    ]
    if values:
        ops.append(
            {
                "add": {
                    "element": {
                        "family": "inet",
                        "table": TABLE,
                        "name": name,
                        "elem": list(values),
                    }
                }
            }
        )
    return ops


def render_forwarding_update(
    config: DataPlaneConfig, owned: Iterable[int], switches: Sequence[Switch] = ()
) -> str:
    """An `nft -j -f` transaction: the owned sets, the switching set and the
    handover chain's rules, replaced at once."""
    owned = sorted(set(owned))
    render_elements(config, owned)  # validates the bucket numbers
    switching = sorted({b for s in switches for b in s.buckets})
    render_elements(config, switching)
    ops: list[dict[str, Any]] = []
    ops += _set_ops(OWNED_SET, owned)
    ops += _set_ops(OWNED_MARKS_SET, [_mark(config, b) for b in owned])
    ops += _set_ops(SWITCHING_SET, switching)
    ops.append({"flush": {"chain": {"family": "inet", "table": TABLE, "name": HANDOVER_CHAIN}}})
    ops += [{"add": _switch_rule(config, s)} for s in switches]
    return json.dumps({"nftables": ops})


def switch_groups(switches: Sequence[Switch]) -> dict[tuple[int, bool], frozenset[int]]:
    """The switches' buckets per (whole second, start): one rule each."""
    groups: dict[tuple[int, bool], frozenset[int]] = {}
    for switch in switches:
        key = (_whole_second(switch), switch.start)
        groups[key] = groups.get(key, frozenset()) | switch.buckets
    return groups


def fits_batch(switches: Sequence[Switch]) -> bool:
    """Whether `forwarding_batch` can write these switches (enough slots)."""
    return len(switch_groups(switches)) <= SWITCH_SLOTS


def forwarding_batch(
    batch: Batch, config: DataPlaneConfig, owned: Iterable[int], switches: Sequence[Switch] = ()
) -> None:
    """The same transaction as `render_forwarding_update`, as netlink messages
    added to `batch`; the switches' marks go into the slot sets. Raises
    ValueError for a bucket out of range, a switch not on a whole second or
    more instants than slots (see `fits_batch`)."""
    owned = sorted(set(owned))
    render_elements(config, owned)  # validates the bucket numbers
    groups = switch_groups(switches)
    if len(groups) > SWITCH_SLOTS:
        raise ValueError(f"{len(groups)} switch instants, only {SWITCH_SLOTS} slots")
    switching = sorted({b for s in switches for b in s.buckets})
    render_elements(config, switching)
    batch.replace_set(OWNED_SET, (u32_key(b) for b in owned))
    batch.replace_set(OWNED_MARKS_SET, (u32_key(_mark(config, b)) for b in owned))
    batch.replace_set(SWITCHING_SET, (u32_key(b) for b in switching))
    batch.flush_chain(HANDOVER_CHAIN)  # first: its rules use the slots
    for slot in range(SWITCH_SLOTS):
        batch.flush_set(switch_slot(slot))
    for slot, ((seconds, start), buckets) in enumerate(sorted(groups.items())):
        name = switch_slot(slot)
        batch.add_elements(name, (u32_key(_mark(config, b)) for b in sorted(buckets)))
        batch.add_rule(
            HANDOVER_CHAIN,
            [
                *ct_mark_masked_in(config.mark_mask, name),
                *meta_time(not start, seconds),
                *counter_accept(),
            ],
        )
