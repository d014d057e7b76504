"""The nftables data-plane backend: no kernel module, stock nft and iproute2.

It owns, on this node and in the current network namespace:
  * the tables `inet fwcluster` and `arp fwcluster` (nft_ruleset.py);
  * the cluster multicast MAC of every zone on the zone interface
    (`ip maddr`, since pyroute2 has no API for link-layer multicast lists);
  * the cluster IPs it had to add to the zone interfaces (iproute2 `ip`);
  * the sysctls it changed (sysctl.py), restored on uninstall.

Lifecycle: install() -> set_owned_buckets()* -> uninstall(). Every call is
idempotent; install() on an installed backend re-renders the tables and
keeps the owned set. What install() added is remembered in this object only:
a new process cannot undo an older process's install beyond deleting the
tables (the daemon calls uninstall() before it exits).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import subprocess
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..node_events import Switch
from .base import DataPlaneConfig, Zone
from .fence import FENCE_MARK, Fence
from .nft_batch import BatchRefused, BatchWriter
from .nft_handover import fits_batch, forwarding_batch, render_forwarding_update
from .nft_ruleset import (
    COUNTERS,
    EARLY_COUNTERS,
    HANDOVER_CHAIN,
    OWNED_SET,
    TABLE,
    render_ruleset,
    render_uninstall,
    validate_config,
)
from .priority import at_own_priority
from .sysctl import PROC_SYS, SysctlChanges, interface_key

log = logging.getLogger(__name__)

IPAddr = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class DataPlaneError(RuntimeError):
    """A command the backend needs failed; the message says which and why."""


def _run(cmd: list[str], stdin: str | None = None, *, writes: bool = True) -> str:
    """Run a command of the data plane. Writes run at the agent's realtime
    priority (priority.py); reads (`writes=False`: status, counters, the
    ruleset check) at normal priority, so that a poll of the agent's status
    never holds a core against its heartbeats."""
    argv = at_own_priority(cmd) if writes else list(cmd)
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
    except FileNotFoundError as e:
        raise DataPlaneError(f"{cmd[0]} not found: install nftables and iproute2") from e
    except subprocess.TimeoutExpired as e:
        raise DataPlaneError(f"{' '.join(cmd)} timed out") from e
    if done.returncode != 0:
        raise DataPlaneError(
            f"{' '.join(cmd)} failed (exit {done.returncode}): {done.stderr.strip()}"
        )
    return done.stdout


def nft_apply(script: str, check: bool = False) -> None:
    """Run an nft script as one transaction (`nft -f -`), or only check it."""
    _run(["nft", "-c", "-f", "-"] if check else ["nft", "-f", "-"], stdin=script)


def nft_json(*args: str) -> list[dict[str, Any]]:
    text = _run(["nft", "-j", *args], writes=False)
    try:
        out = json.loads(text)
    except ValueError as e:
        # nft 1.0.6 stops its JSON half-way through a table with `flags owner`
        raise DataPlaneError(f"nft -j {' '.join(args)}: output is not JSON ({e})") from e
    items = out.get("nftables", []) if isinstance(out, dict) else []
    return [i for i in items if isinstance(i, dict)]


def _interface_addresses(interface: str) -> set[IPAddr]:
    data = json.loads(_run(["ip", "-j", "addr", "show", "dev", interface]))
    found: set[IPAddr] = set()
    for link in data:
        for a in link.get("addr_info", []):
            found.add(ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}"))
    return found


def _interface_mac(interface: str) -> str:
    data = json.loads(_run(["ip", "-j", "link", "show", "dev", interface]))
    if not data or "address" not in data[0]:
        raise DataPlaneError(f"interface {interface} has no link-layer address")
    return str(data[0]["address"])


def _interface_maddrs(interface: str, proc: Path = Path("/proc/net/dev_mcast")) -> set[str]:
    """Link-layer multicast addresses of an interface (this namespace)."""
    macs = set()
    for line in proc.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[1] == interface and len(parts[4]) == 12:
            h = parts[4].lower()
            macs.add(":".join(h[i : i + 2] for i in range(0, 12, 2)))
    return macs


def read_counters() -> dict[str, int]:
    """Packets per named counter of the agent's table (those in COUNTERS)."""
    counters: dict[str, int] = {}
    for item in nft_json("list", "counters", "table", "inet", TABLE):
        c = item.get("counter")
        if isinstance(c, dict) and c.get("name") in COUNTERS + EARLY_COUNTERS:
            counters[str(c["name"])] = int(c.get("packets", 0))
    return counters


def ruleset_fingerprint() -> Counter[str]:
    """What the agent's two tables hold, by kind and name: chains, sets,
    counters, and rules counted per chain (set elements, counter values and
    the handover chain's timed switches change in normal operation and are
    left out). A missing table counts as
    empty: any object install() made is then missing."""
    found: Counter[str] = Counter()
    for family in ("inet", "arp"):
        try:
            items = nft_json("list", "table", family, TABLE)
        except DataPlaneError as e:
            if "No such file or directory" in str(e):
                continue
            raise
        for item in items:
            for kind in ("table", "chain", "set", "map", "counter", "rule"):
                obj = item.get(kind)
                if isinstance(obj, dict) and obj.get("table", obj.get("name")) == TABLE:
                    name = obj.get("chain") if kind == "rule" else obj.get("name")
                    if kind == "rule" and name == HANDOVER_CHAIN:
                        continue  # set_owned_buckets writes and clears these
                    found[f"{kind} {family} {name}"] += 1
    return found


class NftablesDataPlane:
    """base.DataPlane with nftables; see the module docstring."""

    name = "nftables"

    def __init__(self, config: DataPlaneConfig, proc_sys: Path = PROC_SYS) -> None:
        validate_config(config)
        self.config = config
        self.sysctls = SysctlChanges(proc_sys)
        self.added_addresses: list[tuple[str, IPAddr]] = []
        self.added_maddrs: list[tuple[str, str]] = []
        self.installed = False
        self.owned: frozenset[int] = frozenset()
        self.fence: Fence | None = None
        self.writer: BatchWriter | None = None  # set_owned_buckets' netlink socket
        self.fingerprint: Counter[str] = Counter()  # of the tables as install() left them

    # --- DataPlane -----------------------------------------------------------------

    def install(self) -> None:
        macs = {z.interface: _interface_mac(z.interface) for z in self.config.zones}
        script = render_ruleset(self.config, self.owned, macs)
        nft_apply(script)  # first: it fails early if a zone interface is missing
        self.installed = True
        if self.writer is None:  # opened here: in the namespace the tables are in
            self.writer = BatchWriter()
        if self.config.fence_timeout_s is not None:
            if self.fence is None:
                self.fence = Fence(TABLE, self.config.fence_timeout_s)
            self.fence.refresh()  # the new table's set starts empty
        self.fingerprint = ruleset_fingerprint()
        has_v6 = False
        for zone in self.config.zones:
            self._add_maddr(zone)
            for ip in zone.cluster_ips:
                has_v6 |= ip.version == 6
                self._add_address(zone, ip)
        self.sysctls.set("net.ipv4.conf.all.arp_announce", "2")
        self.sysctls.set("net.ipv4.ip_forward", "1")
        if has_v6:
            self.sysctls.set("net.ipv6.conf.all.forwarding", "1")
        self.sysctls.set(
            "net.netfilter.nf_conntrack_tcp_loose", "1" if self.config.tcp_loose else "0"
        )
        # A zone link without carrier keeps its routes, so until this node has
        # handed its buckets over, packets it forwards to that link wait in the
        # neighbour queue of an unresolved next hop, and leave when the carrier
        # returns: late copies of what the new owner delivered meanwhile
        # (duplicates, seen in lab/tests/test_link_failure.py). Ignoring such
        # routes drops them at once, as an interface set down does.
        for zone in self.config.zones:
            for family in ("ipv4", "ipv6") if has_v6 else ("ipv4",):
                key = interface_key(family, zone.interface, "ignore_routes_with_linkdown")
                self.sysctls.set(key, "1")
        log.info("nftables data plane installed: %d zones", len(self.config.zones))

    def set_owned_buckets(self, owned: frozenset[int], switches: Sequence[Switch] = ()) -> None:
        if not self.installed:
            raise DataPlaneError("set_owned_buckets() before install()")
        try:
            if self.writer is not None and fits_batch(switches):
                batch = self.writer.batch(TABLE)
                forwarding_batch(batch, self.config, owned, switches)  # validates first
                try:
                    self.writer.apply(batch)
                except BatchRefused as e:
                    raise DataPlaneError(f"nf_tables refused the forwarding update: {e}") from e
            else:  # more switch instants than slots: nft, with anonymous sets
                _run(
                    ["nft", "-j", "-f", "-"],
                    stdin=render_forwarding_update(self.config, owned, switches),
                )
        except DataPlaneError:
            # What the kernel holds is unknown now. A later install() (a
            # restore) renders self.owned: it must not bring back a bucket
            # the Node has given away, or two nodes forward it.
            self.owned = self.owned & frozenset(owned)
            raise
        self.owned = frozenset(owned)

    def uninstall(self) -> None:
        errors: list[str] = []
        try:
            nft_apply(render_uninstall())
        except DataPlaneError as e:
            errors.append(str(e))
        for iface, ip in reversed(self.added_addresses):
            try:
                _run(["ip", "addr", "del", str(ip), "dev", iface])
            except DataPlaneError as e:
                errors.append(str(e))
        for iface, mac in reversed(self.added_maddrs):
            try:
                _run(["ip", "maddr", "del", mac, "dev", iface])
            except DataPlaneError as e:
                errors.append(str(e))
        self.added_addresses.clear()
        self.added_maddrs.clear()
        try:
            self.sysctls.restore()
        except RuntimeError as e:
            errors.append(str(e))
        self.installed = False
        self.owned = frozenset()
        if self.fence is not None:
            self.fence.close()
            self.fence = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if errors:
            raise DataPlaneError("uninstall incomplete: " + "; ".join(errors))

    def status(self) -> dict[str, object]:
        result: dict[str, object] = {"backend": self.name, "installed": self.installed}
        if not self.installed:
            return result
        result["owned"] = self.programmed_owned()
        result["counters"] = read_counters()
        if self.fence is not None:
            result["fence"] = {"refreshes": self.fence.refreshes, "errors": dict(self.fence.errors)}
        return result

    @property
    def fence_mark(self) -> int:
        return FENCE_MARK if self.config.fence_timeout_s is not None else 0

    def keep_alive(self, timeout_s: float | None = None) -> None:
        if self.fence is not None:
            self.fence.refresh(timeout_s)

    def check(self) -> str | None:
        if not self.installed:
            return None
        try:
            now = ruleset_fingerprint()
        except DataPlaneError as e:
            return f"cannot read the agent's tables: {e}"
        if now == self.fingerprint:
            return None
        missing = sorted((self.fingerprint - now).keys())
        extra = sorted((now - self.fingerprint).keys())
        what = []
        if missing:
            what.append("missing " + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
        if extra:
            what.append("unexpected " + ", ".join(extra[:5]) + (" ..." if len(extra) > 5 else ""))
        return "the agent's nftables tables changed: " + "; ".join(what)

    # --- helpers -------------------------------------------------------------------

    def programmed_owned(self) -> list[int]:
        """The owned set as the kernel has it (read back with `nft -j`)."""
        for item in nft_json("list", "set", "inet", TABLE, OWNED_SET):
            s = item.get("set")
            if isinstance(s, dict):
                return sorted(int(e) for e in s.get("elem", []) if isinstance(e, int))
        return []

    def _add_maddr(self, zone: Zone) -> None:
        mac = zone.cluster_mac.lower()
        if mac in _interface_maddrs(zone.interface):
            return
        _run(["ip", "maddr", "add", mac, "dev", zone.interface])
        self.added_maddrs.append((zone.interface, mac))

    def _add_address(self, zone: Zone, ip: IPAddr) -> None:
        present = _interface_addresses(zone.interface)
        if ip in present:
            return
        if ip.version == 4 and not any(p.version == 4 and ip.ip in p.network for p in present):
            # The first address of a subnet is the primary one and the source
            # of the node's own traffic: the node IP must come first.
            log.warning(
                "zone %s: cluster IP %s becomes primary on %s (no node IP in its subnet)",
                zone.name,
                ip,
                zone.interface,
            )
        cmd = ["ip", "addr", "add", str(ip), "dev", zone.interface]
        if ip.version == 6:
            # Every node has this address: duplicate address detection would
            # disable it, and a deprecated address is never a source address.
            cmd += ["nodad", "preferred_lft", "0"]
        _run(cmd)
        self.added_addresses.append((zone.interface, ip))
