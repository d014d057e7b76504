"""What a lab created, kept in <run_dir>/state.json so that every command (and
`down` after a crash) knows the namespaces and processes to act on.

The file is written atomically (temp file + rename) after every change, and
before the thing it records is used, so a crash leaves at worst a record of
something that does not exist (harmless) rather than something unrecorded.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from .netns import Proc
from .topology import DEFAULT_PREFIX, Topology, build_topology

DEFAULT_RUN_DIR = Path("/run/fwcluster-lab")


def run_dir_from_env() -> Path:
    return Path(os.environ.get("FWCLUSTER_LAB_RUN", str(DEFAULT_RUN_DIR)))


def prefix_from_env() -> str:
    return os.environ.get("FWCLUSTER_LAB_PREFIX", DEFAULT_PREFIX)


@dataclasses.dataclass
class LabState:
    run_dir: Path
    prefix: str
    nodes: int = 0
    clients: int = 0
    servers: int = 0
    agents: bool = False
    namespaces: list[str] = dataclasses.field(default_factory=list)
    procs: dict[str, Proc] = dataclasses.field(default_factory=dict)  # "agent:fw1" -> Proc
    dead_nodes: list[str] = dataclasses.field(default_factory=list)
    partitions: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    sync_loss_percent: int = 0
    ipv6: bool = False  # dual-stack zones (topology.py)
    nat: bool = False  # NAT policy loaded on every node (nat_policy.py)
    sync6: bool = False  # the sync network over IPv6

    @property
    def path(self) -> Path:
        return self.run_dir / "state.json"

    def topology(self) -> Topology:
        return build_topology(
            self.nodes,
            self.clients,
            self.servers,
            self.prefix,
            ipv6=self.ipv6,
            nat=self.nat,
            sync6=self.sync6,
        )

    def node_dir(self, node: str) -> Path:
        return self.run_dir / node

    def save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        data = {
            "prefix": self.prefix,
            "nodes": self.nodes,
            "clients": self.clients,
            "servers": self.servers,
            "agents": self.agents,
            "namespaces": self.namespaces,
            "procs": {k: p.to_json() for k, p in self.procs.items()},
            "dead_nodes": self.dead_nodes,
            "partitions": self.partitions,
            "sync_loss_percent": self.sync_loss_percent,
            "ipv6": self.ipv6,
            "nat": self.nat,
            "sync6": self.sync6,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.path)

    @staticmethod
    def load(run_dir: Path) -> LabState | None:
        """The recorded state, or None if there is none (or it is unreadable)."""
        try:
            data = json.loads((run_dir / "state.json").read_text())
            return LabState(
                run_dir=run_dir,
                prefix=str(data["prefix"]),
                nodes=int(data["nodes"]),
                clients=int(data["clients"]),
                servers=int(data["servers"]),
                agents=bool(data["agents"]),
                namespaces=[str(n) for n in data["namespaces"]],
                procs={str(k): Proc.from_json(v) for k, v in data["procs"].items()},
                dead_nodes=[str(n) for n in data.get("dead_nodes", [])],
                partitions=list(data.get("partitions", [])),
                sync_loss_percent=int(data.get("sync_loss_percent", 0)),
                ipv6=bool(data.get("ipv6", False)),
                nat=bool(data.get("nat", False)),
                sync6=bool(data.get("sync6", False)),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
