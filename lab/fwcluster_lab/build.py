"""`lab up` and `lab down`: create the namespaces, bridges, veths, addresses,
routes and processes of a topology, and remove all of it again.

The public ways in: `running(...)`, a lab for the length of a `with` block
(tests, benchmarks); `up`/`down` for a lab that outlives the process
(`bin/lab`); `make_fabric`, the cabling alone, for those that bring their own
machines or firewall (the test hosts, the keepalived baseline uses
`running(bare=True)`).

`down` trusts nothing but names and recorded pids: it stops the processes in
state.json (pid and start time must match), then every process still inside
a namespace whose name starts with the lab's prefix, then deletes those
namespaces (which deletes their veths and bridges). So it also cleans up
after a lab that crashed half-way through `up`.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from . import agent, cluster, nat_policy, standalone
from .netns import (
    LabError,
    Proc,
    ip_batch,
    kill_pid,
    list_namespaces,
    namespace_pids,
    run,
    spawn,
    stop,
    sysctl,
)
from .state import LabState
from .topology import Host, Topology, build_topology

TRAFFIC_PORT = 7001  # TCP echo and UDP responder on every server
# Seconds a traffic server may take to listen. Emulated guests (the clusterdev
# tests under TCG on a busy machine) need far more than a real machine.
SERVER_READY_TIMEOUT = 15.0

NODE_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    # Answer and ask ARP with the node's own (primary) address, never the shared one.
    "net.ipv4.conf.all.arp_announce": "2",
    "net.ipv4.conf.default.arp_announce": "2",
}
# IPv6 off everywhere: router solicitations and MLD reports would only add noise
# to the bridges and to the counters of the sync network.
QUIET_SYSCTLS = {
    "net.ipv6.conf.all.disable_ipv6": "1",
    "net.ipv6.conf.default.disable_ipv6": "1",
}


# IPv6 on, only on the interfaces of a dual-stack lab that carry an IPv6
# address, and quiet there: no router solicitations, no router advertisements
# accepted, no duplicate address detection (every address is the lab's own).
IPV6_IFACE_SYSCTLS = ("accept_ra=0", "accept_dad=0", "dad_transmits=0", "router_solicitations=0")


def _enable_ipv6(host: Host) -> None:
    for link in host.links:
        if link.address6 is not None:
            conf = f"net.ipv6.conf.{link.ifname}"
            pairs = [s.split("=") for s in IPV6_IFACE_SYSCTLS] + [["disable_ipv6", "0"]]
            sysctl(host.ns, {f"{conf}.{k}": v for k, v in pairs})
    if host.role == "node" and any(link.address6 for link in host.links):
        sysctl(host.ns, {"net.ipv6.conf.all.forwarding": "1"})


def server_control_socket(run_dir: Path, server: str) -> Path:
    return run_dir / "traffic" / f"{server}.sock"


def _leftovers(prefix: str) -> list[str]:
    return [ns for ns in list_namespaces() if ns.startswith(prefix)]


def wire_switch(topo: Topology, extra_bridges: Sequence[str] = ()) -> None:
    lines = ["link set lo up"]
    for br in (*topo.bridges, *extra_bridges):
        # mcast_snooping 0: flood multicast-MAC frames to every port (the cluster MAC's point).
        lines.append(f"link add {br} type bridge mcast_snooping 0 stp_state 0")
        lines.append(f"link set {br} up")
    ip_batch(topo.switch_ns, lines)


def wire_host(topo: Topology, host: Host, links_up: bool) -> None:
    sw_lines = []
    for link in host.links:
        sw_lines.append(
            f"link add {link.sw_ifname} type veth peer name {link.ifname} netns {host.ns}"
        )
        sw_lines.append(f"link set {link.sw_ifname} master {link.bridge} up")
    ip_batch(topo.switch_ns, sw_lines)
    _enable_ipv6(host)
    lines = ["link set lo up"]
    for link in host.links:
        lines.append(f"address add {link.address} dev {link.ifname}")  # first: the primary
        for more in link.more_addresses:
            lines.append(
                f"address add {more} dev {link.ifname}{' nodad' if more.version == 6 else ''}"
            )
        lines.append(f"link set {link.ifname} {'up' if links_up else 'down'}")
    for dst, via in host.routes:
        lines.append(f"route add {dst} via {via}")
    ip_batch(host.ns, lines)


def _start_agent(state: LabState, topo: Topology, node: Host) -> Proc | None:
    if not agent.agent_available():
        print(f"lab: agent not installed yet; {node.name} runs without one", file=sys.stderr)
        return None
    proc = spawn(
        node.ns,
        agent.agent_argv(state.run_dir, node.name),
        agent.log_path(state.run_dir, node.name),
        f"agent:{node.name}",
    )
    state.procs[proc.what] = proc
    state.save()
    return proc


def _report_early_exits(state: LabState, timeout: float = 5.0) -> None:
    """An agent that dies at start (bad config, a bug) should not go unnoticed:
    wait until each has opened its control socket or exited, then say which exited."""
    deadline = time.monotonic() + timeout
    pending = {n: p for n, p in state.procs.items() if n.startswith("agent:")}
    while pending and time.monotonic() < deadline:
        for name, proc in list(pending.items()):
            node = name.split(":", 1)[1]
            if not proc.alive():
                log = agent.log_path(state.run_dir, node)
                print(f"lab: {name} exited at start; see {log}", file=sys.stderr)
                del pending[name]
            elif agent.control_socket(state.run_dir, node).exists():
                del pending[name]
        time.sleep(0.05)


def start_agent(state: LabState, node_name: str) -> Proc | None:
    topo = state.topology()
    return _start_agent(state, topo, topo.node(node_name))


def traffic_server_hosts(topo: Topology) -> tuple[Host, ...]:
    """Hosts running a traffic server: every server, and in a NAT lab the first
    client too (the far end of the SNAT and masquerade traffic from inside)."""
    return topo.servers + (topo.clients[:1] if topo.nat else ())


def start_traffic_servers(state: LabState, topo: Topology) -> None:
    """The traffic server on every host that runs one; returns once each listens."""
    for server in traffic_server_hosts(topo):
        sock = server_control_socket(state.run_dir, server.name)
        sock.parent.mkdir(parents=True, exist_ok=True)
        sock.unlink(missing_ok=True)  # a stale one would pass for readiness
        argv = [
            sys.executable,
            "-m",
            "fwcluster_lab.traffic_server",
            *(
                arg
                for a in (server.links[0].address, *server.links[0].more_addresses)
                for arg in ("--listen", str(a.ip))
            ),
            "--port",
            str(TRAFFIC_PORT),
            "--control",
            str(sock),
        ]
        log = state.run_dir / "traffic" / f"{server.name}.log"
        proc = spawn(server.ns, argv, log, f"traffic-server:{server.name}")
        state.procs[proc.what] = proc
        state.save()
        # Ready means listening: the server binds TCP and UDP before its control
        # socket, so a client started right after `up` is never refused.
        deadline = time.monotonic() + SERVER_READY_TIMEOUT
        while not sock.exists():
            if not proc.alive():
                raise LabError(f"traffic server on {server.name} exited; see {log}")
            if time.monotonic() > deadline:
                raise LabError(f"traffic server on {server.name} not listening; see {log}")
            time.sleep(0.02)


def make_fabric(
    state: LabState,
    topo: Topology,
    *,
    links_up: Callable[[Host], bool] = lambda host: True,
    extra_bridges: Sequence[str] = (),
) -> None:
    """The cabling of a topology: its namespaces (each recorded in the state
    before it exists, so `down` finds it), the switch's bridges, every host's
    veths, addresses and routes. Nothing runs and nothing is configured on the
    nodes: that is the caller's part (`up`: sysctls, policy, agents)."""
    for ns in topo.namespaces:
        state.namespaces.append(ns)
        state.save()
        run(["ip", "netns", "add", ns])
    for ns in topo.namespaces:
        sysctl(ns, QUIET_SYSCTLS)
    wire_switch(topo, extra_bridges)
    for host in topo.hosts:
        wire_host(topo, host, links_up(host))


def up(
    run_dir: Path,
    prefix: str,
    nodes: int = 3,
    clients: int = 1,
    servers: int = 1,
    agents: bool = True,
    ipv6: bool = False,
    nat: bool = False,
    sync6: bool = False,
    backend: str = "nftables",  # the agents' data plane: nftables or clusterdev (kernel module)
    bare: bool = False,
) -> LabState:
    """A lab that stays up until `down`. With agents=False fw1 alone forwards
    (the standalone firewall), unless bare: then nothing runs on the nodes and
    every link is up, for a caller that brings its own firewall."""
    if bare and agents:
        raise LabError("a bare lab has no agents: pass agents=False")
    existing = LabState.load(run_dir)
    if existing is not None or _leftovers(prefix):
        raise LabError(f"a lab with prefix {prefix!r} exists already: run `lab down` first")
    topo = build_topology(nodes, clients, servers, prefix, ipv6=ipv6, nat=nat, sync6=sync6)
    state = LabState(
        run_dir, prefix, nodes, clients, servers, agents, ipv6=ipv6, nat=nat, sync6=sync6
    )
    state.save()
    try:
        # Without agents fw1 alone forwards: the others stay cabled but down.
        make_fabric(
            state,
            topo,
            links_up=lambda h: agents or bare or h.role != "node" or h is topo.nodes[0],
        )
        for node in topo.nodes:
            sysctl(node.ns, NODE_SYSCTLS)
            if nat:
                nat_policy.install(topo, node)
        if agents:
            agent.write_key(run_dir)
            for node in topo.nodes:
                agent.write_config(topo, node, run_dir, backend)
                if not agent.AGENT_OWNS_CLUSTER_ADDRESSES:
                    standalone.add_cluster_addresses(topo, node)
        elif not bare:
            for node in topo.nodes:
                standalone.install(topo, node)
            state.dead_nodes = [n.name for n in topo.nodes[1:]]
        state.save()
        start_traffic_servers(state, topo)
        if agents:
            for node in topo.nodes:
                _start_agent(state, topo, node)
            _report_early_exits(state)
    except BaseException:
        # Half a lab is worse than none: take down what was made, then report the failure.
        down(run_dir, prefix)
        raise
    return state


@contextlib.contextmanager
def running(
    run_dir: Path,
    prefix: str,
    *,
    settle_timeout: float | None = 60.0,
    keep_logs: bool = False,
    **options: Any,
) -> Iterator[LabState]:
    """A lab for the length of a `with` block: `up` with these options (after
    removing the leftovers of a crashed run under the same prefix), the
    agents' cluster settled (unless settle_timeout is None), and `down`
    whatever happens (keep_logs: the agents' logs stay in run_dir)."""
    down(run_dir, prefix)
    state = up(run_dir, prefix, **options)
    try:
        if state.agents and settle_timeout is not None:
            cluster.wait_settled(state, timeout=settle_timeout)
        yield state
    finally:
        down(run_dir, prefix, keep_logs=keep_logs)


def down(run_dir: Path, prefix: str, keep_logs: bool = False) -> list[str]:
    """Remove every process, namespace and file of the lab; returns what it removed."""
    removed: list[str] = []
    state = LabState.load(run_dir)
    if state is not None:
        for name, proc in sorted(state.procs.items()):
            if proc.alive():
                stop(proc, timeout=3.0)
                removed.append(f"process {name} (pid {proc.pid})")
    namespaces = set(_leftovers(prefix))
    if state is not None:
        namespaces |= {ns for ns in state.namespaces if ns in list_namespaces()}
    for ns in sorted(namespaces):
        for pid in namespace_pids(ns):
            kill_pid(pid)
            removed.append(f"process {pid} in {ns}")
        ip_del = run(["ip", "netns", "del", ns], check=False)
        if ip_del.returncode == 0:
            removed.append(f"namespace {ns}")
    if run_dir.exists():
        if keep_logs:
            (run_dir / "state.json").unlink(missing_ok=True)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    return removed


def set_links(host: Host, up_: bool) -> None:
    ip_batch(host.ns, [f"link set {link.ifname} {'up' if up_ else 'down'}" for link in host.links])
