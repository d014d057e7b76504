"""`python -m testhosts demo`: the failover story on real systemd hosts,
rolled out with Ansible. Fresh hosts, `ansible-playbook playbooks/site.yml`,
traffic through the cluster, one node loses power, and a verdict: connections
lost, and whether the survivors own every bucket. For `make demo`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fwcluster_lab.netns import LabError

from . import hosts, machine, traffic
from .layout import REPO, node_layouts, topology

PLAYBOOK_TIMEOUT_S = 900.0


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = f"{bindir}:{env.get('PATH', '')}"
    env["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")
    return env


def rollout() -> None:
    argv = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        "-i",
        str(REPO / "inventories" / "lab" / "hosts.yml"),
        str(REPO / "playbooks" / "site.yml"),
    ]
    print("$ " + " ".join(argv), flush=True)
    proc = subprocess.run(argv, cwd=REPO, env=_ansible_env(), timeout=PLAYBOOK_TIMEOUT_S)
    if proc.returncode != 0:
        raise LabError(f"site.yml failed ({proc.returncode})")


def cluster_status(address: str) -> dict[str, Any]:
    proc = subprocess.run(
        machine.ssh_argv(address, "clusterctl status --json"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        raise LabError(f"{address}: clusterctl status failed: {proc.stderr.strip()}")
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def run(nodes: int = 3, victim: str = "fw2", keep: bool = False) -> int:
    layouts = {n.name: n for n in node_layouts(topology(nodes))}
    if victim not in layouts:
        raise LabError(f"no node {victim} among {', '.join(layouts)}")
    try:
        _say(f"booting {nodes} fresh test hosts")
        hosts.down()
        hosts.up(nodes)
        _say("rolling the cluster out with Ansible")
        rollout()
        for n in layouts.values():
            st = cluster_status(str(n.mgmt_address.ip))
            print(f"{n.name}: {st['state']}, owns {len(st['owned'])} of {st['buckets']} buckets")
        _say("traffic from the client through the cluster to the server")
        traffic.start(tcp=40, udp=10, ping=0, interval_ms=50)
        time.sleep(3)
        _say(f"{victim} loses power")
        hosts.poweroff(victim)
        time.sleep(8)
        summary = traffic.stop()
        print(traffic.counts_line(summary))
        survivors = [n for name, n in layouts.items() if name != victim]
        statuses = [cluster_status(str(n.mgmt_address.ip)) for n in survivors]
        owned = set().union(*(set(st["owned"]) for st in statuses))
        buckets = statuses[0]["buckets"]
        ok = summary["lost"] == 0 and owned == set(range(buckets))
        names = "+".join(n.name for n in survivors)
        verdict = "PASS" if ok else "FAIL"
        print(
            f"\ndemo: {verdict}: {victim} lost power under {summary['connections']} connections: "
            f"{summary['lost']} lost; {names} own {len(owned)}/{buckets} buckets"
        )
        return 0 if ok else 1
    finally:
        if not keep:
            hosts.down()
