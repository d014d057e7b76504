"""The `clusterdev` data-plane backend: the kernel module in kmod/.

On install, for every zone, a clusterdev link on top of the zone's interface
(`ip link add <dev> link <iface> address <cluster MAC> type clusterdev`)
takes the zone's cluster IPs; the module answers ARP for them with the
cluster MAC and filters NEW connections by bucket in a netfilter hook after
conntrack. Bucket count, seed, hash fields, mark mask and the owned-bucket
bitmap are set over the module's generic netlink family; the bitmap is
swapped atomically in the kernel, so `set_owned_buckets` is one message.

The one rule the module leaves to nftables, the input guard against
answering replies of source-NATed connections (input_guard.py), is installed
before the links come up, in the agent's table `inet fwcluster`.

`GenlChannel` is the netlink I/O (bytes are built and parsed in
clusterdev_genl.py); `ClusterdevDataPlane` implements base.DataPlane. Commands
(`ip`, `modprobe`, `sysctl`) and the guard are injectable, so the backend can
be tested without a kernel.
"""

from __future__ import annotations

import errno
import logging
import socket
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from ..node_events import Switch
from . import clusterdev_genl as genl
from .base import DataPlaneConfig, Zone
from .early_drop import SlowPathEntry
from .input_guard import InputGuard
from .priority import at_own_priority

log = logging.getLogger(__name__)

Runner = Callable[[Sequence[str]], str]


class Guard(Protocol):
    """What the backend needs of input_guard.InputGuard."""

    def install(self) -> None: ...
    def uninstall(self) -> None: ...
    def counters(self) -> dict[str, int]: ...
    def check(self) -> str | None: ...


_RECV_SIZE = 1 << 17  # GET_STATS for 4096 buckets is about 64 KiB


def run_command(argv: Sequence[str]) -> str:
    """Run a command, return its stdout; raise CalledProcessError on failure."""
    done = subprocess.run(at_own_priority(argv), check=True, capture_output=True, text=True)
    return done.stdout


class GenlChannel:
    """A generic netlink socket talking to the clusterdev family of the
    network namespace it was opened in."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        self._sock = sock or socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, genl.NETLINK_GENERIC)
        # The kernel answers at once; a silent socket is a bug, not a wait.
        self._sock.settimeout(5.0)
        self._sock.bind((0, 0))
        self._seq = 0
        self.groups: dict[str, int] = {}
        self.family = self._resolve_family()

    def close(self) -> None:
        self._sock.close()

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def exchange(self, request: bytes, seq: int) -> list[genl.Message]:
        """Send one request; collect its replies up to and including the ack or error."""
        self._sock.send(request)
        replies: list[genl.Message] = []
        while True:
            for msg in genl.parse_messages(self._sock.recv(_RECV_SIZE)):
                if msg.seq != seq:
                    continue  # a late answer to an earlier, abandoned request
                replies.append(msg)
                if msg.type in (genl.NLMSG_ERROR, genl.NLMSG_DONE):
                    return replies

    def _request(self, build: Callable[[int], bytes]) -> list[genl.Message]:
        seq = self._next_seq()
        replies = self.exchange(build(seq), seq)
        for msg in replies:
            genl.check_error(msg)
        return [m for m in replies if m.type != genl.NLMSG_ERROR]

    def _resolve_family(self) -> int:
        try:
            replies = self._request(genl.get_family_request)
        except genl.KernelError as e:
            if e.errno == errno.ENOENT:
                raise genl.GenlError("no_family", "clusterdev module not loaded") from e
            raise
        if not replies:
            raise genl.GenlError("no_family_reply")
        # name -> id: join one with socket.setsockopt(270, 1, id) (SOL_NETLINK,
        # NETLINK_ADD_MEMBERSHIP) on a socket of its own to read notifications.
        self.groups = genl.parse_mcast_groups(replies[0])
        return genl.parse_family_id(replies[0])

    def set_config(
        self,
        *,
        buckets: int | None = None,
        seed: int | None = None,
        hash_fields: str | None = None,
        mark_mask: int | None = None,
        owned: frozenset[int] | None = None,
        early_drop: bool | None = None,
        slow_path: tuple[SlowPathEntry, ...] | None = None,
    ) -> None:
        self._request(
            lambda seq: genl.set_config_request(
                self.family,
                seq,
                buckets=buckets,
                seed=seed,
                hash_fields=hash_fields,
                mark_mask=mark_mask,
                owned=owned,
                early_drop=early_drop,
                slow_path=slow_path,
            )
        )

    def get_config(self) -> genl.Config:
        replies = self._request(lambda seq: genl.get_config_request(self.family, seq))
        if not replies:
            raise genl.GenlError("no_reply")
        return genl.parse_config(replies[0], self.family)

    def get_stats(self) -> genl.Stats:
        """The counters as a dump (no 72 KiB single reply); a module from
        before the dump (EOPNOTSUPP) answers the single request."""
        try:
            replies = self._request(lambda seq: genl.get_stats_dump_request(self.family, seq))
        except genl.KernelError as e:
            if e.errno != errno.EOPNOTSUPP:
                raise
            replies = self._request(lambda seq: genl.get_stats_request(self.family, seq))
            if not replies:
                raise genl.GenlError("no_reply") from e
            return genl.parse_stats(replies[0], self.family)
        return genl.parse_stats_dump(replies, self.family)


def device_name(index: int, zone: Zone) -> str:
    """The clusterdev link of a zone: 'cd' + zone index + zone name, cut to 15."""
    return f"cd{index}{zone.name}"[:15]


class ClusterdevDataPlane:
    """base.DataPlane over the clusterdev kernel module."""

    name = "clusterdev"

    def __init__(
        self,
        config: DataPlaneConfig,
        runner: Runner = run_command,
        channel_factory: Callable[[], GenlChannel] = GenlChannel,
        guard_factory: Callable[[DataPlaneConfig], Guard] = InputGuard,
    ) -> None:
        self._config = config
        self._run = runner
        self._channel_factory = channel_factory
        self._guard = guard_factory(config)
        self._channel: GenlChannel | None = None
        self._owned: frozenset[int] = frozenset()
        self._saved_sysctls: dict[str, str] = {}
        self._installed = False
        # The daemon programs ownership on its kernel worker thread and reads
        # status() on its event loop: one netlink socket, one request at a time.
        self._lock = threading.Lock()

    def _chan(self) -> GenlChannel:
        if self._channel is None:
            self._channel = self._channel_factory()
        return self._channel

    def _sysctl(self, key: str, value: str) -> None:
        if key not in self._saved_sysctls:
            self._saved_sysctls[key] = self._run(["sysctl", "-n", key]).strip()
        self._run(["sysctl", "-q", "-w", f"{key}={value}"])

    def _existing_links(self) -> set[str]:
        out = self._run(["ip", "-o", "link", "show", "type", "clusterdev"])
        return {
            line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line
        }

    def install(self) -> None:
        with self._lock:
            self._install()
        self._installed = True

    def _load_module(self) -> GenlChannel:
        """The module's netlink channel; modprobe only if its family is missing,
        so a module loaded by hand (insmod of a build outside /lib/modules, as
        in the guest tests) is used as it is."""
        try:
            return self._chan()
        except genl.GenlError as e:
            if e.reason != "no_family":
                raise
        self._run(["modprobe", "clusterdev"])
        return self._chan()

    def _install(self) -> None:
        settings = self._config.settings
        chan = self._load_module()
        # Own nothing first: the links below start filtering at once.
        base = {
            "buckets": settings.buckets,
            "seed": settings.hash_seed,
            "hash_fields": settings.hash_fields,
            "mark_mask": self._config.mark_mask,
            "owned": frozenset[int](),
        }
        early = self._config.early_drop
        try:
            # The nftables backend's early chain, in the receive handler; sent
            # when off too, so a restart with it off turns it off.
            chan.set_config(**base, early_drop=early.enabled, slow_path=early.slow_path)  # type: ignore[arg-type]
        except genl.KernelError as e:
            # A module from before the early drop refuses the attributes
            # (EINVAL, strict parsing): fine while it is off, an error if on.
            if early.enabled or e.errno != errno.EINVAL:
                raise
            log.warning(
                "clusterdev: module without early drop (kernel refused it): configured without"
            )
            chan.set_config(**base)  # type: ignore[arg-type]
        self._owned = frozenset()
        self._guard.install()  # before the links: no reply is ever answered
        self._sysctl("net.ipv4.ip_forward", "1")
        self._sysctl("net.netfilter.nf_conntrack_tcp_loose", "1" if self._config.tcp_loose else "0")
        if any(ip.version == 6 for z in self._config.zones for ip in z.cluster_ips):
            self._sysctl("net.ipv6.conf.all.forwarding", "1")
        existing = self._existing_links()
        for index, zone in enumerate(self._config.zones):
            dev = device_name(index, zone)
            if dev not in existing:
                self._run(
                    ["ip", "link", "add", dev, "link", zone.interface, "address",
                     zone.cluster_mac.lower(), "type", "clusterdev"]
                )  # fmt: skip
                # No link-local address: one derived from the cluster MAC would
                # be the same on every node and fail duplicate address detection.
                self._run(["ip", "link", "set", dev, "addrgenmode", "none"])
            for ip in zone.cluster_ips:
                cmd = ["ip", "addr", "replace", str(ip), "dev", dev]
                if ip.version == 6:
                    # Per link, gone with it (not restored); a host may default
                    # IPv6 off. Every node holds the address: no DAD.
                    self._run(["sysctl", "-q", "-w", f"net.ipv6.conf.{dev}.disable_ipv6=0"])
                    cmd.append("nodad")
                self._run(cmd)
            self._run(["ip", "link", "set", dev, "up"])

    def set_owned_buckets(self, owned: frozenset[int], switches: Sequence[Switch] = ()) -> None:
        """The module has no clock rule: a bucket of a stop switch is
        forwarded until the Node releases it at the switch time (the next
        call), one of a start switch only from the release it follows. So a
        handoff here is break-before-make, by the time the release travels."""
        owned = owned | {b for s in switches if not s.start for b in s.buckets}
        buckets = self._config.settings.buckets
        if any(not 0 <= b < buckets for b in owned):
            raise ValueError(f"owned buckets must lie in 0..{buckets - 1}")
        with self._lock:
            self._chan().set_config(buckets=buckets, owned=frozenset(owned))
            self._owned = frozenset(owned)

    def uninstall(self) -> None:
        with self._lock:
            self._uninstall()
        self._installed = False

    def _uninstall(self) -> None:
        existing = self._existing_links()
        for index, zone in enumerate(self._config.zones):
            dev = device_name(index, zone)
            if dev in existing:
                self._run(["ip", "link", "del", dev])
        if self._channel is not None:
            try:
                self._channel.set_config(buckets=self._config.settings.buckets, owned=frozenset())
            except (genl.GenlError, genl.KernelError, OSError) as e:
                log.warning("clusterdev: could not clear ownership on uninstall: %s", e)
            self._channel.close()
            self._channel = None
        try:
            self._guard.uninstall()
        except RuntimeError as e:  # nftables.DataPlaneError: say so, finish the rest
            log.warning("clusterdev: could not remove the input guard: %s", e)
        for key, value in self._saved_sysctls.items():
            self._run(["sysctl", "-q", "-w", f"{key}={value}"])
        self._saved_sysctls.clear()
        self._owned = frozenset()

    fence_mark = 0  # no fence in the module yet

    def keep_alive(self, timeout_s: float | None = None) -> None:
        """No fence in the module yet (docs/failures.md: agent stalls)."""

    def check(self) -> str | None:
        """The module's configuration as set (a module reloaded by hand comes
        back owning nothing) and every clusterdev link present."""
        if not self._installed:
            return None
        settings = self._config.settings
        try:
            with self._lock:
                cfg = self._chan().get_config()
            links = self._existing_links()
        except (genl.GenlError, genl.KernelError, OSError, subprocess.CalledProcessError) as e:
            return f"cannot read the clusterdev configuration: {e}"
        wrong = [
            name
            for name, have, want in (
                ("buckets", cfg.buckets, settings.buckets),
                ("seed", cfg.seed, settings.hash_seed),
                ("hash_fields", cfg.hash_fields, settings.hash_fields),
                ("mark_mask", cfg.mark_mask, self._config.mark_mask),
                ("owned", cfg.owned, self._owned),
            )
            if have != want
        ]
        wrong += [
            f"link {dev} missing"
            for dev in (device_name(i, z) for i, z in enumerate(self._config.zones))
            if dev not in links
        ]
        if wrong:
            return "clusterdev configuration changed: " + ", ".join(wrong)
        try:
            return self._guard.check()
        except RuntimeError as e:  # nftables.DataPlaneError
            return f"cannot read the input guard: {e}"

    def status(self) -> dict[str, object]:
        """The nftables backend's fields (backend, installed, owned, counters
        under the same names) plus what only the module knows."""
        result: dict[str, object] = {"backend": self.name, "installed": self._installed}
        if not self._installed:
            return result
        with self._lock:
            chan = self._chan()
            cfg = chan.get_config()
            stats = chan.get_stats()
        guard = self._guard.counters()
        result.update(
            {
                "owned": sorted(cfg.owned),  # as the kernel has it, read back
                "counters": {
                    "accepted_new": sum(stats.conns),
                    "not_owned": stats.drop_not_owned,
                    "invalid": stats.drop_invalid,
                    "not_owned_established": stats.drop_not_owned_established,
                    "no_listener": guard.get("no_listener", 0),  # the input guard's
                    **self._early_counters(cfg, stats),
                },
                "buckets": cfg.buckets,
                "seed": cfg.seed,
                "hash_fields": cfg.hash_fields,
                "mark_mask": cfg.mark_mask,
                "packets": sum(stats.packets),
                "packets_per_bucket": list(stats.packets),
                "connections_per_bucket": list(stats.conns),
            }
        )
        return result

    @staticmethod
    def _early_counters(cfg: genl.Config, stats: genl.Stats) -> dict[str, int]:
        """The nftables backend's early chain counter names, when it is on."""
        if not cfg.early_drop:
            return {}
        return {
            "early_not_owned": stats.early_not_owned,
            "early_slow_path": stats.early_slow_path,
            "early_undecided": stats.early_undecided,
        }


def mark_bucket(mark: int, mark_mask: int) -> int | None:
    """The bucket a conntrack mark records (bucket + 1 under the mask), or None."""
    if not mark_mask:
        return None
    shift = (mark_mask & -mark_mask).bit_length() - 1
    value = (mark & mark_mask) >> shift
    return value - 1 if value else None
