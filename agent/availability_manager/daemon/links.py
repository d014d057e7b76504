"""Own status: are this node's sync and zone interfaces up?

rtnetlink link events (a raw NETLINK_ROUTE socket in the RTMGRP_LINK group)
tell *when* to look; the answer is read from each interface's flags and
carrier in sysfs, so a missed event cannot leave a wrong answer for long (the
runtime also re-checks periodically). A raw socket, not pyroute2's IPRoute,
because the latter starts its own event loop machinery inside ours.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

NETLINK_ROUTE = 0
RTMGRP_LINK = 0x1
IFF_UP = 0x1


class LinkMonitor:
    def __init__(self, interfaces: Sequence[str]) -> None:
        self.interfaces = tuple(interfaces)
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self._sock.bind((0, RTMGRP_LINK))
        self._sock.setblocking(False)

    def fileno(self) -> int:
        return self._sock.fileno()

    def drain_events(self) -> None:
        """Consume pending rtnetlink messages; the caller then calls down()."""
        while True:
            try:
                self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ENOBUFS: events lost, down() reads the truth anyway
                return

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
