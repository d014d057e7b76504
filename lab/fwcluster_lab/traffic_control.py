"""Running the traffic client from the lab: in the foreground (`lab traffic`),
or in the background (`lab traffic start` ... `lab traffic stop`) so that a
test can start traffic, break something, and then collect the counters.

The background client is a recorded process like the agents; `stop` sends it
SIGTERM, which ends its sending phase, lets it drain, and makes it write the
summary file that `stop` then reads.

By default traffic runs from the first client to the first server's IPv4
address. A `Target` says otherwise (an IPv6 address, a NAT address, the
reverse direction in a NAT lab), and `name` lets several background clients
run at once, each with its own summary: one per address family, so lost and
duplicate counts are per family.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .build import TRAFFIC_PORT, server_control_socket
from .nat_policy import DNAT_PORT
from .netns import LabError, in_ns, spawn, stop
from .state import LabState
from .topology import MASQ_NET

CLIENT_PROC = "traffic-client"


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a traffic client runs and what it connects to."""

    client: str  # host (namespace) running the client
    server: str  # host running the traffic server that answers: its counters
    address: str  # the address the client connects to (the server's, or a NAT address)
    port: int = TRAFFIC_PORT


def default_target(state: LabState, ipv6: bool = False) -> Target:
    """First client to the first server, over IPv4 or (dual-stack lab) IPv6."""
    topo = state.topology()
    server = topo.servers[0]
    address = server.address6 if ipv6 else server.links[0].address.ip
    if address is None:
        raise LabError("this lab has no IPv6: `lab up --ipv6`")
    return Target(topo.clients[0].name, server.name, str(address))


def targets(state: LabState) -> dict[str, Target]:
    """Every kind of traffic the lab offers, by name: `ipv4` (the default);
    `ipv6` in a dual-stack lab; in a NAT lab `snat` and `masquerade` (from the
    first server, inside, to the first client, which runs a traffic server
    too) and `dnat` (the first client to the port forward on the outside
    cluster address; its pings go to that address and are forwarded too)."""
    topo = state.topology()
    client, server = topo.clients[0], topo.servers[0]
    out: dict[str, Target] = {"ipv4": default_target(state)}
    if topo.ipv6:
        out["ipv6"] = default_target(state, ipv6=True)
    if topo.nat:
        link = client.links[0]
        masq = next(a.ip for a in link.more_addresses if a.ip in MASQ_NET)
        out["snat"] = Target(server.name, client.name, str(link.address.ip))
        out["masquerade"] = Target(server.name, client.name, str(masq))
        dnat_address = str(topo.zones[0].cluster_ip.ip)
        out["dnat"] = Target(client.name, server.name, dnat_address, DNAT_PORT)
    return out


def client_name(kind: str) -> str:
    """The recorded process name of a background client of this kind of traffic."""
    return CLIENT_PROC if kind == "ipv4" else f"traffic-{kind}"


def _dir(state: LabState) -> Path:
    d = state.run_dir / "traffic"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _files(state: LabState, name: str) -> tuple[Path, Path, Path]:
    """Summary, status and log of a background client (the default keeps its old names)."""
    d = _dir(state)
    if name == CLIENT_PROC:
        return d / "background.json", d / "background-status.json", d / "client.log"
    return d / f"{name}.json", d / f"{name}-status.json", d / f"{name}.log"


def client_argv(
    state: LabState,
    options: list[str],
    json_path: Path,
    status: Path,
    target: Target | None = None,
) -> list[str]:
    t = target or default_target(state)
    return [
        sys.executable,
        "-m",
        "fwcluster_lab.traffic",
        "--server",
        t.address,
        "--port",
        str(t.port),
        "--control",
        str(server_control_socket(state.run_dir, t.server)),
        "--json",
        str(json_path),
        "--status",
        str(status),
        *options,
    ]


def run_foreground(
    state: LabState, options: list[str], json_path: Path | None, target: Target | None = None
) -> dict[str, Any]:
    out = json_path or _dir(state) / "last.json"
    out.unlink(missing_ok=True)
    t = target or default_target(state)
    argv = client_argv(state, options, out, _dir(state) / "status.json", t)
    proc = subprocess.run(
        in_ns(state.topology().host(t.client).ns, argv),
        stdout=subprocess.DEVNULL,  # the lab prints the summary line itself
        check=False,
    )
    if proc.returncode != 0 or not out.exists():
        raise LabError(f"traffic client failed ({proc.returncode})")
    summary: dict[str, Any] = json.loads(out.read_text())
    return summary


def start(
    state: LabState,
    options: list[str],
    ready_timeout: float = 30.0,
    *,
    name: str = CLIENT_PROC,
    target: Target | None = None,
) -> dict[str, Any]:
    old = state.procs.get(name)
    if old is not None and old.alive():
        raise LabError("traffic is already running: `lab traffic stop` first")
    out, status, log = _files(state, name)
    t = target or default_target(state)
    out.unlink(missing_ok=True)
    status.unlink(missing_ok=True)
    # Background runs last until stopped, within the client's hard cap.
    if "--duration" not in options:
        options = ["--duration", "3600", *options]
    argv = client_argv(state, options, out, status, t)
    proc = spawn(state.topology().host(t.client).ns, argv, log, name)
    state.procs[name] = proc
    state.save()
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if status.exists():
            ready: dict[str, Any] = json.loads(status.read_text())
            return ready
        if not proc.alive():
            raise LabError(f"traffic client exited early; see {log}")
        time.sleep(0.05)
    raise LabError("traffic client did not report ready in time")


def stop_background(
    state: LabState, timeout: float = 60.0, *, name: str = CLIENT_PROC
) -> dict[str, Any]:
    proc = state.procs.get(name)
    out, _status, log = _files(state, name)
    if proc is None:
        raise LabError("no background traffic recorded: `lab traffic start` first")
    # SIGTERM ends the sending phase; the client drains, writes its summary, exits.
    stop(proc, signal.SIGTERM, timeout=timeout)
    del state.procs[name]
    state.save()
    if not out.exists():
        raise LabError(f"traffic client left no summary; see {log}")
    summary: dict[str, Any] = json.loads(out.read_text())
    return summary
