"""Conntrack events by learned layout (ct_event_layouts) against the generic
decoder (conntrack_netlink.decode_conntrack_event): same events, same
counted reasons, for real kernel events and for random ones, damaged or not."""

from __future__ import annotations

import collections
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from test_record_table import connections

from availability_manager.connection import PROTO_UDP, Connection, Tuple
from availability_manager.dataplane import netlink_attrs as nl
from availability_manager.dataplane.conntrack_netlink import (
    IPCTNL_MSG_CT_NEW,
    NFNL_SUBSYS_CTNETLINK,
    Event,
    encode_inject,
    parse_events,
)
from availability_manager.dataplane.ct_event_layouts import EventLayouts

# Captured from kernel 6.18 in a namespace (UDP/IPv4 marked, UDP/IPv6 marked,
# TCP/IPv4 NEW with protoinfo, a TCP UPDATE, UDP/IPv4 without a mark).
REAL_EVENTS = [
    bytes.fromhex(h)
    for h in (
        (
            "9c000000000100060000000000000000020000003400018014000180080001007f000001080002007f00"
            "00011c000280050001001100000006000200d29f00000600030013890000340002801400018008000100"
            "7f000001080002007f0000011c0002800500010011000000060002001389000006000300d29f00000800"
            "0c0038c403dd0800030000000008080007000000001e0800080000000005"
        ),
        (
            "cc0000000001000600000000000000000a0000004c0001802c0001801400030000000000000000000000"
            "00000000000114000400000000000000000000000000000000011c000280050001001100000006000200"
            "bc10000006000300138a00004c0002802c00018014000300000000000000000000000000000000011400"
            "0400000000000000000000000000000000011c000280050001001100000006000200138a000006000300"
            "bc10000008000c00a1898a2f0800030000000008080007000000001e0800080000000007"
        ),
        (
            "cc000000000100060000000000000000020000003400018014000180080001007f000001080002007f00"
            "00011c0002800500010006000000060002009ab8000006000300138b0000340002801400018008000100"
            "7f000001080002007f0000011c000280050001000600000006000200138b0000060003009ab800000800"
            "0c00b6b5788808000300000000080800070000000078300004802c000180050001000100000005000200"
            "0a0000000500030000000000060004000300000006000500000000000800080000000005"
        ),
        (
            "cc000000000100000000000000000000020000003400018014000180080001007f000001080002007f00"
            "00011c0002800500010006000000060002009ab8000006000300138b0000340002801400018008000100"
            "7f000001080002007f0000011c000280050001000600000006000200138b0000060003009ab800000800"
            "0c00b6b57888080003000000000e0800070000069780300004802c000180050001000300000005000200"
            "0a000000050003000a000000060004002300000006000500230000000800080000000005"
        ),
        (
            "94000000000100060000000000000000020000003400018014000180080001007f000001080002007f00"
            "00021c0002800500010011000000060002008c7900000600030013910000340002801400018008000100"
            "7f000002080002007f0000011c00028005000100110000000600020013910000060003008c7900000800"
            "0c002079caef0800030000000008080007000000001e"
        ),
    )
]
_NFGEN = struct.Struct("=BBH")


def both(data: bytes, mask: int, layouts: EventLayouts) -> tuple[object, object]:
    """(generic result, result with layouts), each with its counted reasons."""
    ref_bad: collections.Counter[str] = collections.Counter()
    fast_bad: collections.Counter[str] = collections.Counter()
    ref = parse_events(data, mask, ref_bad)
    fast = parse_events(data, mask, fast_bad, layouts)
    return (typed(ref), ref_bad), (typed(fast), fast_bad)


def typed(events: list[Event]) -> list[tuple[str, type, object, bytes]]:
    return [(kind, type(item), item, item.key) for kind, item in events]


def test_real_kernel_events_decode_alike_once_learned_and_with_other_values() -> None:
    layouts = EventLayouts(0xFFFF)
    for data in REAL_EVENTS:
        ref, fast = both(data, 0xFFFF, layouts)  # first sight: learns
        assert ref == fast
        _, mtype, flags = struct.unpack_from("=IHH", data)
        assert layouts.decode(data, 16, len(data), mtype, flags) is not None  # learned
        ref, fast = both(data, 0xFFFF, layouts)  # by layout
        assert ref == fast
        other = bytearray(data)
        other[-1] ^= 0x03  # the last byte: a mark, a status or a timeout value
        other[44] ^= 0x5A  # inside the original tuple's source address
        ref, fast = both(bytes(other), 0xFFFF, layouts)
        assert ref == fast
    assert len(layouts._layouts) == 5


@st.composite
def events(draw: st.DrawFn) -> bytes:
    conn = draw(connections())  # NAT, helper, seqadj: events the layouts must refuse too
    size = len(conn.orig.src)
    mtype = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW
    flags = draw(st.sampled_from([0, nl.NLM_F_CREATE | nl.NLM_F_EXCL]))
    return nl.message(mtype, flags, 0, _NFGEN.pack(size // 4, 0, 0) + encode_inject(conn))


@settings(max_examples=400, deadline=None)
@given(
    first=events(),
    second=events(),
    flips=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)), max_size=3),
    # the last two give buckets beyond 65535, which only the generic decoder refuses
    mask=st.sampled_from([0xFFFF, 0xFF00, 0x0FF0, 0xFFFFFFFF, 0xFFFF0000]),
)
def test_random_events_decode_alike_damaged_or_not(
    first: bytes, second: bytes, flips: list[tuple[int, int]], mask: int
) -> None:
    """Learn from `first`; `second`, perhaps damaged, decodes as the generic
    decoder decodes it (or is refused for the same counted reason)."""
    layouts = EventLayouts(mask)
    assert both(first, mask, layouts)[0] == both(first, mask, layouts)[1]
    data = bytearray(second)
    for pos, value in flips:
        if 16 <= pos < len(data):  # the payload: the netlink header frames the message
            data[pos] = value
    ref, fast = both(bytes(data), mask, layouts)
    assert ref == fast
    ref, fast = both(bytes(data), mask, layouts)  # and once that one is learned too
    assert ref == fast


def test_a_bucket_beyond_65535_is_refused_by_a_learned_layout_too() -> None:
    """A 32-bit mark mask can name a bucket no Connection holds: the generic
    decoder counts it as a bad value, and so must an event of a learned layout
    (it builds its Connection without the constructor's checks)."""
    orig = Tuple(bytes(4), bytes([1] * 4), 1, 2)

    def event(mark: int) -> bytes:
        conn = Connection(PROTO_UDP, orig, orig.inverse(), mark=mark)
        mtype = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW
        return nl.message(mtype, 0, 0, _NFGEN.pack(1, 0, 0) + encode_inject(conn))

    layouts = EventLayouts(0xFFFFFFFF)
    ref, fast = both(event(5), 0xFFFFFFFF, layouts)  # learns the layout
    assert ref == fast and fast[0][0][2].bucket == 4
    ref, fast = both(event(0x12345678), 0xFFFFFFFF, layouts)
    assert ref == fast == ([], collections.Counter({"bad-value": 1}))
