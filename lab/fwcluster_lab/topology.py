"""Names and addresses of a lab, computed from a few counts: no I/O here.

The lab is a switch namespace holding three Linux bridges (outside, inside,
sync), N firewall nodes each with one veth on every bridge, clients on the
outside bridge and servers on the inside bridge. Everything a lab creates is
named with its prefix (default ``fwl-``), so `down` can find it again after a
crash. Addresses come from the documentation prefixes only.

Two options add to the IPv4-only lab: `ipv6` makes the zones dual-stack
(2001:db8:0:1::/64 outside, 2001:db8:0:2::/64 inside; host numbers read like
their IPv4 ones: 192.0.2.11 is 2001:db8:0:1::11), and `nat` gives the outside
zone a second cluster address, in a subnet where it is the nodes' only
address, so masquerade picks the cluster address (see nat_policy.py).
`sync6` runs the sync network over IPv6 (2001:db8:0:3::/64, group
SYNC_GROUP6); the node ids stay the IPv4 sync addresses.
"""

from __future__ import annotations

import dataclasses
import ipaddress

DEFAULT_PREFIX = "fwl-"
MAX_NODES = 16
MAX_HOSTS = 16  # clients or servers

OUTSIDE_NET = ipaddress.IPv4Network("192.0.2.0/24")
INSIDE_NET = ipaddress.IPv4Network("203.0.113.0/24")
SYNC_NET = ipaddress.IPv4Network("198.51.100.0/24")
OUTSIDE_NET6 = ipaddress.IPv6Network("2001:db8:0:1::/64")
INSIDE_NET6 = ipaddress.IPv6Network("2001:db8:0:2::/64")
# Outside subnet of the masquerade tests: the cluster address is the only
# address the nodes have in it, so masquerade (which takes the interface's
# address in the next hop's subnet) translates to the cluster address.
MASQ_NET = ipaddress.IPv4Network("198.18.0.0/24")
SYNC_NET6 = ipaddress.IPv6Network("2001:db8:0:3::/64")
SYNC_GROUP6 = "ff02::77:1"  # link-local scope: the agent gives the interface as scope id
NODE_HOST_BASE = 10  # fw1 is .11
CLIENT_HOST_BASE = 99  # first client/server is .100

# Cluster MACs: IPv4-multicast-mapped MACs (01:00:5e, bit 25 clear), so the
# bridges flood them to every port and every node receives every frame.
OUTSIDE_MAC = "01:00:5e:7f:00:01"
INSIDE_MAC = "01:00:5e:7f:00:02"

SYNC_GROUP = "239.255.77.1"
SYNC_PORT = 7788


@dataclasses.dataclass(frozen=True)
class Zone:
    """A firewall side: the bridge it lives on and the addresses the cluster shares there."""

    name: str  # outside / inside (the agent config's zone name)
    bridge: str  # bridge name in the switch namespace
    node_ifname: str  # the interface name inside every node namespace
    cluster_ip: ipaddress.IPv4Interface
    cluster_mac: str
    more_cluster_ips: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...] = ()

    @property
    def cluster_ips(self) -> tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]:
        return (self.cluster_ip, *self.more_cluster_ips)

    @property
    def cluster_ip6(self) -> ipaddress.IPv6Interface | None:
        return next(
            (a for a in self.more_cluster_ips if isinstance(a, ipaddress.IPv6Interface)), None
        )


@dataclasses.dataclass(frozen=True)
class Link:
    """One veth pair: `ifname` in the host's namespace, `sw_ifname` a port of `bridge`."""

    ifname: str
    bridge: str
    sw_ifname: str
    address: ipaddress.IPv4Interface  # the primary: added first
    more_addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...] = ()

    @property
    def address6(self) -> ipaddress.IPv6Interface | None:
        return next(
            (a for a in self.more_addresses if isinstance(a, ipaddress.IPv6Interface)), None
        )


@dataclasses.dataclass(frozen=True)
class Host:
    name: str  # fw1, client, server, ...
    ns: str  # namespace name, prefix + name
    role: str  # node / client / server
    links: tuple[Link, ...]
    routes: tuple[tuple[str, str], ...]  # (destination, via): no default route ever

    @property
    def address6(self) -> ipaddress.IPv6Address | None:
        """The host's IPv6 address on its first link (clients, servers), if any."""
        a = self.links[0].address6
        return a.ip if a is not None else None

    def link(self, bridge: str) -> Link:
        for link in self.links:
            if link.bridge == bridge:
                return link
        raise KeyError(f"{self.name} has no link on {bridge}")


@dataclasses.dataclass(frozen=True)
class Topology:
    prefix: str
    switch_ns: str
    zones: tuple[Zone, ...]  # outside first: the agent orients its hash by this order
    nodes: tuple[Host, ...]
    clients: tuple[Host, ...]
    servers: tuple[Host, ...]
    ipv6: bool = False
    nat: bool = False
    sync6: bool = False

    @property
    def hosts(self) -> tuple[Host, ...]:
        return self.nodes + self.clients + self.servers

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (self.switch_ns, *(h.ns for h in self.hosts))

    @property
    def bridges(self) -> tuple[str, ...]:
        return ("outside", "inside", "sync")

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name or h.ns == name:
                return h
        raise KeyError(f"no host named {name!r} (known: {', '.join(h.name for h in self.hosts)})")

    def node(self, name: str) -> Host:
        h = self.host(name)
        if h.role != "node":
            raise KeyError(f"{name!r} is a {h.role}, not a firewall node")
        return h


def _addr(net: ipaddress.IPv4Network, host: int) -> ipaddress.IPv4Interface:
    return ipaddress.IPv4Interface(f"{net.network_address + host}/{net.prefixlen}")


def _addr6(net: ipaddress.IPv6Network, host: int) -> ipaddress.IPv6Interface:
    # The decimal host number read as hex digits: .11 -> ::11, .100 -> ::100.
    return ipaddress.IPv6Interface(f"{net.network_address + int(str(host), 16)}/{net.prefixlen}")


def _host_names(base: str, count: int) -> list[str]:
    # The first is plain ("client"), as scripts and docs expect; more get a number.
    return [base if i == 1 else f"{base}{i}" for i in range(1, count + 1)]


def build_topology(
    nodes: int = 3,
    clients: int = 1,
    servers: int = 1,
    prefix: str = DEFAULT_PREFIX,
    ipv6: bool = False,
    nat: bool = False,
    sync6: bool = False,
) -> Topology:
    if not 1 <= nodes <= MAX_NODES:
        raise ValueError(f"nodes must be 1..{MAX_NODES}, got {nodes}")
    if not 1 <= clients <= MAX_HOSTS or not 1 <= servers <= MAX_HOSTS:
        raise ValueError(f"clients and servers must be 1..{MAX_HOSTS}")
    if not prefix or len(prefix) > 8 or "/" in prefix or not prefix.endswith("-"):
        raise ValueError(f"prefix must be 1..8 characters ending in '-', got {prefix!r}")

    def v6(net: ipaddress.IPv6Network, host: int) -> tuple[ipaddress.IPv6Interface, ...]:
        return (_addr6(net, host),) if ipv6 else ()

    masq: tuple[ipaddress.IPv4Interface, ...] = (_addr(MASQ_NET, 1),) if nat else ()
    zones = (
        Zone(
            "outside",
            "outside",
            "out0",
            _addr(OUTSIDE_NET, 1),
            OUTSIDE_MAC,
            (*v6(OUTSIDE_NET6, 1), *masq),
        ),
        Zone("inside", "inside", "in0", _addr(INSIDE_NET, 1), INSIDE_MAC, v6(INSIDE_NET6, 1)),
    )
    node_hosts = []
    for i in range(1, nodes + 1):
        name = f"fw{i}"
        host = NODE_HOST_BASE + i
        links = (
            Link(
                "out0", "outside", f"{name}-out", _addr(OUTSIDE_NET, host), v6(OUTSIDE_NET6, host)
            ),
            Link("in0", "inside", f"{name}-in", _addr(INSIDE_NET, host), v6(INSIDE_NET6, host)),
            Link(
                "sync0",
                "sync",
                f"{name}-sync",
                _addr(SYNC_NET, host),
                (_addr6(SYNC_NET6, host),) if sync6 else (),
            ),
        )
        node_hosts.append(Host(name, prefix + name, "node", links, ()))
    client_hosts = []
    for i, name in enumerate(_host_names("client", clients), start=1):
        host = CLIENT_HOST_BASE + i
        more = (*v6(OUTSIDE_NET6, host), *((_addr(MASQ_NET, host),) if nat else ()))
        link = Link("eth0", "outside", f"{name}-out", _addr(OUTSIDE_NET, host), more)
        routes = [(str(INSIDE_NET), str(zones[0].cluster_ip.ip))]
        if ipv6:
            routes.append((str(INSIDE_NET6), str(OUTSIDE_NET6.network_address + 1)))
        client_hosts.append(Host(name, prefix + name, "client", (link,), tuple(routes)))
    server_hosts = []
    for i, name in enumerate(_host_names("server", servers), start=1):
        host = CLIENT_HOST_BASE + i
        link = Link("eth0", "inside", f"{name}-in", _addr(INSIDE_NET, host), v6(INSIDE_NET6, host))
        routes = [(str(OUTSIDE_NET), str(zones[1].cluster_ip.ip))]
        if nat:
            routes.append((str(MASQ_NET), str(zones[1].cluster_ip.ip)))
        if ipv6:
            routes.append((str(OUTSIDE_NET6), str(INSIDE_NET6.network_address + 1)))
        server_hosts.append(Host(name, prefix + name, "server", (link,), tuple(routes)))
    return Topology(
        prefix=prefix,
        switch_ns=prefix + "sw",
        zones=zones,
        nodes=tuple(node_hosts),
        clients=tuple(client_hosts),
        servers=tuple(server_hosts),
        ipv6=ipv6,
        nat=nat,
        sync6=sync6,
    )
