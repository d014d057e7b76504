"""One sync-loss run: the sync network loses a share of its frames while new
connections are created; then the node holding them dies, and we count the
connections that did not make it into the survivors' kernel tables.

Loss is the lab's own fault (`lab loss sync N`: nft `numgen random mod 100 <
N drop` on every sync bridge port, each frame independently). It hits all
sync traffic, as a bad switch would: conntrackd's messages and VRRP adverts
for the baseline; the agent's heartbeats and sync messages for fwcluster.
Failure-detection flaps this causes before the planned kill are counted.

Missing = the generator's connections in the victim's conntrack table just
before the kill that are absent from every survivor's table after the
takeover (compared as 5-tuples).
"""

from __future__ import annotations

import time
from typing import Any

from fwcluster_lab import faults

from . import gen
from .cluster import Cluster, running
from .env import loadavg
from .measure import iface_counters, ns_exec
from .sync import DPORT, install_sink

TAKEOVER_TIMEOUT_S = 20.0


def generator_tuples(ns: str) -> set[tuple[str, str]]:
    """(sport, dport) of the generator's UDP entries in a namespace's table."""
    out = ns_exec(ns, ["conntrack", "-L", "-p", "udp"], timeout=60.0)
    found = set()
    for line in out.splitlines():
        fields = _first_pairs(line)  # the original direction comes first
        d = fields.get("dport")
        if d is not None and d.isdigit() and DPORT <= int(d) < DPORT + 10000:
            found.add((fields.get("sport", ""), d))
    return found


def _first_pairs(line: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for f in line.split():
        k, sep, v = f.partition("=")
        if sep and k not in out:
            out[k] = v
    return out


def _sync_bytes(cluster: Cluster) -> tuple[int, int]:
    """Bytes and packets sent on the sync interfaces of all nodes."""
    b = p = 0
    for n in cluster.nodes():
        host = cluster.node(n)
        _, _, tx_b, tx_p = iface_counters(host.ns, host.link("sync").ifname)
        b, p = b + tx_b, p + tx_p
    return b, p


def one_run(
    cluster: Cluster, loss_percent: int, rate: float, seconds: float
) -> dict[str, Any]:
    with running(cluster):
        install_sink(cluster)
        faults.loss(cluster.state, "sync", loss_percent)
        client = cluster.state.topology().clients[0]
        server = cluster.state.topology().servers[0]
        count = int(rate * seconds)
        args = gen.argv(str(client.links[0].address.ip), str(server.links[0].address.ip),
                        DPORT, count, rate, procs=1, max_s=3 * seconds + 5)  # fmt: skip
        t_start = time.time()
        b0, p0 = _sync_bytes(cluster)
        offer = gen.run(client.ns, args, timeout=4 * seconds + 30)
        time.sleep(1.0)  # the sync bound: every system had 1 s after the last send
        b1, p1 = _sync_bytes(cluster)
        victim = cluster.victim()
        before = generator_tuples(cluster.node(victim).ns)
        t_kill = cluster.kill(victim)
        taken_over = cluster.wait_taken_over(t_kill, TAKEOVER_TIMEOUT_S)
        takeover_s = None if taken_over is None else taken_over - t_kill
        time.sleep(0.5)
        after: set[tuple[str, str]] = set()
        for n in cluster.nodes():
            if n != victim:
                after |= generator_tuples(cluster.node(n).ns)
        missing = len(before - after)
        return {
            "cluster": cluster.kind,
            "loss_percent": loss_percent,
            "rate_offered": rate,
            "rate_achieved": offer.rate,
            "sent": offer.sent,
            "victim": victim,
            "on_victim": len(before),
            "missing_after_failover": missing,
            "takeover_s": takeover_s,
            "flaps_before_kill": cluster.flaps(t_start, t_kill),
            "sync_bytes": b1 - b0,
            "sync_packets": p1 - p0,
            "sync_bytes_per_conn": (b1 - b0) / offer.sent if offer.sent else None,
            "loadavg_1m": loadavg()[0],
        }
