"""The standard Linux HA firewall in the lab: keepalived + conntrackd FTFW.

Same namespaces, bridges, addresses, clients and servers as the fwcluster
lab (built with the lab's own topology and wiring code, under another
prefix). On every node: the stateful ruleset of bench/baselines/firewall.nft.in,
conntrackd in the foreground, keepalived (VRRP only) in the foreground with
the notify script that commits and flushes conntrackd. fw1 starts as master
and holds the cluster IPs as VRRP virtual addresses; the others are backups.
Every process is recorded in the lab's state file, so `lab down` with this
prefix and run directory also cleans up after a crash of the benchmark.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any, ClassVar

from fwcluster_lab import build
from fwcluster_lab.netns import Proc, ip, namespace_pids, nft, spawn, stop
from fwcluster_lab.state import LabState
from fwcluster_lab.topology import Host, Topology

from . import baseline_config as cfg
from .cluster import Cluster, ClusterError
from .env import BASELINES
from .env import COMPARE_RUN_ROOT as RUN_ROOT
from .measure import ns_exec

KEEPALIVED = "/usr/sbin/keepalived"
CONNTRACKD = "/usr/sbin/conntrackd"
NOTIFY = BASELINES / "primary-backup.sh"
# Priority written to the master's track file for the graceful case: far
# below every backup's, so the next node preempts.
GRACEFUL_PRIORITY_DROP = -150


def node_spec(topo: Topology, host: Host, index: int) -> cfg.NodeSpec:
    sync = host.link("sync")
    return cfg.NodeSpec(
        name=host.name,
        index=index,
        sync_if=sync.ifname,
        sync_addr=str(sync.address.ip),
        sync_net=str(sync.address.network),
        own_addrs=tuple(str(link.address.ip) for link in host.links),
        zone_ifs=(topo.zones[0].node_ifname, topo.zones[1].node_ifname),
        vips=tuple((str(z.cluster_ip), z.node_ifname) for z in topo.zones),
    )


def installed() -> bool:
    return Path(KEEPALIVED).exists() and Path(CONNTRACKD).exists()


class BaselineCluster(Cluster):
    # nothing of the lab's on the nodes: keepalived and conntrackd are the firewall
    lab_options: ClassVar[dict[str, Any]] = {"agents": False, "bare": True}

    def __init__(
        self,
        variant: str = "default",
        nodes: int = 2,
        prefix: str = "fwk-",
        advert_s: float = cfg.TUNED_ADVERT_S,
        run_dir: Path | None = None,
    ) -> None:
        if variant not in cfg.VARIANTS:
            raise ValueError(f"variant must be one of {cfg.VARIANTS}")
        self.variant = variant
        self.advert_s = advert_s if variant == "tuned" else 1.0
        self.kind = f"keepalived {variant}" + (
            f" ({advert_s * 1000:g} ms)" if variant == "tuned" else ""
        )
        self.n = nodes
        self.prefix = prefix
        self.run_dir = run_dir or RUN_ROOT / prefix.rstrip("-")
        self.state = LabState(self.run_dir, prefix, nodes, 1, 1, False)

    def paths(self, node: str) -> cfg.NodePaths:
        return cfg.NodePaths(self.run_dir / node)

    # --- building -------------------------------------------------------
    def start(self) -> None:
        if not installed():
            raise ClusterError(
                "keepalived/conntrackd missing: run tools/bench-compare.sh"
            )
        topo = self.state.topology()
        for i, host in enumerate(topo.nodes):
            self._start_node(topo, host, i)
        self._wait_master(topo.nodes[0].name, timeout=15.0 + 4 * self.advert_s)

    def _start_node(self, topo: Topology, host: Host, index: int) -> None:
        spec = node_spec(topo, host, index)
        p = self.paths(host.name)
        p.dir.mkdir(parents=True, exist_ok=True)
        for f in (p.events, p.lock_file, p.unix_path, *p.pid_files):
            f.unlink(missing_ok=True)
        p.track_file.write_text("0\n")
        p.conntrackd_conf.write_text(cfg.conntrackd_conf(spec, p))
        p.keepalived_conf.write_text(
            cfg.keepalived_conf(self.variant, spec, p, NOTIFY, self.advert_s)
        )
        nft(host.ns, cfg.firewall_ruleset(spec))
        self._record(
            spawn(
                host.ns,
                [CONNTRACKD, "-C", str(p.conntrackd_conf)],
                p.dir / "conntrackd.out",
                f"conntrackd:{host.name}",
            )
        )
        self._wait_file(p.unix_path, 10.0, f"conntrackd on {host.name}")
        argv = [
            KEEPALIVED, "--dont-fork", "--log-console", "--log-detail", "--vrrp",
            "--use-file", str(p.keepalived_conf),
            "--pid", str(p.pid_files[0]), "--vrrp_pid", str(p.pid_files[1]),
        ]  # fmt: skip
        self._record(spawn(host.ns, argv, p.keepalived_log, f"keepalived:{host.name}"))

    def _record(self, proc: Proc) -> None:
        self.state.procs[proc.what] = proc
        self.state.save()

    @staticmethod
    def _wait_file(path: Path, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                raise ClusterError(f"{what} did not start within {timeout}s")
            time.sleep(0.05)

    def _wait_master(self, node: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.holds_vip(node) and "done primary" in self._events(node):
                return
            time.sleep(0.1)
        raise ClusterError(f"{node} did not become VRRP master within {timeout:.0f}s")

    # --- state ----------------------------------------------------------
    def _events(self, node: str) -> str:
        try:
            return self.paths(node).events.read_text()
        except OSError:
            return ""

    def holds_vip(self, node: str) -> bool:
        host = self.node(node)
        out = ip(host.ns, "-o", "-4", "addr", "show", "dev", host.links[0].ifname,
                 check=False).stdout  # fmt: skip
        return f" {self.state.topology().zones[0].cluster_ip} " in out

    def victim(self) -> str:
        for name in self.nodes():
            if self.holds_vip(name):
                return name
        raise ClusterError("no node holds the cluster IPs")

    def transitions(self, node: str) -> list[tuple[float, str]]:
        """(wall time, 'enter primary' / 'done backup' / ...) from the notify script."""
        out = []
        for line in self._events(node).splitlines():
            stamp, _, what = line.partition(" ")
            with contextlib.suppress(ValueError):
                out.append((float(stamp), what))
        return out

    def detected_at(self, since: float) -> float | None:
        times = [
            t for n in self.nodes() for t, what in self.transitions(n)
            if what == "enter primary" and t >= since
        ]  # fmt: skip
        return min(times) if times else None

    def flaps(self, since: float, until: float) -> int:
        return sum(
            1
            for n in self.nodes()
            for t, what in self.transitions(n)
            if what == "enter primary" and since <= t < until
        )

    def committed_at(self, since: float) -> float | None:
        """When the new master finished its notify sequence (commit done)."""
        times = [
            t for n in self.nodes() for t, what in self.transitions(n)
            if what == "done primary" and t >= since
        ]  # fmt: skip
        return min(times) if times else None

    def wait_taken_over(self, killed_at: float, timeout: float) -> float | None:
        """The new master has committed conntrackd's external cache."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.committed_at(killed_at)
            if done is not None:
                return done
            time.sleep(0.05)
        return None

    # --- faults ---------------------------------------------------------
    def kill(self, node: str) -> float:
        """The node dies without a word: every process in its namespace is
        frozen (SIGSTOP), its links go down, then everything gets SIGKILL.

        Freezing first matters: keepalived's VRRP child gets SIGTERM from the
        kernel when its parent dies (PR_SET_PDEATHSIG) and would then send a
        priority-0 advert, a graceful hand-over; and a link going down would
        make keepalived enter FAULT and announce it. A dead machine does
        neither. The lab's `kill` for agents (SIGKILL, then links down) gives
        the agent no chance to react either."""
        host = self.node(node)
        t = time.time()
        pids = namespace_pids(host.ns)
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            if sig == signal.SIGSTOP:
                build.set_links(host, False)
        for what in (f"keepalived:{node}", f"conntrackd:{node}"):
            proc = self.state.procs.pop(what, None)
            if proc is not None:
                stop(proc, signal.SIGKILL, timeout=2.0)
        self.state.dead_nodes.append(node)
        self.state.save()
        return t

    def graceful(self, node: str) -> float:
        """The 'priority change' the issue asks for: lower the node's VRRP
        priority through its track file; a backup with a higher priority
        takes over when its master-down timer runs out."""
        t = time.time()
        tmp = self.paths(node).track_file.with_suffix(".tmp")
        tmp.write_text(f"{GRACEFUL_PRIORITY_DROP}\n")
        os.replace(tmp, self.paths(node).track_file)
        return t

    def graceful_stop(self, node: str) -> float:
        """The other graceful way: stop keepalived (SIGTERM), which sends a
        priority-0 advert so a backup takes over at once."""
        t = time.time()
        proc = self.state.procs.pop(f"keepalived:{node}", None)
        if proc is not None:
            stop(proc, signal.SIGTERM, timeout=5.0)
        self.state.save()
        return t

    # --- sync -----------------------------------------------------------
    def sync_pids(self, node: str) -> list[int]:
        proc = self.state.procs.get(f"conntrackd:{node}")
        return [proc.pid] if proc is not None and proc.alive() else []

    def ctl(self, node: str, *args: str) -> str:
        host = self.node(node)
        return ns_exec(host.ns, [CONNTRACKD, "-C", str(self.paths(node).conntrackd_conf),
                                 *args])  # fmt: skip

    def known_connections(self, node: str) -> int:
        """Entries in the node's conntrackd external cache (from `conntrackd -s`)."""
        return external_cache_count(self.ctl(node, "-s"))


def external_cache_count(stats: str) -> int:
    """'current active connections' of the 'cache external' section; 0 if absent."""
    in_external = False
    for line in stats.splitlines():
        if line.startswith("cache "):
            in_external = line.startswith("cache external")
        elif in_external and "current active connections" in line:
            digits = line.split(":")[-1].strip()
            return int(digits) if digits.isdigit() else 0
    return 0
