"""`make demo` (`python -m testhosts demo`): the failover story on real
systemd hosts, rolled out with Ansible.

Fresh test hosts boot; `ansible-playbook playbooks/site.yml` rolls the cluster
out on them; `clusterctl ranges` shows who owns which bucket; traffic flows
from the client through the cluster to the server; the node carrying the most
connections loses power (container killed, its links down); the survivors
take over its buckets and connections. The last screen is the lab demo's
verdict (fwcluster_lab.demo), whose last line is machine-readable:

    verdict: connections=<n> lost=<n> duplicates=<n> longest_stall_ms=<n>

Exit status 0 only when nothing was lost and nothing delivered twice. The
hosts are removed at the end, also on failure or interruption (`--keep`
leaves them up for a look).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from fwcluster_lab.cluster import settled
from fwcluster_lab.demo import TAKEOVER_WORDS, dead_share, say, step, verdict_screen
from fwcluster_lab.netns import LabError

from . import hosts, machine, traffic
from .layout import CACHE, REPO, NodeLayout, node_layouts, topology

PLAYBOOK_TIMEOUT_S = 1200.0
SITE_LOG = CACHE / "demo-site.log"


def _ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = f"{bindir}:{env.get('PATH', '')}"
    env["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")
    env["ANSIBLE_NOCOLOR"] = "1"
    return env


def rollout(log: Path = SITE_LOG) -> None:
    """ansible-playbook site.yml; the whole output goes to `log`, the screen
    gets the plays and the recap (a person reads those, not 600 task lines)."""
    argv = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        "-i",
        "inventories/lab/hosts.yml",
        "playbooks/site.yml",
    ]
    say("$ ansible-playbook " + " ".join(argv[1:]))
    log.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + PLAYBOOK_TIMEOUT_S
    in_recap = False
    with open(log, "w") as out:
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=_ansible_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                out.write(line)
                in_recap = in_recap or line.startswith("PLAY RECAP")
                if line.startswith("PLAY [") or (in_recap and line.strip()):
                    say("   " + line.rstrip().rstrip("*").rstrip())
                if time.monotonic() > deadline:
                    raise LabError(f"site.yml took over {PLAYBOOK_TIMEOUT_S:.0f}s; see {log}")
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise LabError(f"site.yml failed ({proc.returncode}); see {log}")
    say(f"   (the whole run: {log})")


def on_node(node: NodeLayout, command: str, timeout: float = 30.0) -> str:
    proc = subprocess.run(
        machine.ssh_argv(str(node.mgmt_address.ip), command),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise LabError(f"{node.name}: `{command}` failed: {proc.stderr.strip()[:300]}")
    return proc.stdout


def cluster_status(node: NodeLayout) -> dict[str, Any] | None:
    """`clusterctl status --json` of a node, None when it does not answer."""
    try:
        data = json.loads(on_node(node, "clusterctl status --json", timeout=10.0))
    except (LabError, ValueError, subprocess.TimeoutExpired):
        return None
    return data if isinstance(data, dict) else None


def wait_settled(nodes: list[NodeLayout], timeout: float) -> dict[str, Any]:
    """Until these nodes agree, are stable and own every bucket (the lab's rule)."""
    sync_ids = {n.name: str(n.host.link("sync").address.ip) for n in nodes}
    deadline = time.monotonic() + timeout
    reason = "not polled"
    while time.monotonic() < deadline:
        statuses = {n.name: cluster_status(n) for n in nodes}
        reason = settled(statuses, sync_ids)
        if not reason:
            return statuses
        time.sleep(0.5)
    raise LabError(f"cluster not settled after {timeout:.0f}s: {reason}")


def takeover_lines(node: NodeLayout, since: float, limit: int = 8) -> list[str]:
    """What the survivor's agent logged (journald) about the takeover."""
    try:
        text = on_node(
            node, f"journalctl -u availability-manager -o cat --no-pager --since=@{int(since)}"
        )
    except (LabError, subprocess.TimeoutExpired):
        return []
    lines = []
    for line in text.splitlines():
        if any(w in line for w in TAKEOVER_WORDS):
            # "2026-01-31 12:00:00,123 INFO text": the time of day is enough.
            line = re.sub(r"^\d{4}-\d\d-\d\d ", "", line).replace("INFO ", "")
            lines.append(line if len(line) < 110 else line[:107] + "...")
    return lines[:limit]


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # SystemExit runs the `finally` below: the hosts are removed.
    raise SystemExit(128 + signum)


def run(
    nodes: int = 3,
    victim: str | None = None,
    keep: bool = False,
    tcp: int = 60,
    udp: int = 10,
    ping: int = 2,
    interval_ms: int = 50,
) -> int:
    layouts = node_layouts(topology(nodes))
    by_name = {n.name: n for n in layouts}
    if victim is not None and victim not in by_name:
        raise LabError(f"no node {victim} among {', '.join(by_name)}")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        step(1, f"{nodes} fresh firewall hosts: systemd-booted Debian containers")
        hosts.down()
        hosts.up(nodes)
        say("client -- [outside] -- " + " ".join(by_name) + " -- [inside] -- server;")
        say("sync network 198.51.100.0/24, management (SSH from here) 198.18.0.0/24")

        step(2, "Roll the cluster out with Ansible")
        rollout()
        statuses = wait_settled(layouts, timeout=60)
        for n in layouts:
            st = statuses[n.name]
            say(f"{n.name}: {st['state']}, owns {len(st['owned'])} of {st['buckets']} buckets")

        first = layouts[0]
        step(3, f"Who owns which bucket (`clusterctl ranges` on {first.name})")
        say(on_node(first, "clusterctl ranges").rstrip())

        step(
            4, f"Traffic: {tcp} TCP streams, {udp} UDP flows, {ping} pings, every {interval_ms} ms"
        )
        started = traffic.start(tcp, udp, ping, interval_ms, drain=3.0)
        say(f"traffic running: {started.get('established', tcp)} TCP streams established")
        time.sleep(3.0)
        counts = {}
        for n in layouts:
            st = cluster_status(n) or {}
            counts[n.name] = int(st.get("sync", {}).get("local_entries", -1))
            say(f"  {n.name} handles {counts[n.name]} connections (synced to the others)")
        dead = victim or max(counts, key=lambda name: counts[name])
        before = tcp + udp + ping

        why = "" if victim else ", the node with the most connections"
        step(5, f"{dead} loses power{why} (container killed, links down)")
        killed_at = time.time()
        hosts.poweroff(dead)
        say(f"{dead} is off at {time.strftime('%H:%M:%S', time.localtime(killed_at))}")
        survivors = [n for n in layouts if n.name != dead]
        wait_settled(survivors, timeout=30)
        time.sleep(3.0)  # traffic keeps flowing through the survivors
        for n in survivors:
            say(f"-- what {n.name} did:")
            for line in takeover_lines(n, killed_at):
                say(f"   {line}")

        step(6, f"Buckets after the takeover (`clusterctl ranges` on {survivors[0].name})")
        say(on_node(survivors[0], "clusterctl ranges").rstrip())
        summary = traffic.stop()
    finally:
        if not keep:
            hosts.down()
    ok = verdict_screen(7, summary, before, dead_share(counts, dead))
    return 0 if ok else 1
