"""How the lab runs the availability-manager agent on a node: its YAML config,
the cluster key, and the command lines of the agent and of `clusterctl`.

Kept apart from the rest of the lab so the agent's authors can adjust the
command or the config here without touching topology or faults.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import yaml

from .early_drop_policy import early_drop
from .topology import SYNC_GROUP, SYNC_GROUP6, SYNC_PORT, Host, Topology

REPO = Path(os.environ.get("FWCLUSTER_REPO", str(Path(__file__).resolve().parents[2])))

# Who puts the shared cluster IPs and the multicast MAC on the node interfaces
# when agents run. The data-plane contract (dataplane/base.py: install()
# "programs everything except ownership") gives it to the agent's backend, so
# the lab only adds node addresses. Set False if the backend leaves addresses
# to the host's network configuration; the lab then adds them itself.
AGENT_OWNS_CLUSTER_ADDRESSES = True

CLUSTER_SETTINGS: dict[str, Any] = {
    "buckets": 256,
    "hash_seed": 0x5EEDF17E,
    "hash_fields": "addresses+ports",
    "backend": "nftables",
}
HEARTBEAT = {"interval_ms": 50, "misses": 3}
METRICS = {"address": "127.0.0.1", "port": 9477}  # per-namespace loopback: no clash
PROTOCOLS = ["tcp", "udp", "icmp"]


def key_path(run_dir: Path) -> Path:
    return run_dir / "cluster.key"


def config_path(run_dir: Path, node: str) -> Path:
    return run_dir / node / "config.yml"


def control_socket(run_dir: Path, node: str) -> Path:
    return run_dir / node / "control.sock"


def log_path(run_dir: Path, node: str) -> Path:
    return run_dir / node / "agent.log"


def write_key(run_dir: Path) -> Path:
    """32 random bytes as hex, written once: a restarted node must use the same key."""
    path = key_path(run_dir)
    if not path.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    return path


def agent_config(
    topo: Topology, node: Host, run_dir: Path, backend: str = "nftables"
) -> dict[str, Any]:
    sync_addr = str(node.link("sync").address.ip)
    sync6 = node.link("sync").address6  # the sync network over IPv6 (lab up --sync6)
    return {
        "node_id": sync_addr,
        "sync": {
            "interface": node.link("sync").ifname,
            "address": str(sync6.ip) if sync6 else sync_addr,
            "transport": "multicast",
            "group": SYNC_GROUP6 if sync6 else SYNC_GROUP,
            "port": SYNC_PORT,
        },
        "zones": [
            {
                "name": z.name,
                "interface": z.node_ifname,
                "cluster_ips": [str(ip) for ip in z.cluster_ips],
                "cluster_mac": z.cluster_mac,
            }
            for z in topo.zones
        ],
        "cluster": {**CLUSTER_SETTINGS, "backend": backend},  # nftables or clusterdev
        "heartbeat": dict(HEARTBEAT),
        "key_file": str(key_path(run_dir)),
        "protocols": list(PROTOCOLS) + (["icmpv6"] if topo.ipv6 else []),
        "control_socket": str(control_socket(run_dir, node.name)),
        "metrics": dict(METRICS),
        # FWLAB_EARLY_DROP=1: the nftables backend's early chain, with this
        # lab's slow path (early_drop_policy.py). Off by default: the key is
        # new, and the rolling-upgrade test runs an older agent on this file.
        **(
            {"early_drop": early_drop(topo)}
            if backend == "nftables" and os.environ.get("FWLAB_EARLY_DROP") == "1"
            else {}
        ),
        # FWLAB_REALTIME=0: the agents at normal priority. Many agents on few
        # cores (16 on this machine's 2) under SCHED_RR wait for each other's
        # 100 ms round-robin slices whenever a few of them are busy at once,
        # which no deployment sees (one agent per machine): the lab's sizing
        # benchmark and 16-node test run so (docs/lab.md).
        **({"realtime": False} if os.environ.get("FWLAB_REALTIME") == "0" else {}),
        # Not in the lab's fixed key list, but needed: all nodes share one
        # filesystem, and each must keep its own incarnation counter.
        "state_dir": str(run_dir / node.name / "state"),
    }


def write_config(topo: Topology, node: Host, run_dir: Path, backend: str = "nftables") -> Path:
    path = config_path(run_dir, node.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "# written by the fwcluster lab; rewritten on every `lab up`\n"
    text += yaml.safe_dump(agent_config(topo, node, run_dir, backend), sort_keys=False)
    path.write_text(text)
    return path


def agent_argv(run_dir: Path, node: str) -> list[str]:
    path = config_path(run_dir, node)
    argv = [str(REPO / ".venv" / "bin" / "availability-manager"), "--config", str(path)]
    # Without SCHED_RR (FWLAB_REALTIME=0) the agents still come before the
    # traffic they forward, as realtime would put them, at a weight (nice
    # -10: about 9 times a normal process's share) instead of a priority, so
    # they share the cores among themselves finely, not in 100 ms slices.
    if path.exists() and yaml.safe_load(path.read_text()).get("realtime") is False:
        argv = ["nice", "-n", "-10", *argv]
    return argv


def clusterctl_argv(run_dir: Path, node: str, *args: str) -> list[str]:
    return [
        str(REPO / ".venv" / "bin" / "clusterctl"),
        "--socket",
        str(control_socket(run_dir, node)),
        *(args or ("status",)),
    ]


def agent_available() -> bool:
    """The agent's entry point exists and its daemon module is importable."""
    exe = REPO / ".venv" / "bin" / "availability-manager"
    daemon = REPO / "agent" / "availability_manager" / "daemon" / "main.py"
    return exe.exists() and daemon.exists()
