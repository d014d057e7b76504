"""Hold-down of links that come back: when may a returned link count as up?

A link that goes down makes the node step back at once (its traffic is lost
while it owns buckets). A link that comes back is trusted only once it has
stayed up for the hold-down: each rejoin and each loss moves buckets (a
handover, a stall for the streams that move), so a link that flaps must not
move them back and forth on every flap. The hold-down of an interface doubles
(up to `max_s`) each time it fails again before it has stayed up for twice
its hold-down, and falls back to `base_s` once it has stayed up for `max_s`:
a link that flaps slowly is kept out longer each time instead of costing two
handovers per flap.

Sans-I/O: `update(down, now)` with the interfaces currently down (as
LinkMonitor reads them), `faulty(now)` says which do not count as up,
`next_deadline(now)` when that answer changes without a new input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence


@dataclasses.dataclass
class _Interface:
    down: bool = False
    up_since: float | None = None  # None: up since before we looked (not held)
    hold_s: float = 0.0


class LinkHoldDown:
    def __init__(self, interfaces: Sequence[str], base_s: float, max_s: float) -> None:
        self._ifs: dict[str, _Interface] = {}
        self.base_s = base_s
        self.configure(base_s, max_s)
        self._ifs = {name: _Interface(hold_s=base_s) for name in interfaces}

    def configure(self, base_s: float, max_s: float) -> None:
        """Set the hold-down bounds (also on a configuration reload)."""
        if not 0 <= base_s <= max_s:
            raise ValueError(f"need 0 <= hold-down {base_s} <= maximum {max_s}")
        old_base = self.base_s
        self.base_s, self.max_s = base_s, max_s
        for state in self._ifs.values():
            # keep how many times each hold-down has doubled, on the new base
            doubled = state.hold_s / old_base if old_base > 0 else 1.0
            state.hold_s = min(base_s * doubled, max_s)

    def update(self, down: Iterable[str], now: float) -> None:
        """The interfaces that are down now (every other one is up)."""
        down_now = set(down)
        for name, state in self._ifs.items():
            if name in down_now and not state.down:
                self._went_down(state, now)
            elif name not in down_now and state.down:
                state.down = False
                state.up_since = now

    def _went_down(self, state: _Interface, now: float) -> None:
        state.down = True
        if state.up_since is None:
            return
        up_for = now - state.up_since
        if up_for < 2 * state.hold_s:  # failed again soon after it came back: flapping
            state.hold_s = min(2 * state.hold_s, self.max_s)
        elif up_for >= self.max_s:  # it had been stable: forgive earlier flaps
            state.hold_s = self.base_s

    def _held(self, state: _Interface, now: float) -> bool:
        # the same sum as next_deadline's, so a held link's deadline is in the future
        return state.up_since is not None and now < state.up_since + state.hold_s

    def faulty(self, now: float) -> tuple[list[str], list[str]]:
        """(interfaces down, interfaces up but still held down)."""
        down = [n for n, s in self._ifs.items() if s.down]
        held = [n for n, s in self._ifs.items() if not s.down and self._held(s, now)]
        return down, held

    def fault(self, now: float) -> str | None:
        """The `links` watcher's verdict for OwnStatus (None: every link counts as up)."""
        down, held = self.faulty(now)
        parts = []
        if down:
            parts.append(f"interfaces down: {', '.join(down)}")
        if held:
            holds = ", ".join(f"{n} for {self._ifs[n].hold_s:g} s" for n in held)
            parts.append(f"held down after coming back: {holds}")
        return "; ".join(parts) or None

    def hold_s(self, name: str) -> float:
        """The hold-down the interface gets (or got) on its latest return."""
        return self._ifs[name].hold_s

    def next_deadline(self, now: float) -> float | None:
        """When the next held interface is released (the verdict changes
        without a new input); None when none is held."""
        ends = [
            s.up_since + s.hold_s
            for s in self._ifs.values()
            if not s.down and s.up_since is not None and self._held(s, now)
        ]
        return min(ends, default=None)
