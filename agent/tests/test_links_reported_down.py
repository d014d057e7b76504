"""links.reported_down: which watched interfaces an rtnetlink datagram says
went down, so a flap shorter than the agent's reaction still counts."""

from __future__ import annotations

import struct

from availability_manager.daemon.links import (
    IFF_LOWER_UP,
    IFF_UP,
    IFLA_IFNAME,
    RTM_NEWLINK,
    reported_down,
)
from availability_manager.dataplane import netlink_attrs as nl

WATCHED = frozenset({"in0", "sync0"})


def newlink(name: str, flags: int, mtype: int = RTM_NEWLINK) -> bytes:
    ifinfo = struct.pack("=BxHiII", 0, 1, 7, flags, 0xFFFFFFFF)
    return nl.message(mtype, 0, 0, ifinfo + nl.attr(IFLA_IFNAME, name.encode() + b"\0"))


def test_a_watched_interface_without_up_or_carrier_is_reported() -> None:
    data = newlink("in0", IFF_UP) + newlink("sync0", IFF_LOWER_UP)
    assert reported_down(data, WATCHED) == {"in0", "sync0"}


def test_up_with_carrier_or_unwatched_or_other_messages_report_nothing() -> None:
    data = (
        newlink("in0", IFF_UP | IFF_LOWER_UP)
        + newlink("eth9", 0)
        + newlink("sync0", 0, mtype=RTM_NEWLINK + 1)  # RTM_DELLINK: sysfs says the rest
    )
    assert reported_down(data, WATCHED) == set()


def test_a_malformed_datagram_reports_nothing() -> None:
    good = newlink("in0", 0)
    assert reported_down(good[:-3], WATCHED) == set()
    assert reported_down(good[:20], WATCHED) == set()
