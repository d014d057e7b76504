"""The next-hop echo socket on the real kernel: it sends from the node's own
address (never the shared cluster address the interface also carries), over
IPv4 and IPv6, hears the next hop's replies, and hears nothing once the next
hop's address is gone.

Two namespaces this test creates, joined by one veth pair (198.18.0.0/15 and
the IPv6 documentation prefix).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

NODE_NS, HOP_NS = "fwip-node", "fwip-hop"
AGENT = Path(__file__).resolve().parents[2]
NODE4, SHARED4, HOP4 = "198.18.78.1", "198.18.78.9", "198.18.78.2"
NODE6, SHARED6, HOP6 = "2001:db8:78::1", "2001:db8:78::9", "2001:db8:78::2"

PROBE = """
import ipaddress, json, select, socket, sys, time
from availability_manager.daemon.icmp_probe import EchoSocket
out = {}
for fam, shared, target in ((socket.AF_INET, "%(s4)s", "%(h4)s"),
                            (socket.AF_INET6, "%(s6)s", "%(h6)s")):
    es = EchoSocket("ip0", fam, [ipaddress.ip_address(shared)])
    err = es.ensure_open()
    # one echo every 100 ms for %(wait)s s: right after the link came up, IPv6
    # neighbour discovery takes about a second (its link-local address is
    # still tentative)
    replies, deadline = [], time.monotonic() + %(wait)s
    while not err and not replies and time.monotonic() < deadline:
        err = es.send(ipaddress.ip_address(target), 7)
        select.select([es.fileno()], [], [], 0.1)
        replies += [[str(a), seq] for a, seq in es.replies()]
    out[str(fam.value)] = {"bound": str(es.bound_address), "error": err, "replies": replies}
    es.close()
print(json.dumps(out))
"""


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=20)


@pytest.fixture
def link() -> Iterator[None]:
    for ns in (NODE_NS, HOP_NS):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    sh("ip", "netns", "add", NODE_NS)
    sh("ip", "netns", "add", HOP_NS)
    try:
        sh("ip", "-n", NODE_NS, "link", "add", "ip0", "type", "veth", "peer", "ip1",
           "netns", HOP_NS)  # fmt: skip
        # the node's own address first (primary), then the shared one, as the lab does
        for ns, dev, addrs in (
            (NODE_NS, "ip0", (f"{NODE4}/24", f"{SHARED4}/24", f"{NODE6}/64", f"{SHARED6}/64")),
            (HOP_NS, "ip1", (f"{HOP4}/24", f"{HOP6}/64")),
        ):
            for addr in addrs:
                extra = ["nodad"] if ":" in addr else []
                sh("ip", "-n", ns, "addr", "add", addr, "dev", dev, *extra)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield
    finally:
        for ns in (NODE_NS, HOP_NS):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def probe(wait: float) -> dict[str, dict[str, object]]:
    script = PROBE % {"s4": SHARED4, "h4": HOP4, "s6": SHARED6, "h6": HOP6, "wait": wait}
    out = subprocess.run(
        ["ip", "netns", "exec", NODE_NS, sys.executable, "-c", script],
        capture_output=True, text=True, timeout=30, check=True,
        env={"PYTHONPATH": str(AGENT)},
    )  # fmt: skip
    result: dict[str, dict[str, object]] = json.loads(out.stdout)
    return result


def test_echo_from_the_own_address_is_answered_and_a_gone_next_hop_is_not(link: None) -> None:
    got = probe(wait=3.0)
    v4, v6 = got["2"], got["10"]
    for got_one, own, hop in ((v4, NODE4, HOP4), (v6, NODE6, HOP6)):
        assert (got_one["bound"], got_one["error"]) == (own, None), got_one
        # echoes queued while the neighbour was resolved are answered together
        assert {tuple(r) for r in got_one["replies"]} == {(hop, 7)}, got_one  # type: ignore[attr-defined]
    sh("ip", "-n", HOP_NS, "addr", "del", f"{HOP4}/24", "dev", "ip1")
    sh("ip", "-n", HOP_NS, "addr", "del", f"{HOP6}/64", "dev", "ip1")
    got = probe(wait=0.5)
    assert got["2"]["replies"] == [] and got["10"]["replies"] == [], got
