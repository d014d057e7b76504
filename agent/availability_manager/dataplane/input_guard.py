"""The input guard: the nftables backend's `no_listener` rule, on its own.

A reply to a source-NATed connection (SNAT or masquerade to a cluster IP)
reaches every node; on every node but the owner it is a NEW connection to the
node itself, which the local stack would answer (port unreachable, reset) and
record in a conntrack entry that collides with the synced one at the next
failover (nft_ruleset._input_rules says more). The nftables backend drops such
packets in its input chain. The clusterdev module splits traffic and marks
conntrack entries exactly as that ruleset does, but a socket lookup is no job
for a small receive hook, so the clusterdev backend installs this guard: the
same input chain and counter in the agent's own table `inet fwcluster`.
"""

from __future__ import annotations

from collections import Counter

from .base import DataPlaneConfig
from .nft_ruleset import render_input_guard, render_uninstall
from .nftables import nft_apply, read_counters, ruleset_fingerprint


class InputGuard:
    def __init__(self, config: DataPlaneConfig) -> None:
        self._script = render_input_guard(config)  # validates the configuration
        self._fingerprint: Counter[str] | None = None

    def install(self) -> None:
        nft_apply(self._script)  # replaces an older copy in one transaction
        self._fingerprint = ruleset_fingerprint()

    def check(self) -> str | None:
        """None while the table is as install() left it (see NftablesDataPlane.check)."""
        if self._fingerprint is None or ruleset_fingerprint() == self._fingerprint:
            return None
        return "the input guard's table inet fwcluster changed"

    def uninstall(self) -> None:
        self._fingerprint = None
        nft_apply(render_uninstall())  # create-then-delete: never fails on absence

    def counters(self) -> dict[str, int]:
        return read_counters()
