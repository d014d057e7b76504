"""Why this node may not own buckets: every watcher's verdict, combined.

Several watchers can find this node unfit to forward: its interfaces (links),
a next hop, an operator's health check, the kernel refusing its rules. The
Node takes a single bit (`Node.set_link_status`); this keeps who said what, so
that the bit turns up again only when every watcher is content, and status,
clusterctl, metrics and notify hooks can say why the node stepped back.
"""

from __future__ import annotations


class OwnStatus:
    def __init__(self) -> None:
        self._faults: dict[str, str] = {}

    def set(self, watcher: str, fault: str | None) -> bool:
        """Record `watcher`'s verdict (None: content). True when the combined
        bit (`up`) changed."""
        was_up = self.up
        if fault is None:
            self._faults.pop(watcher, None)
        else:
            self._faults[watcher] = fault
        return self.up != was_up

    @property
    def up(self) -> bool:
        return not self._faults

    def faults(self) -> dict[str, str]:
        """watcher -> what it found wrong, for status and logs."""
        return dict(sorted(self._faults.items()))
