"""Own status: are this node's sync and zone interfaces up?

rtnetlink link events (a raw NETLINK_ROUTE socket in the RTMGRP_LINK group)
tell *when* to look; the answer is read from each interface's flags and
carrier in sysfs, so a missed event cannot leave a wrong answer for long (the
runtime also re-checks periodically). The events also say which watched
interfaces went down meanwhile: a flap shorter than the agent's reaction (a
busy machine) is up again in sysfs by the time it looks, and must still count
as a loss (the node's traffic was lost while it lasted; the hold-down starts).
A raw socket, not pyroute2's IPRoute,
because the latter starts its own event loop machinery inside ours.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence

from ..dataplane import netlink_attrs as nl

NETLINK_ROUTE = 0
RTMGRP_LINK = 0x1
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000  # carrier
RTM_NEWLINK = 16
IFLA_IFNAME = 3
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change


def reported_down(data: bytes, watched: frozenset[str]) -> set[str]:
    """Watched interfaces that one rtnetlink datagram reports not up with
    carrier. Anything malformed reports nothing (sysfs is read anyway)."""
    out: set[str] = set()
    try:
        for mtype, _flags, _seq, off, end in nl.messages(data):
            if mtype != RTM_NEWLINK or end - off < _IFINFOMSG.size:
                continue
            flags = _IFINFOMSG.unpack_from(data, off)[3]
            if flags & IFF_UP and flags & IFF_LOWER_UP:
                continue
            found = nl.attrs(data, off + _IFINFOMSG.size, end).get(IFLA_IFNAME)
            if found is not None:
                v, n = found
                name = data[v : v + n].split(b"\0", 1)[0].decode("ascii", "replace")
                if name in watched:
                    out.add(name)
    except nl.Malformed:
        pass
    return out


class LinkMonitor:
    def __init__(self, interfaces: Sequence[str]) -> None:
        self.interfaces = tuple(interfaces)
        self._watched = frozenset(self.interfaces)
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self._sock.bind((0, RTMGRP_LINK))
        self._sock.setblocking(False)

    def fileno(self) -> int:
        return self._sock.fileno()

    def drain_events(self) -> set[str]:
        """Consume pending rtnetlink messages; the watched interfaces they
        report down (perhaps up again by now). The caller then calls down()."""
        seen: set[str] = set()
        while True:
            try:
                seen |= reported_down(self._sock.recv(65536), self._watched)
            except (BlockingIOError, InterruptedError):
                return seen
            except OSError:  # ENOBUFS: events lost, down() reads the truth anyway
                return seen

    def down(self) -> list[str]:
        """Interfaces that are not up with carrier (missing ones count as down)."""
        bad = []
        for name in self.interfaces:
            try:
                with open(f"/sys/class/net/{name}/flags") as f:
                    flags = int(f.read().strip(), 16)
                with open(f"/sys/class/net/{name}/carrier") as f:
                    carrier = f.read().strip() == "1"
            except (OSError, ValueError):
                bad.append(name)
                continue
            if not flags & IFF_UP or not carrier:
                bad.append(name)
        return bad

    def close(self) -> None:
        self._sock.close()
