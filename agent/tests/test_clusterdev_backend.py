"""ClusterdevDataPlane (dataplane/clusterdev.py) with a fake command runner and
a fake netlink channel: the commands and messages it issues, in order. The
kernel side is tested in a guest by kmod/run-tests.sh."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Sequence

import pytest

from availability_manager.dataplane import clusterdev_genl as genl
from availability_manager.dataplane.base import DataPlaneConfig, Zone
from availability_manager.dataplane.clusterdev import ClusterdevDataPlane, device_name, mark_bucket
from availability_manager.dataplane.early_drop import EarlyDrop, parse_slow_path
from availability_manager.types import ClusterSettings


class FakeChannel:
    def __init__(self, log: list[object]) -> None:
        self.log = log
        self.closed = False
        self.config = genl.Config(256, 0, "addresses+ports", 0xFFFF, frozenset())

    def set_config(self, **kwargs: object) -> None:
        self.log.append(("genl", kwargs))
        given = {k: v for k, v in kwargs.items() if v is not None}
        self.config = dataclasses.replace(self.config, **given)  # type: ignore[arg-type]

    def get_config(self) -> genl.Config:
        return self.config

    def get_stats(self) -> genl.Stats:
        return genl.Stats((3, 4) + (0,) * 254, (1, 1) + (0,) * 254, 7, 2, 5, 40, 6, 9)

    def close(self) -> None:
        self.closed = True


class FakeGuard:
    """input_guard.InputGuard's interface, recording into the shared log."""

    def __init__(self, log: list[object], config: DataPlaneConfig) -> None:
        self.log = log
        self.config = config
        self.installed = False
        self.fail_uninstall = False

    def install(self) -> None:
        self.log.append(("guard", "install"))
        self.installed = True

    def uninstall(self) -> None:
        self.log.append(("guard", "uninstall"))
        if self.fail_uninstall:
            raise RuntimeError("nft -f - failed (exit 1): no such table")
        self.installed = False

    def counters(self) -> dict[str, int]:
        return {"no_listener": 11} if self.installed else {}

    def check(self) -> str | None:
        return None if self.installed else "the input guard's table inet fwcluster changed"


class FakeRunner:
    def __init__(self, log: list[object]) -> None:
        self.log = log
        self.links: set[str] = set()
        self.sysctls = {
            "net.ipv4.ip_forward": "0",
            "net.netfilter.nf_conntrack_tcp_loose": "1",
            "net.ipv6.conf.all.forwarding": "0",
        }

    def __call__(self, argv: Sequence[str]) -> str:
        argv = list(argv)
        self.log.append(tuple(argv))
        if argv[:3] == ["ip", "-o", "link"]:
            return "".join(f"{i}: {n}@eth0: <UP> mtu 1500\n" for i, n in enumerate(self.links))
        if argv[:3] == ["ip", "link", "add"]:
            self.links.add(argv[3])
        if argv[:3] == ["ip", "link", "del"]:
            self.links.discard(argv[3])
        if argv[:2] == ["sysctl", "-n"]:
            return self.sysctls[argv[2]] + "\n"
        if argv[:3] == ["sysctl", "-q", "-w"]:
            key, value = argv[3].split("=", 1)
            self.sysctls[key] = value
        return ""


ZONES = (
    Zone("inside", "eth0", (ipaddress.IPv4Interface("192.0.2.1/24"),), "01:00:5E:00:00:C1"),
    Zone("outside", "eth1", (ipaddress.IPv4Interface("198.51.100.1/24"),), "01:00:5e:00:00:c2"),
)


NO_EARLY_DROP = EarlyDrop()


def make(
    buckets: int = 256,
    loaded: bool = True,
    zones: tuple[Zone, ...] = ZONES,
    early_drop: EarlyDrop = NO_EARLY_DROP,
) -> tuple[ClusterdevDataPlane, FakeRunner, list[FakeChannel], list[object]]:
    log: list[object] = []
    runner = FakeRunner(log)
    channels: list[FakeChannel] = []

    def factory() -> FakeChannel:
        # Like GenlChannel: the family resolves once the module is loaded.
        if not loaded and ("modprobe", "clusterdev") not in log:
            raise genl.GenlError("no_family", "clusterdev module not loaded")
        channels.append(FakeChannel(log))
        return channels[-1]

    cfg = DataPlaneConfig(
        node_id=1,
        settings=ClusterSettings(buckets=buckets, hash_seed=0x1234, backend="clusterdev"),
        zones=zones,
        mark_mask=0xFFFF0000,
        early_drop=early_drop,
    )
    guards: list[FakeGuard] = []

    def guard_factory(config: DataPlaneConfig) -> FakeGuard:
        guards.append(FakeGuard(log, config))
        return guards[-1]

    backend = ClusterdevDataPlane(cfg, runner, factory, guard_factory)  # type: ignore[arg-type]
    backend.guards = guards  # type: ignore[attr-defined]  # for the guard tests
    return backend, runner, channels, log


def test_install_owns_nothing_before_links_come_up() -> None:
    backend, runner, _, log = make()
    backend.install()
    genl_at = next(i for i, e in enumerate(log) if isinstance(e, tuple) and e[0] == "genl")
    first_link = next(i for i, e in enumerate(log) if e[:3] == ("ip", "link", "add"))
    assert genl_at < first_link
    kwargs = log[genl_at][1]  # type: ignore[index]
    assert kwargs == {
        "buckets": 256, "seed": 0x1234, "hash_fields": "addresses+ports",
        "mark_mask": 0xFFFF0000, "owned": frozenset(), "early_drop": False, "slow_path": (),
    }  # fmt: skip
    assert ("modprobe", "clusterdev") not in log  # the family answered: loaded already
    assert (
        "ip", "link", "add", device_name(0, ZONES[0]), "link", "eth0", "address",
        "01:00:5e:00:00:c1", "type", "clusterdev",
    ) in log  # fmt: skip
    assert ("ip", "addr", "replace", "192.0.2.1/24", "dev", device_name(0, ZONES[0])) in log
    assert runner.sysctls["net.ipv4.ip_forward"] == "1"
    assert runner.sysctls["net.netfilter.nf_conntrack_tcp_loose"] == "0"
    assert runner.sysctls["net.ipv6.conf.all.forwarding"] == "0"  # no IPv6 cluster IP
    assert not any("nodad" in e for e in log if isinstance(e, tuple))


def test_ipv6_cluster_ips_without_dad_on_a_link_with_ipv6_on() -> None:
    v6 = ipaddress.IPv6Interface("2001:db8:c::1/64")
    zone = Zone(
        "outside", "eth1", (ipaddress.IPv4Interface("192.0.2.1/24"), v6), ZONES[0].cluster_mac
    )
    backend, runner, _, log = make(zones=(zone,))
    backend.install()
    dev = device_name(0, zone)
    enable = ("sysctl", "-q", "-w", f"net.ipv6.conf.{dev}.disable_ipv6=0")
    add = ("ip", "addr", "replace", str(v6), "dev", dev, "nodad")
    # The link first, without a link-local address, then IPv6 on, then the address.
    assert log.index(("ip", "link", "set", dev, "addrgenmode", "none")) < log.index(enable)
    assert log.index(enable) < log.index(add)
    assert ("ip", "addr", "replace", "192.0.2.1/24", "dev", dev) in log  # IPv4: no nodad
    assert runner.sysctls["net.ipv6.conf.all.forwarding"] == "1"
    backend.uninstall()
    assert runner.sysctls["net.ipv6.conf.all.forwarding"] == "0"


def test_install_loads_the_module_only_when_its_family_is_missing() -> None:
    backend, _, channels, log = make(loaded=False)
    backend.install()
    assert log.count(("modprobe", "clusterdev")) == 1
    first_genl = next(i for i, e in enumerate(log) if isinstance(e, tuple) and e[0] == "genl")
    assert log.index(("modprobe", "clusterdev")) < first_genl
    assert len(channels) == 1


def test_install_twice_adds_links_once() -> None:
    backend, _, _, log = make()
    backend.install()
    backend.install()
    adds = [e for e in log if e[:3] == ("ip", "link", "add")]
    assert len(adds) == len(ZONES)


def test_set_owned_buckets_is_one_message_with_the_whole_set() -> None:
    backend, _, channels, log = make()
    backend.install()
    log.clear()
    backend.set_owned_buckets(frozenset({0, 5, 255}))
    assert log == [("genl", {"buckets": 256, "owned": frozenset({0, 5, 255})})]
    assert backend.status()["owned"] == [0, 5, 255]
    assert len(channels) == 1  # one socket, reused


def test_set_owned_buckets_refuses_out_of_range_before_the_kernel() -> None:
    backend, _, _, log = make(buckets=16)
    backend.install()
    log.clear()
    with pytest.raises(ValueError):
        backend.set_owned_buckets(frozenset({16}))
    assert log == []


def test_uninstall_removes_links_and_restores_sysctls() -> None:
    backend, runner, channels, _ = make()
    backend.install()
    backend.set_owned_buckets(frozenset({1}))
    backend.uninstall()
    assert runner.links == set()
    assert runner.sysctls == {
        "net.ipv4.ip_forward": "0",
        "net.netfilter.nf_conntrack_tcp_loose": "1",
        "net.ipv6.conf.all.forwarding": "0",
    }
    assert channels[0].closed
    assert channels[0].config.owned == frozenset()


def test_status_has_the_nftables_backends_fields() -> None:
    # clusterctl status --json reads the same keys whichever backend runs.
    backend, _, _, _ = make()
    assert backend.status() == {"backend": "clusterdev", "installed": False}
    backend.install()
    backend.set_owned_buckets(frozenset({1, 2}))
    status = backend.status()
    assert status["backend"] == "clusterdev" and status["installed"] is True
    assert status["owned"] == [1, 2]
    assert status["counters"] == {
        "accepted_new": 2, "not_owned": 7, "invalid": 2, "not_owned_established": 5,
        "no_listener": 11,
    }  # fmt: skip
    assert status["packets"] == 7
    backend.uninstall()
    assert backend.status()["installed"] is False


def test_early_drop_goes_to_the_module_with_its_slow_path_and_counters() -> None:
    """The nftables backend's switch and slow path, for the receive handler."""
    slow = parse_slow_path([{"network": "203.0.113.100", "protocol": "tcp", "ports": 8080}])
    backend, _, channels, log = make(early_drop=EarlyDrop(True, slow))
    backend.install()
    first = next(e for e in log if isinstance(e, tuple) and e[0] == "genl")
    assert first[1]["early_drop"] is True and first[1]["slow_path"] == slow  # type: ignore[index]
    channels[0].config = dataclasses.replace(channels[0].config, early_drop=True)
    counters = backend.status()["counters"]
    assert isinstance(counters, dict)
    assert (counters["early_not_owned"], counters["early_slow_path"]) == (40, 6)
    assert counters["early_undecided"] == 9


def test_a_module_without_early_drop_still_installs_with_it_off() -> None:
    backend, _, channels, log = make()
    refusals = []

    def old_module(**kwargs: object) -> None:
        if "early_drop" in kwargs:
            refusals.append(kwargs)
            raise genl.KernelError(22)  # EINVAL: attribute beyond its policy
        log.append(("genl", kwargs))

    backend._chan()  # the channel exists; give it the old module's behaviour
    channels[0].set_config = old_module  # type: ignore[method-assign]
    backend.install()
    assert len(refusals) == 1
    sent = [e for e in log if isinstance(e, tuple) and e[0] == "genl"]
    assert "early_drop" not in sent[0][1] and sent[0][1]["owned"] == frozenset()  # type: ignore[index,operator]


def test_a_module_without_early_drop_is_an_error_with_it_on() -> None:
    backend, _, channels, _ = make(early_drop=EarlyDrop(True))

    def old_module(**kwargs: object) -> None:
        if "early_drop" in kwargs:
            raise genl.KernelError(22)

    backend._chan()
    channels[0].set_config = old_module  # type: ignore[method-assign]
    with pytest.raises(genl.KernelError):
        backend.install()


def test_the_input_guard_comes_before_the_links_and_goes_after_them() -> None:
    """Replies to source-NATed connections must never be answered: the guard
    (the nftables backend's no_listener rule) is in place before the first
    clusterdev link exists, built from the backend's configuration."""
    backend, _, _, log = make()
    [guard] = backend.guards  # type: ignore[attr-defined]
    assert guard.config.mark_mask == 0xFFFF0000
    backend.install()
    guard_at = log.index(("guard", "install"))
    first_link = next(i for i, e in enumerate(log) if e[:3] == ("ip", "link", "add"))
    assert guard_at < first_link
    backend.uninstall()
    last_del = max(i for i, e in enumerate(log) if e[:3] == ("ip", "link", "del"))
    assert log.index(("guard", "uninstall")) > last_del
    assert not guard.installed


def test_uninstall_finishes_when_the_guard_cannot_be_removed() -> None:
    backend, runner, channels, log = make()
    backend.install()
    backend.guards[0].fail_uninstall = True  # type: ignore[attr-defined]
    backend.uninstall()  # logs a warning, restores the rest
    assert ("guard", "uninstall") in log
    assert runner.links == set() and channels[0].closed
    assert runner.sysctls["net.ipv4.ip_forward"] == "0"


def test_device_names_fit_ifnamsiz() -> None:
    zone = Zone(
        "a_very_long_zon", "eth0", (ipaddress.IPv4Interface("192.0.2.1/24"),), "01:00:5e:00:00:01"
    )
    assert len(device_name(12, zone)) <= 15


@pytest.mark.parametrize(
    ("mark", "mask", "bucket"),
    [(0x0001, 0xFFFF, 0), (0x00FF, 0xFFFF, 254), (0x0000, 0xFFFF, None),
     (0xABCD0003, 0xFFFF0000, 0xABCC), (0x1234, 0xFFFF0000, None), (7, 0, None)],
)  # fmt: skip
def test_mark_bucket(mark: int, mask: int, bucket: int | None) -> None:
    assert mark_bucket(mark, mask) == bucket


def test_check_names_what_the_kernel_lost_and_install_puts_it_back() -> None:
    backend, runner, channels, _ = make()
    backend.install()
    backend.set_owned_buckets(frozenset({1, 2}))
    assert backend.check() is None
    # the module reloaded by hand (owning nothing), a link deleted
    channels[-1].config = dataclasses.replace(channels[-1].config, owned=frozenset())
    runner.links.discard(device_name(1, ZONES[1]))
    assert backend.check() == (
        f"clusterdev configuration changed: owned, link {device_name(1, ZONES[1])} missing"
    )
    backend.install()
    backend.set_owned_buckets(frozenset({1, 2}))
    assert backend.check() is None
    backend.guards[0].installed = False  # type: ignore[attr-defined]  # its table flushed
    assert backend.check() == "the input guard's table inet fwcluster changed"
