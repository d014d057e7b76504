"""Rendering the baseline's configs (bench/baselines/*.in) for one lab node.

Pure text in, text out: the files in bench/baselines/ are what a reader
reviews, this module only fills in what differs per node (addresses, paths,
priority). Priorities give fw1 the master role at start: 200, 190, 180...
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from string import Template

from .env import BASELINES

VARIANTS = ("default", "tuned")
TUNED_ADVERT_S = 0.1  # VRRPv3 advert interval of the "tuned" variant
BASE_PRIORITY = 200
PRIORITY_STEP = 10
# conntrackd refuses entries past HashLimit; the sync benchmark offers up to
# a few hundred thousand, so the example's 131072 is raised (README).
HASH_LIMIT = 524288
FIREWALL_TABLE = "baseline_fw"


class NodePaths:
    """Per-node files; every node namespace shares one filesystem."""

    def __init__(self, dir: Path) -> None:
        self.dir = dir
        self.keepalived_conf = dir / "keepalived.conf"
        self.conntrackd_conf = dir / "conntrackd.conf"
        self.track_file = dir / "priority"  # keepalived's tracked priority change
        self.events = dir / "events.log"  # the notify script's transitions
        self.conntrackd_log = dir / "conntrackd.log"
        self.keepalived_log = dir / "keepalived.log"
        self.lock_file = dir / "conntrackd.lock"
        self.unix_path = dir / "conntrackd.ctl"
        self.pid_files = (dir / "keepalived.pid", dir / "vrrp.pid")


@dataclasses.dataclass(frozen=True)
class NodeSpec:
    """What the templates need to know about one node."""

    name: str
    index: int  # 0 for fw1
    sync_if: str
    sync_addr: str
    sync_net: str  # e.g. 198.51.100.0/24
    own_addrs: tuple[str, ...]
    zone_ifs: tuple[str, str]  # outside, inside
    vips: tuple[tuple[str, str], ...]  # (address/prefix, interface)


def priority(index: int) -> int:
    return BASE_PRIORITY - PRIORITY_STEP * index


def _template(name: str) -> Template:
    return Template((BASELINES / name).read_text())


def keepalived_conf(
    variant: str, node: NodeSpec, paths: NodePaths, notify: Path, advert_s: float
) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    tmpl = _template(f"keepalived-{variant}.conf.in")
    return tmpl.substitute(
        node=node.name,
        track_file=paths.track_file,
        notify=notify,
        conntrackd_conf=paths.conntrackd_conf,
        events=paths.events,
        sync_if=node.sync_if,
        priority=priority(node.index),
        advert_int=f"{advert_s:g}",
        track_interfaces="\n".join(f"        {i}" for i in node.zone_ifs),
        vips="\n".join(f"        {addr} dev {dev}" for addr, dev in node.vips),
    )


def conntrackd_conf(node: NodeSpec, paths: NodePaths) -> str:
    # The sync network carries only the cluster's own traffic (VRRP, conntrackd):
    # nothing there is a forwarded connection worth replicating.
    ignore = [
        "127.0.0.1",
        *node.own_addrs,
        *(a.split("/")[0] for a, _ in node.vips),
        node.sync_net,
    ]
    return _template("conntrackd.conf.in").substitute(
        sync_addr=node.sync_addr,
        sync_if=node.sync_if,
        hash_limit=HASH_LIMIT,
        log_file=paths.conntrackd_log,
        lock_file=paths.lock_file,
        unix_path=paths.unix_path,
        ignore_addresses="\n".join(f"            IPv4_address {a}" for a in ignore),
    )


def firewall_ruleset(node: NodeSpec) -> str:
    return _template("firewall.nft.in").substitute(
        table=FIREWALL_TABLE, outside_if=node.zone_ifs[0], inside_if=node.zone_ifs[1]
    )
