"""Zone heartbeat sockets on the real kernel: a customer-facing link hands
the agent only datagrams multicast to the zone group with TTL 255 (sent on
the link itself); unicast to the node's port and datagrams that crossed a
router (TTL below 255) are counted and dropped before any decryption.

Then the same link with the agent's nftables table installed: forged
datagrams to the zone port are dropped by the kernel and counted before any
socket sees them.

Two namespaces this test creates, joined by one veth pair (198.18.0.0/15).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fwcluster_lab.nslab import inside

from availability_manager.daemon.transport import ZONE_HEARTBEAT_GROUP
from availability_manager.dataplane.base import DataPlaneConfig, Zone
from availability_manager.dataplane.nftables import NftablesDataPlane, read_counters
from availability_manager.types import ClusterSettings

pytestmark = pytest.mark.lab

NODE_NS, PEER_NS = "fwzf-node", "fwzf-peer"
NODE_IP, PEER_IP = "198.18.77.1", "198.18.77.2"
PORT = 7411  # the zone port (sync port + 1)
AGENT = Path(__file__).resolve().parents[2]

RECEIVER = """
import ipaddress, json, select, sys, time
from availability_manager.daemon.transport import SyncSocket, ZONE_HEARTBEAT_GROUP
s = SyncSocket("zf0", ipaddress.IPv4Address("0.0.0.0"), %(port)d, "multicast",
               group=ZONE_HEARTBEAT_GROUP, link_only=True)
print("ready", flush=True)
got, deadline = [], time.monotonic() + 10
while time.monotonic() < deadline and len(got) + sum(s.filtered.values()) < 4:
    select.select([s.fileno()], [], [], 0.2)
    got += [d.decode() for d in s.receive_all()]
print(json.dumps({"accepted": got, "filtered": s.filtered}), flush=True)
"""

SENDER = """
import socket, struct
from availability_manager.daemon.transport import ZONE_HEARTBEAT_GROUP
group = str(ZONE_HEARTBEAT_GROUP)
def send(payload, dest, ttl):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, 25, b"zf1")
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
    s.sendto(payload, (dest, %(port)d))
    s.close()
send(b"unicast", "%(node)s", 255)      # to the node's own address
send(b"routed", group, 64)             # to the group, but it crossed routers
send(b"ttl1", group, 1)                # an old agent's (or a forwarded) copy
send(b"heartbeat", group, 255)         # a neighbour on the link
"""


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=20)


@pytest.fixture
def link() -> Iterator[None]:
    for ns in (NODE_NS, PEER_NS):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    sh("ip", "netns", "add", NODE_NS)
    sh("ip", "netns", "add", PEER_NS)
    try:
        sh(
            "ip",
            "-n",
            NODE_NS,
            "link",
            "add",
            "zf0",
            "type",
            "veth",
            "peer",
            "zf1",
            "netns",
            PEER_NS,
        )
        for ns, dev, addr in ((NODE_NS, "zf0", NODE_IP), (PEER_NS, "zf1", PEER_IP)):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield
    finally:
        for ns in (NODE_NS, PEER_NS):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def receive_while_sending(receiver: str, sender: str) -> Any:
    """Runs `receiver` (Python source) in the node's namespace until it says
    "ready", then `sender` in the peer's; returns the JSON of the receiver's
    last line."""
    listener = subprocess.Popen(
        ["ip", "netns", "exec", NODE_NS, sys.executable, "-c", receiver],
        stdout=subprocess.PIPE,
        text=True,
        cwd=AGENT,
    )
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "ready"
        subprocess.run(
            ["ip", "netns", "exec", PEER_NS, sys.executable, "-c", sender],
            check=True,
            timeout=20,
            cwd=AGENT,
        )
        out, _ = listener.communicate(timeout=20)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
    return json.loads(out.strip().splitlines()[-1])


def test_zone_socket_takes_only_link_local_group_datagrams(link: None) -> None:
    result = receive_while_sending(
        RECEIVER % {"port": PORT}, SENDER % {"port": PORT, "node": NODE_IP}
    )
    assert result["accepted"] == ["heartbeat"]
    assert result["filtered"] == {"not-to-group": 1, "ttl-not-255": 2}


# --- the nftables side: the agent's table drops forged zone heartbeats --------------

FOREIGN_IP = "203.0.113.9"  # an address outside the zone's subnet, on the peer's link
NODE_IP6, PEER_IP6 = "2001:db8:77::1", "2001:db8:77::2"

LISTENER = """
import json, select, socket, struct, sys, time
group = "%(group)s"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", %(port)d))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             socket.inet_aton(group) + socket.inet_aton("%(node)s"))
print("ready", flush=True)
got, quiet_until = [], time.monotonic() + 3.0
while time.monotonic() < quiet_until:
    if select.select([s], [], [], 0.1)[0]:
        got.append(s.recv(64).decode())
        quiet_until = min(quiet_until, time.monotonic() + 1.0)
print(json.dumps(sorted(got)), flush=True)
"""

FORGER = """
import socket
group, port = "%(group)s", %(port)d
def send(payload, dest, ttl, src="%(peer)s"):
    fam = socket.AF_INET6 if ":" in dest else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, 25, b"zf1")
    if fam == socket.AF_INET:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        s.bind((src, 0))
    s.sendto(payload, (dest, port))
    s.close()
send(b"good", group, 255)                         # a neighbour's heartbeat
send(b"routed", group, 64)                        # crossed a router
send(b"unicast", "%(node)s", 255)                 # not to the group
send(b"foreign", group, 255, src="%(foreign)s")   # from outside the zone's subnet
send(b"v6", "%(node6)s", 255)                     # IPv6: zone heartbeats are IPv4 only
"""


def _zone_dataplane(port: int) -> NftablesDataPlane:
    ip = ipaddress.ip_interface
    return NftablesDataPlane(
        DataPlaneConfig(
            node_id=1,
            settings=ClusterSettings(),
            zones=(
                Zone("inside", "zf0", (ip("198.18.77.100/24"),), "03:fc:00:00:00:01"),
                Zone("outside", "zf9", (ip("198.18.78.100/24"),), "03:fc:00:00:00:02"),
            ),
            zone_heartbeat_port=port,
        )
    )


def _forge_and_listen() -> list[str]:
    """What a listener on the node's zone port receives of the forger's five."""
    args = {
        "group": str(ZONE_HEARTBEAT_GROUP), "port": PORT, "node": NODE_IP, "peer": PEER_IP,
        "foreign": FOREIGN_IP, "node6": NODE_IP6,
    }  # fmt: skip
    return list(receive_while_sending(LISTENER % args, FORGER % args))


def test_the_agents_table_drops_forged_zone_heartbeats_before_the_socket(link: None) -> None:
    """Issue 18: on the zone port of a customer-facing interface the kernel
    keeps only IPv4 to the heartbeat group with TTL 255 from the zone's own
    subnet; the rest is dropped by the agent's nftables table and counted
    (zone_heartbeat_refused), so a forged datagram never wakes the agent."""
    # the second zone's interface: a veth pair inside the node (no dummy module here)
    sh("ip", "-n", NODE_NS, "link", "add", "zf9", "type", "veth", "peer", "zf8")
    sh("ip", "-n", NODE_NS, "link", "set", "zf9", "up")
    sh("ip", "-n", NODE_NS, "addr", "add", f"{NODE_IP6}/64", "dev", "zf0", "nodad")
    sh("ip", "-n", PEER_NS, "addr", "add", f"{PEER_IP6}/64", "dev", "zf1", "nodad")
    sh("ip", "-n", PEER_NS, "addr", "add", f"{FOREIGN_IP}/32", "dev", "zf1")
    # the node answers the foreign source back over the link (no rp_filter drop)
    sh("ip", "-n", NODE_NS, "route", "add", f"{FOREIGN_IP}/32", "dev", "zf0")
    # The premise: without the table every IPv4 forgery reaches the socket.
    assert _forge_and_listen() == ["foreign", "good", "routed", "unicast"]
    dp = _zone_dataplane(PORT)
    with inside(NODE_NS):
        dp.install()
    try:
        assert _forge_and_listen() == ["good"]
        with inside(NODE_NS):
            assert read_counters()["zone_heartbeat_refused"] == 4  # routed, unicast, foreign, v6
    finally:
        with inside(NODE_NS):
            dp.uninstall()
