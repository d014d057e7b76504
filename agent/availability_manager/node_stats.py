"""The Node's stats: every layer's counters under the flat names metrics use.

Owns only the naming: which layer counter is published as which key
(`drop_<reason>` for every dropped input, `rb_*` for the reliable broadcast,
`ranges_*` for the range distribution). The Node adds its own gauges.
"""

from __future__ import annotations

from collections import Counter

from .availability import Availability
from .broadcast import ReliableBroadcast
from .conntrack_sync import ConntrackSync
from .crypto import Encryption
from .ranges import RangeDistribution


def layer_stats(
    counters: Counter[str],
    encryption: Encryption,
    availability: Availability,
    broadcast: ReliableBroadcast,
    sync: ConntrackSync,
    ranges: RangeDistribution,
) -> dict[str, int]:
    """The Node's own `counters` and every layer's, as one flat dict."""
    out: dict[str, int] = dict(counters)
    for reason, count in encryption.drops.items():
        out[f"drop_{reason}"] = out.get(f"drop_{reason}", 0) + count
    out["datagrams_sealed"] = encryption.sealed
    out["datagrams_opened"] = encryption.opened
    av = availability.stats
    out["heartbeats_sent"] = av.get("heartbeats_sent", 0)
    out["heartbeats_received"] = av.get("heartbeats_received", 0)
    out["heartbeats_stale"] = av.get("stale", 0)
    out["heartbeats_unproven"] = av.get("unproven", 0)  # no echo of our life yet
    out["peers_refused"] = av.get("refused", 0)
    out["host_stalls"] = av.get("host_stalls", 0)
    out["drop_incarnation-jump"] = av.get("incarnation_jump", 0)
    out["drop_incarnation-too-soon"] = av.get("incarnation_too_soon", 0)
    rb = broadcast.stats
    out["rb_data_sent"] = rb.data_sent
    out["rb_retransmitted"] = rb.retransmitted
    out["rb_repairs_suppressed"] = rb.repairs_suppressed
    out["rb_repairs_deferred"] = rb.repairs_deferred
    out["naks"] = rb.naks_sent
    out["naks_suppressed"] = rb.naks_suppressed
    out["rb_lost_sent"] = rb.lost_sent
    out["rb_delivered"] = rb.delivered
    out["rb_duplicates"] = rb.duplicates
    out["out_of_sync"] = rb.out_of_sync
    out["rb_buffered"] = broadcast.buffered
    out["drop_rb-unknown-peer"] = rb.dropped_unknown_peer
    for reason, count in rb.dropped.items():
        out[f"drop_rb-{reason}"] = count
    ct = sync.stats
    out["resyncs"] = sum(ct.resyncs.values())
    out["resync_requests"] = sum(ct.resync_requests.values())
    out["resync_requests_held"] = ct.resync_requests_held
    out["resync_starts_merged"] = ct.resync_starts_merged
    out["digest_mismatches"] = ct.digest_mismatches
    out["ct_unknown_updates"] = ct.unknown_updates
    out["ct_unknown_deletes"] = ct.unknown_deletes
    out["ct_stale_dropped"] = ct.stale_dropped
    for reason, count in ct.rejected.items():
        out[f"drop_ct-{reason}"] = count
    out["local_entries"] = ct.local_entries
    out["sync_held_back"] = ct.held_back
    out["sync_died_before_sync"] = ct.died_before_sync
    out["cache_entries"] = sum(ct.cache_sizes.values())
    out["cached_peers"] = len(ct.cache_sizes)
    out["wire_version"] = sync.wire_version
    out["members"] = len(ranges.members())
    for name, count in ranges.stats.items():
        out[f"ranges_{name}"] = count
    return out
