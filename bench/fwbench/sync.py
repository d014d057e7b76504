"""One sync-throughput run: offer N new UDP connections at a rate through a
fresh cluster and see how many reached the peers, and when.

Every connection is created on exactly one node (keepalived: the master;
fwcluster: the owner of its bucket) and must reach every other node: the
expected count is (created) x (nodes - 1). *Created* is read from the kernel
conntrack tables (the increase over the run), not assumed from what was
sent, so a packet the data path itself dropped is not blamed on the sync.
The peers' counts (conntrackd's external cache; the agent's peer cache) are
polled while the generator runs and once more 1 s after its last send:
connections missing then are the ones that did not make the 1 s bound.
"""

from __future__ import annotations

import time
from typing import Any

from . import gen
from .cluster import Cluster, running
from .env import loadavg
from .measure import (
    CountSampler,
    conntrack_count,
    process_cpu_s,
    process_rss_kib,
)

DPORT = 20000  # the generator's destination ports start here
SINK_TABLE = "gen_sink"
BOUND_S = 1.0  # every connection must be on every peer this long after its creation
IDLE_S = 1.0  # measuring the sync daemons' CPU rate at rest


def install_sink(cluster: Cluster) -> None:
    """Drop the generator's datagrams at the server before anything answers
    them (no ICMP port-unreachable storm back through the firewall)."""
    from fwcluster_lab.netns import nft

    server = cluster.state.topology().servers[0]
    nft(
        server.ns,
        f"""
table ip {SINK_TABLE} {{
  chain pre {{
    type filter hook prerouting priority -300; policy accept;
    udp dport {DPORT}-{DPORT + 9999} drop
  }}
}}
""",
    )


def _cpu(cluster: Cluster) -> float:
    return sum(
        process_cpu_s(p) or 0.0 for n in cluster.nodes() for p in cluster.sync_pids(n)
    )


def _rss_kib(cluster: Cluster) -> int:
    return sum(
        process_rss_kib(p) or 0 for n in cluster.nodes() for p in cluster.sync_pids(n)
    )


def _kernel(cluster: Cluster) -> int:
    return sum(conntrack_count(cluster.node(n).ns) for n in cluster.nodes())


def one_run(
    cluster: Cluster, rate: float, count: int, procs: int = 2
) -> dict[str, Any]:
    with running(cluster):
        install_sink(cluster)
        client = cluster.state.topology().clients[0]
        server = cluster.state.topology().servers[0]
        args = gen.argv(
            str(client.links[0].address.ip), str(server.links[0].address.ip),
            DPORT, count, rate, procs=procs, max_s=max(30.0, 3 * count / rate),
        )  # fmt: skip
        time.sleep(1.0)  # let start-up traffic (bulk syncs, ARP) settle
        poll = CountSampler(
            lambda: sum(cluster.known_connections(n) for n in cluster.nodes()), 0.2
        )
        t_begin = time.time()
        known0, kernel0 = poll.count(), _kernel(cluster)
        rss0 = _rss_kib(cluster)
        with poll:
            # The daemons' CPU rate at rest (heartbeats, answering this poller)
            # is subtracted below, so the per-connection figure is the sync's.
            idle0, t_idle0 = _cpu(cluster), time.monotonic()
            time.sleep(IDLE_S)
            cpu0, t_cpu0 = _cpu(cluster), time.monotonic()
            idle_rate = (cpu0 - idle0) / (t_cpu0 - t_idle0)
            offer = gen.run(client.ns, args, timeout=4 * count / rate + 30)
            time.sleep(max(0.0, offer.end + BOUND_S - time.time()))
            known_at_bound = poll.count()
            created = _kernel(cluster) - kernel0
            cpu_at_bound, t_cpu1 = _cpu(cluster), time.monotonic()
            # Keep sampling a little to see whether the rest arrives late.
            time.sleep(2.0)
        rss1 = _rss_kib(cluster)
        # A false takeover under overload moves entries from a peer's cache
        # into its kernel table and spoils both counts: say so per run.
        flaps = cluster.flaps(t_begin, time.time())
        n_nodes = len(cluster.nodes())
        expected = created * (n_nodes - 1)
        replicated = known_at_bound - known0
        final = max(s for _, s in poll.samples) - known0 if poll.samples else replicated
        cpu_raw = cpu_at_bound - cpu0
        cpu_s = max(0.0, cpu_raw - idle_rate * (t_cpu1 - t_cpu0))
        return {
            "cluster": cluster.kind,
            "nodes": n_nodes,
            "rate_offered": rate,
            "rate_achieved": offer.rate,
            "sent": offer.sent,
            "send_errors": offer.errors,
            "created": created,
            "expected_on_peers": expected,
            "replicated_at_1s": replicated,
            "missing_at_1s": max(0, expected - replicated),
            "flaps": flaps,
            "replicated_at_3s": final,
            "sync_cpu_s": cpu_s,
            "sync_cpu_s_raw": cpu_raw,
            "sync_cpu_idle_rate": idle_rate,
            "sync_cpu_s_per_100k": cpu_s / created * 100_000 if created else None,
            "sync_rss_growth_mib_per_100k": (rss1 - rss0) / 1024 / created * 100_000
            if created
            else None,
            "sync_rss_mib_end": rss1 / 1024,
            "samples": [(t - offer.start, k - known0) for t, k in poll.samples],
            "offer_start": offer.start,
            "offer_end": offer.end,
            "loadavg_1m": loadavg()[0],
        }
