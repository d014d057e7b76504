"""Why this node may not own buckets: every watcher's verdict, combined.

Several watchers can find this node unfit to forward: its interfaces (links),
a next hop, an operator's health check, the kernel refusing its rules. The
Node takes a single bit (`Node.set_link_status`); this keeps who said what, so
that the bit turns up again only when every watcher is content, and status,
clusterctl, metrics and notify hooks can say why the node stepped back.

A watcher may also ask for less rather than nothing: a weight cap (an
operator check with action `weight`). The node's weight is then the lowest
cap asked for, never above its configured weight.
"""

from __future__ import annotations


class OwnStatus:
    def __init__(self) -> None:
        self._faults: dict[str, str] = {}
        self._weight_caps: dict[str, int] = {}

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

    def set_weight_cap(self, watcher: str, cap: int | None) -> None:
        """Record `watcher`'s weight cap (None: no cap)."""
        if cap is None:
            self._weight_caps.pop(watcher, None)
        else:
            if cap < 1:
                raise ValueError(f"{watcher}: a weight cap must be at least 1, got {cap}")
            self._weight_caps[watcher] = cap

    def weight(self, configured: int) -> int:
        """The weight to announce: the configured one, or the lowest cap below it."""
        return min([configured, *self._weight_caps.values()])

    def weight_caps(self) -> dict[str, int]:
        return dict(sorted(self._weight_caps.items()))
