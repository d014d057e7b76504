"""`up`, `down`, `status`, `poweroff`, `poweron`: the test hosts as a whole.

What exists is recorded before it is created (the lab's state file in
RUN_DIR/state.json: namespaces and processes as (pid, start time)), so `down`
also cleans up after a crash: it stops recorded processes, then anything left
in a namespace with our prefix, unmounts every overlay below the node
directories, deletes the namespaces and the controller's management link.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Any

from fwcluster_lab.build import start_traffic_servers
from fwcluster_lab.netns import (
    LabError,
    kill_pid,
    list_namespaces,
    namespace_pids,
    stop,
)
from fwcluster_lab.state import LabState

from . import agent_source, machine, network
from .layout import CACHE, PREFIX, RUN_DIR, NodeLayout, node_layouts, topology
from .rootfs import ensure_rootfs


def _nodes(state: LabState) -> list[NodeLayout]:
    return node_layouts(state.topology())


def load_state(run_dir: Path = RUN_DIR) -> LabState | None:
    return LabState.load(run_dir)


def up(nodes: int = 3, run_dir: Path = RUN_DIR, boot_timeout: float = 120.0) -> LabState:
    if load_state(run_dir) is not None or network.leftover_namespaces():
        raise LabError("test hosts exist already: run `python -m testhosts down` first")
    # TESTHOSTS_ROOTFS: boot a root prepared elsewhere (development, offline CI).
    override = os.environ.get("TESTHOSTS_ROOTFS")
    lower = Path(override) if override else ensure_rootfs(CACHE)
    machine.ensure_ssh_key()
    agent_source.stage()
    agent_source.forget_built_wheels(CACHE / "wheelhouse")
    topo = topology(nodes)
    state = LabState(run_dir, PREFIX, nodes, len(topo.clients), len(topo.servers), agents=False)
    state.save()
    layouts = {n.name: n for n in node_layouts(topo)}
    try:
        network.create_fabric(state, topo, list(layouts.values()))
        # the lab's traffic server in every server namespace, as `lab up` starts it,
        # and on the client: the far end of the masquerade traffic from inside
        start_traffic_servers(state, state.topology())
        start_traffic_servers(state, dataclasses.replace(topo, servers=topo.clients[:1]))
        for node in layouts.values():
            shutil.rmtree(node.dir, ignore_errors=True)  # a fresh disk every `up`
            machine.mount_overlay(node, lower)
            machine.personalize(node)
            state.procs[f"nspawn:{node.name}"] = machine.boot(node)
            state.save()
        deadline = time.monotonic() + boot_timeout
        for node in layouts.values():
            machine.wait_for_ssh(str(node.mgmt_address.ip), max(5.0, deadline - time.monotonic()))
    except BaseException:
        # Half a set of hosts is worse than none: remove it, then report.
        down(run_dir)
        raise
    return state


def down(run_dir: Path = RUN_DIR) -> list[str]:
    """Remove everything the test hosts created; returns what was removed."""
    removed: list[str] = []
    state = load_state(run_dir)
    if state is not None:
        nspawns = [(k, p) for k, p in sorted(state.procs.items()) if k.startswith("nspawn:")]
        for name, proc in nspawns:
            if proc.alive():
                machine.shutdown(proc, timeout=15.0)
                removed.append(f"container {name} (pid {proc.pid})")
        for name, proc in sorted(state.procs.items()):
            if not name.startswith("nspawn:") and proc.alive():
                stop(proc, timeout=3.0)
                removed.append(f"process {name} (pid {proc.pid})")
    namespaces = set(network.leftover_namespaces())
    if state is not None:
        present = set(list_namespaces())
        namespaces |= {ns for ns in state.namespaces if ns in present}
    for ns in sorted(namespaces):
        # Whatever still runs inside (a container whose nspawn died, a stray
        # client) is ours by construction: the namespace carries our prefix.
        for pid in namespace_pids(ns):
            kill_pid(pid)
            removed.append(f"process {pid} in {ns}")
    for mount in machine.mounted_under(CACHE / "nodes"):
        if machine.umount(mount):
            removed.append(f"mount {mount}")
    for ns in sorted(namespaces):
        from fwcluster_lab.netns import run

        if run(["ip", "netns", "del", ns], check=False).returncode == 0:
            removed.append(f"namespace {ns}")
    if network.remove_controller_link():
        removed.append("link fwh-mgmt")
    nodes_dir = CACHE / "nodes"
    if nodes_dir.exists() and not machine.mounted_under(nodes_dir):
        shutil.rmtree(nodes_dir, ignore_errors=True)
        removed.append(f"directory {nodes_dir}")
    if run_dir.exists():
        shutil.rmtree(run_dir, ignore_errors=True)
    return removed


def _node(state: LabState, name: str) -> NodeLayout:
    for node in _nodes(state):
        if node.name == name or node.ns == name:
            return node
    raise LabError(f"no test host named {name!r}")


def poweroff(name: str, run_dir: Path = RUN_DIR) -> None:
    """The node loses power: the container dies at once and its links go down."""
    state = _require(run_dir)
    node = _node(state, name)
    proc = state.procs.get(f"nspawn:{node.name}")
    if proc is not None:
        machine.power_off(proc)
    network.set_data_links(node.host, up=False)
    if node.name not in state.dead_nodes:
        state.dead_nodes.append(node.name)
    state.save()


def poweron(name: str, run_dir: Path = RUN_DIR, boot_timeout: float = 120.0) -> None:
    """Boot a powered-off node again, with its disk (overlay) as it was."""
    state = _require(run_dir)
    node = _node(state, name)
    proc = state.procs.get(f"nspawn:{node.name}")
    if proc is not None and proc.alive():
        raise LabError(f"{node.name} is running: `poweroff` it first")
    network.reset_node_namespace(node.host, node)
    network.set_data_links(node.host, up=True)
    state.procs[f"nspawn:{node.name}"] = machine.boot(node)
    state.dead_nodes = [n for n in state.dead_nodes if n != node.name]
    state.save()
    machine.wait_for_ssh(str(node.mgmt_address.ip), boot_timeout)


def _require(run_dir: Path) -> LabState:
    state = load_state(run_dir)
    if state is None:
        raise LabError("no test hosts are up: run `python -m testhosts up`")
    return state


def status(run_dir: Path = RUN_DIR) -> dict[str, Any]:
    state = _require(run_dir)
    present = set(list_namespaces())
    nodes = {}
    for node in _nodes(state):
        proc = state.procs.get(f"nspawn:{node.name}")
        nodes[node.name] = {
            "namespace": node.ns,
            "namespace_present": node.ns in present,
            "mgmt_address": str(node.mgmt_address.ip),
            "running": bool(proc and proc.alive()),
            "pid": proc.pid if proc else None,
            "powered_off": node.name in state.dead_nodes,
            "overlay_mounted": machine.is_mounted(node.merged),
        }
    procs = {k: {"pid": p.pid, "alive": p.alive()} for k, p in state.procs.items()}
    return {
        "prefix": state.prefix,
        "run_dir": str(run_dir),
        "nodes": nodes,
        "processes": procs,
    }
