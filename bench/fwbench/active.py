"""One active-active run: push a fixed offer through a fresh cluster and
divide the CPU time it cost by what was forwarded.

On one 2-core machine the nodes cannot add capacity (they share the cores),
so "gain" is measured as cost per forwarded packet and per new connection.
The cost is *attributed* CPU time: the generator's own (a veth transmit runs
the whole receive and forwarding path of bridges and nodes in the sender's
context), the ksoftirqd threads' (what the kernel deferred), and the sync
daemons' (conntrackd; the agents), the last two minus their rate at rest
(heartbeats, adverts) measured just before. That stays meaningful when other work
shares the machine; the machine-wide busy time minus an idle rate measured
just before is recorded too, but is only usable on an otherwise idle
machine. For fwcluster every
node receives every frame (multicast MAC) and all but the owner drop it; a
keepalived master is the only receiver. Forwarded packets are counted on
the nodes' inside interfaces (transmitted), new connections in their
conntrack tables.
"""

from __future__ import annotations

import time
from typing import Any

from . import gen
from .cluster import Cluster, running
from .env import loadavg
from .measure import (
    SystemCpu,
    children_cpu_s,
    conntrack_count,
    iface_counters,
    process_cpu_s,
    softirq_threads_cpu_s,
)
from .sync import DPORT, install_sink

IDLE_S = 2.0
FLOWS = 1000  # established flows of the "packets" workload


def _forwarded(cluster: Cluster) -> int:
    total = 0
    for n in cluster.nodes():
        host = cluster.node(n)
        zone_if = cluster.state.topology().zones[1].node_ifname
        total += iface_counters(host.ns, zone_if)[3]
    return total


def _created(cluster: Cluster) -> int:
    return sum(conntrack_count(cluster.node(n).ns) for n in cluster.nodes())


def _daemon_cpu(cluster: Cluster) -> float:
    return sum(
        process_cpu_s(p) or 0.0 for n in cluster.nodes() for p in cluster.sync_pids(n)
    )


def one_run(
    cluster: Cluster, workload: str, rate: float, seconds: float, procs: int = 2
) -> dict[str, Any]:
    """workload: 'packets' (FLOWS flows, `rate` packets/s) or 'newconn' (`rate`
    new connections/s, one packet each)."""
    if workload not in ("packets", "newconn"):
        raise ValueError(f"unknown workload {workload!r}")
    with running(cluster):
        install_sink(cluster)
        client = cluster.state.topology().clients[0]
        server = cluster.state.topology().servers[0]
        count = int(rate * seconds)
        flows = FLOWS if workload == "packets" else 0
        args = gen.argv(str(client.links[0].address.ip), str(server.links[0].address.ip),
                        DPORT, count, rate, procs=procs, max_s=3 * seconds + 10,
                        flows=flows)  # fmt: skip
        if flows:
            # Establish the flows first, so the measured packets are all of
            # known connections (on fwcluster: already owned, no NEW handling).
            warm = gen.argv(str(client.links[0].address.ip), str(server.links[0].address.ip),
                            DPORT, flows, 5000.0, flows=flows)  # fmt: skip
            gen.run(client.ns, warm, timeout=30)
        time.sleep(1.0)
        # At rest: the machine's busy rate, and the daemons' and ksoftirqd's
        # own (heartbeats, adverts), subtracted below from the offer's figures.
        c0, d_idle0, k_idle0 = (
            SystemCpu.read(),
            _daemon_cpu(cluster),
            softirq_threads_cpu_s(),
        )
        time.sleep(IDLE_S)
        c1 = SystemCpu.read()
        idle_rate = c1.busy_s_since(c0) / IDLE_S
        daemon_idle_rate = (_daemon_cpu(cluster) - d_idle0) / IDLE_S
        softirq_idle_rate = (softirq_threads_cpu_s() - k_idle0) / IDLE_S
        fwd0, new0, d0 = _forwarded(cluster), _created(cluster), _daemon_cpu(cluster)
        k0, g0 = softirq_threads_cpu_s(), children_cpu_s()
        c2 = SystemCpu.read()
        offer = gen.run(client.ns, args, timeout=4 * seconds + 30)
        c3 = SystemCpu.read()
        gen_s = children_cpu_s() - g0  # only the generator ran as our child here
        time.sleep(0.3)  # let the last packets drain through the bridges
        softirq_s = softirq_threads_cpu_s() - k0
        forwarded = _forwarded(cluster) - fwd0
        created = _created(cluster) - new0
        daemon_s = _daemon_cpu(cluster) - d0
        wall = offer.end - offer.start
        busy = c3.busy_s_since(c2)
        excess = max(0.0, busy - idle_rate * wall)
        attributed = (
            gen_s
            + max(0.0, softirq_s - softirq_idle_rate * wall)
            + max(0.0, daemon_s - daemon_idle_rate * wall)
        )
        return {
            "cluster": cluster.kind,
            "nodes": len(cluster.nodes()),
            "workload": workload,
            "rate_offered": rate,
            "rate_achieved": offer.rate,
            "sent": offer.sent,
            "forwarded": forwarded,
            "forwarded_per_s": forwarded / wall if wall > 0 else None,
            "created": created,
            "created_per_s": created / wall if wall > 0 else None,
            "busy_cpu_s": busy,
            "idle_cpu_rate": idle_rate,
            "excess_cpu_s": excess,
            "daemon_cpu_s": daemon_s,
            "daemon_idle_rate": daemon_idle_rate,
            "softirq_idle_rate": softirq_idle_rate,
            "generator_cpu_s": gen_s,
            "softirq_cpu_s": softirq_s,
            "attributed_cpu_s": attributed,
            "cpu_us_per_packet": attributed / forwarded * 1e6 if forwarded else None,
            "cpu_us_per_conn": (
                attributed / created * 1e6 if created and not flows else None
            ),
            "machine_us_per_packet": excess / forwarded * 1e6 if forwarded else None,
            "loadavg_1m": loadavg()[0],
        }
