"""The conntrack event mark filter, run by a small classic-BPF interpreter
(the opcodes the program uses, with SKF_AD_NLATTR as the kernel's nla_find)
on real kernel events: kept exactly when the mark has bucket bits. The lab
test (tests/lab/test_conntrack_netlink.py) checks the kernel agrees."""

from __future__ import annotations

import collections
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_ct_event_layouts import REAL_EVENTS

from availability_manager.dataplane.conntrack_netlink import parse_events
from availability_manager.dataplane.ct_event_filter import mark_filter

_BE32 = struct.Struct("!I")


def nla_find(data: bytes, start: int, wanted: int) -> int:
    """The offset of the first top-level attribute of type `wanted` from
    `start`, 0 if none (the kernel's __skb_get_nlattr)."""
    off = start
    while off + 4 <= len(data):
        length, atype = struct.unpack_from("=HH", data, off)
        if length < 4 or off + length > len(data):
            return 0
        if atype & 0x3FFF == wanted:
            return off
        off += (length + 3) & ~3
    return 0


def run(program: list[tuple[int, int, int, int]], data: bytes) -> int:
    a = x = pc = 0
    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        if code == 0x30:  # ld b [k]
            a = data[k]
        elif code == 0x00:  # ld #k
            a = k
        elif code == 0x01:  # ldx #k
            x = k
        elif code == 0x20:  # ld w [k]: only the NLATTR extension here
            assert k == (-0x1000 + 12) & 0xFFFFFFFF
            a = nla_find(data, a, x)
        elif code == 0x40:  # ld w [x + k]
            a = _BE32.unpack_from(data, x + k)[0]
        elif code == 0x07:  # tax
            x = a
        elif code == 0x15:  # jeq #k
            pc += jt if a == k else jf
        elif code == 0x45:  # jset #k
            pc += jt if a & k else jf
        elif code == 0x06:  # ret #k
            return k
        else:
            raise AssertionError(f"opcode {code:#x} not expected")


@pytest.mark.parametrize("mask", [0xFFFF, 0xFF00, 0x0000000F])
def test_real_events_are_kept_exactly_when_their_mark_has_bucket_bits(mask: int) -> None:
    program = mark_filter(mask)
    for data in REAL_EVENTS:
        (event,) = parse_events(data, 0xFFFF, collections.Counter())
        assert (run(program, data) != 0) == bool(event[1].mark & mask)


def test_messages_of_other_subsystems_are_kept() -> None:
    program = mark_filter(0xFFFF)
    for data in REAL_EVENTS:
        expectation = bytearray(data)
        expectation[5] = 2  # NFNL_SUBSYS_CTNETLINK_EXP
        assert run(program, bytes(expectation)) != 0
    done = struct.pack("=IHHII", 20, 3, 0, 0, 0) + b"\0" * 4  # NLMSG_DONE
    assert run(program, done) != 0


@given(mark=st.integers(0, 0xFFFFFFFF), mask=st.integers(1, 0xFFFFFFFF))
def test_any_mark_value(mark: int, mask: int) -> None:
    data = bytearray(REAL_EVENTS[0])  # its CTA_MARK is the last attribute
    data[-4:] = _BE32.pack(mark)
    assert (run(mark_filter(mask), bytes(data)) != 0) == bool(mark & mask)


def test_a_mask_must_have_bits() -> None:
    with pytest.raises(ValueError, match="mark mask"):
        mark_filter(0)
