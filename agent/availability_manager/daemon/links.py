"""Own status: are this node's sync and zone interfaces up?

rtnetlink link events (pyroute2, RTMGRP_LINK) tell *when* to look; the
answer is read from each interface's operstate and IFF_UP flag, so a missed
event cannot leave a wrong answer for long (the runtime also re-checks
periodically).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

from pyroute2 import IPRoute

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000


class LinkMonitor:
    def __init__(self, interfaces: Sequence[str]) -> None:
        self.interfaces = tuple(interfaces)
        self._ipr = IPRoute()
        self._ipr.bind()  # default groups include RTMGRP_LINK

    def fileno(self) -> int:
        return int(self._ipr.fileno())

    def drain_events(self) -> None:
        """Consume pending rtnetlink messages; the caller then calls down()."""
        try:
            self._ipr.get()
        except (OSError, socket.error):
            pass

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
        self._ipr.close()
