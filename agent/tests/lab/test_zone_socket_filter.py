"""Zone heartbeat sockets on the real kernel: a customer-facing link hands
the agent only datagrams multicast to the zone group with TTL 255 (sent on
the link itself); unicast to the node's port and datagrams that crossed a
router (TTL below 255) are counted and dropped before any decryption.

Two namespaces this test creates, joined by one veth pair (198.18.0.0/15).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

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


def test_zone_socket_takes_only_link_local_group_datagrams(link: None) -> None:
    env_py = [sys.executable, "-c"]
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", NODE_NS, *env_py, RECEIVER % {"port": PORT}],
        stdout=subprocess.PIPE,
        text=True,
        cwd=AGENT,
    )
    try:
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "ready"
        subprocess.run(
            ["ip", "netns", "exec", PEER_NS, *env_py, SENDER % {"port": PORT, "node": NODE_IP}],
            check=True,
            timeout=20,
            cwd=AGENT,
        )
        out, _ = receiver.communicate(timeout=20)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    result = json.loads(out.strip().splitlines()[-1])
    assert result["accepted"] == ["heartbeat"]
    assert result["filtered"] == {"not-to-group": 1, "ttl-not-255": 2}
