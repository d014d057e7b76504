"""clusterdev's early drop (clusterdev_early.c), one guest test per packet class.

Run by guest_tests.py on its lab after failover (fw2's links are down): fw1
owns every bucket and forwards, fw3 owns none and must pay as little as
possible for what it sees. A witness chain at prerouting -250 on both nodes
(after the receive handler and defragmentation at -400, before conntrack at
-200) counts the test's packets that reached the IP stack, i.e. would reach
conntrack: for every class the early decision drops it must stay at 0 on fw3,
for every class it must leave alone it must count them. The module's own
counters (early_not_owned, early_slow_path, early_undecided) must agree, and
the server must receive each datagram exactly once (the owner still
forwards, the non-owner never does).

  early_new        new UDP flows, TCP connections and pings (IPv4), first with
                   early_drop off (the witness sees them: it can fail), then on
  early_known      a UDP flow fw3 holds in conntrack but no longer owns
  early_ipv6       new UDP flows over IPv6
  early_fragments  4000-byte UDP datagrams (fragments: passed on, reassembled,
                   decided after conntrack)
  early_local      datagrams to a cluster IP (a local address: passed on)
  early_slow_path  a slow_path entry's traffic passes; the next port is dropped
  early_other      ICMP errors and a protocol without ports (passed on)
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import select
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

from availability_manager.dataplane import clusterdev_genl as genl
from availability_manager.dataplane.early_drop import SlowPathEntry
from guest_tests import (  # type: ignore[import-not-found]
    BUCKETS,
    CLIENT6,
    CLIENT_GW,
    CLIENT_IP,
    SERVER6,
    SERVER_IP,
    channel,
    netns,
    nsrun,
)

OWNER, OTHER, DOWN = "fw1", "fw3", "fw2"  # fw2: links down since failover
EVERY = frozenset(range(BUCKETS))
NONE: frozenset[int] = frozenset()
SLOW_PORT = 7105
SLOW_PATH = (SlowPathEntry(ipaddress.ip_network(f"{SERVER_IP}/32"), "udp", (SLOW_PORT, SLOW_PORT)),)
WITNESS_PRIORITY = -250  # after nf_defrag (-400), before conntrack (-200)


def configure(node: str, *, early: bool, owned: frozenset[int]) -> None:
    chan = channel(node)
    try:
        chan.set_config(buckets=BUCKETS, owned=owned, early_drop=early, slow_path=SLOW_PATH)
    finally:
        chan.close()


def stats(node: str) -> genl.Stats:
    chan = channel(node)
    try:
        return chan.get_stats()
    finally:
        chan.close()


def watch(match: str) -> None:
    """Witness on both nodes: count packets from the cluster links matching `match`."""
    for node in (OWNER, OTHER):
        script = "\n".join(
            [
                "table inet cdwitness {}",
                "delete table inet cdwitness",
                "table inet cdwitness {",
                "  chain w {",
                f"    type filter hook prerouting priority {WITNESS_PRIORITY};",
                f'    iifname {{ "cdc", "cds" }} {match} counter',
                "  }",
                "}",
            ]
        )
        subprocess.run(["ip", "netns", "exec", node, "nft", "-f", "-"], input=script + "\n",
                       text=True, check=True, timeout=60, capture_output=True)  # fmt: skip


def witnessed(node: str) -> int:
    out = json.loads(nsrun(node, "nft", "-j", "list", "chain", "inet", "cdwitness", "w"))
    for item in out["nftables"]:
        rule = item.get("rule")
        if rule:
            for expr in rule["expr"]:
                if "counter" in expr:
                    packets: int = expr["counter"]["packets"]
                    return packets
    raise RuntimeError(f"no witness counter on {node}")


def unwatch() -> None:
    for node in (OWNER, OTHER):
        nsrun(node, "nft", "delete", "table", "inet", "cdwitness", check=False)


@contextlib.contextmanager
def receiver(family: int, address: str, port: int) -> Iterator[Callable[[], dict[bytes, int]]]:
    """A UDP socket on the server; the callable drains it: payload -> times seen."""
    with netns("srv"):
        rx = socket.socket(family, socket.SOCK_DGRAM)
    rx.bind((address, port))
    seen: dict[bytes, int] = {}

    def drain() -> dict[bytes, int]:
        while select.select([rx], [], [], 2.0)[0]:
            data = rx.recv(65536)
            seen[data] = seen.get(data, 0) + 1
        return seen

    try:
        yield drain
    finally:
        rx.close()


def send_udp(family: int, address: str, port: int, payloads: list[bytes], *,
             sport: int = 0) -> None:  # fmt: skip
    """Each payload from its own socket (a new flow each) unless `sport` pins one flow."""
    if sport:
        with netns("cli"):
            tx = socket.socket(family, socket.SOCK_DGRAM)
        tx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tx.bind(("", sport))
        with tx:
            for p in payloads:
                tx.sendto(p, (address, port))
        return
    for p in payloads:
        with netns("cli"):
            tx = socket.socket(family, socket.SOCK_DGRAM)
        with tx:
            tx.sendto(p, (address, port))


def exactly_once(seen: dict[bytes, int], payloads: list[bytes]) -> str | None:
    twice = sorted(p for p, n in seen.items() if n > 1)
    missing = [p for p in payloads if p not in seen]
    if twice:
        return f"{len(twice)} datagrams forwarded more than once (by two nodes): {twice[:3]}"
    if missing:
        return f"{len(missing)} of {len(payloads)} datagrams never arrived (owner did not forward)"
    return None


def datagrams(family: int, address: str, port: int, payloads: list[bytes]
              ) -> Callable[[], str | None]:  # fmt: skip
    """A sender for the classes: each payload as a new flow to the server,
    then whether each arrived exactly once."""

    def send() -> str | None:
        with receiver(family, address, port) as drain:
            send_udp(family, address, port, payloads)
            return exactly_once(drain(), payloads)

    return send


class EarlyDropTests:
    """The classes in turn; `restore` puts the lab's ownership back."""

    def __init__(self, owned: dict[str, frozenset[int]]) -> None:
        self.owned = owned

    def setup(self, early: bool = True) -> None:
        # Give before take: nobody forwards twice while the roles change.
        # fw2 too, in case failover did not run (--only).
        configure(DOWN, early=early, owned=NONE)
        configure(OTHER, early=early, owned=NONE)
        configure(OWNER, early=early, owned=EVERY)

    def restore(self) -> str | None:
        """The lab's ownership back, early_drop off, no witness."""
        unwatch()
        for node in (OWNER, OTHER, DOWN):
            chan = channel(node)
            try:
                chan.set_config(buckets=BUCKETS, owned=NONE, early_drop=False, slow_path=())
            finally:
                chan.close()
        for node in (OWNER, OTHER, DOWN):
            configure(node, early=False, owned=self.owned[node])
        return None

    def _expect(self, before: genl.Stats, after: genl.Stats, counter: str, at_least: int
                ) -> str | None:  # fmt: skip
        got = getattr(after, counter) - getattr(before, counter)
        if got < at_least:
            return f"{OTHER}: {counter} rose by {got}, expected at least {at_least}"
        return None

    def _dropped_early(self, n: int, send: Callable[[], str | None]) -> str | None:
        """`send` must put n packets of a decidable class through; none may
        reach fw3's IP stack, each counted early_not_owned."""
        before = stats(OTHER)
        problem = send()
        if problem:
            return problem
        seen_other, seen_owner = witnessed(OTHER), witnessed(OWNER)
        if seen_other:
            return f"{seen_other} foreign packets reached {OTHER}'s conntrack (witness at -250)"
        if not seen_owner:
            return f"the owner {OWNER} saw none of the packets (witness broken?)"
        problem = self._expect(before, stats(OTHER), "early_not_owned", n)
        if problem:
            return problem
        print(f"  {OTHER}: 0 of them reached conntrack, early_not_owned +{n} or more; "
              f"{OWNER} saw {seen_owner} and forwarded")  # fmt: skip
        return None

    def _passed_on(self, n: int, counter: str, send: Callable[[], str | None]) -> str | None:
        """`send` puts n packets of a class the early decision must leave alone."""
        before = stats(OTHER)
        problem = send()
        if problem:
            return problem
        seen_other = witnessed(OTHER)
        if seen_other < n:
            return f"only {seen_other} of {n} packets reached {OTHER}'s IP stack (dropped early?)"
        problem = self._expect(before, stats(OTHER), counter, n)
        if problem:
            return problem
        print(f"  {OTHER}: {seen_other} reached conntrack, {counter} +{n} or more")
        return None

    # -- the classes -------------------------------------------------------

    def t_new(self) -> str | None:
        count = 10
        watch(f"ip saddr {{ {CLIENT_IP}, {SERVER_IP} }} ip daddr {{ {CLIENT_IP}, {SERVER_IP} }}"
              " meta l4proto { udp, tcp, icmp }")  # fmt: skip
        # Control: with early_drop off the witness sees the foreign datagrams.
        self.setup(early=False)
        problem = datagrams(socket.AF_INET, SERVER_IP, 7101,
                            [f"control {i}".encode() for i in range(count)])()  # fmt: skip
        if problem:
            return problem
        if witnessed(OTHER) < count:
            return f"early_drop off: the witness on {OTHER} saw {witnessed(OTHER)} of {count}"
        print(f"  early_drop off: {witnessed(OTHER)} foreign packets reached {OTHER}'s conntrack")
        watch(f"ip saddr {{ {CLIENT_IP}, {SERVER_IP} }} ip daddr {{ {CLIENT_IP}, {SERVER_IP} }}"
              " meta l4proto { udp, tcp, icmp }")  # fmt: skip
        self.setup(early=True)

        def send() -> str | None:
            problem = datagrams(socket.AF_INET, SERVER_IP, 7101,
                                [f"new {i}".encode() for i in range(count)])()  # fmt: skip
            if problem:
                return problem
            for i in range(3):  # TCP: handshake, data, close, both directions
                with netns("cli"):
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.settimeout(15)
                with s:
                    s.connect((SERVER_IP, 8080))
                    s.sendall(b"x")
                    if s.recv(1) != b"x":
                        return f"TCP connection {i}: no echo through the owner"
            out = nsrun("cli", "ping", "-c", "3", "-i", "0.3", "-W", "5", SERVER_IP, check=False)
            if " 0% packet loss" not in out:
                return f"ping through the owner lost packets: {out.strip().splitlines()[-2:]}"
            return None

        return self._dropped_early(count + 3 * 3 + 3 * 2, send)

    def t_known(self) -> str | None:
        """fw3 forwards a UDP flow (its entry is made), then gives the bucket
        away: the flow's next datagrams are dropped before conntrack although
        fw3 still holds the entry, and fw1 forwards them."""
        sport, dport = 40123, 7102
        watch(f"udp dport {dport}")
        configure(OWNER, early=True, owned=NONE)
        configure(OTHER, early=True, owned=EVERY)
        with receiver(socket.AF_INET, SERVER_IP, dport) as drain:
            first = [f"first {i}".encode() for i in range(3)]
            send_udp(socket.AF_INET, SERVER_IP, dport, first, sport=sport)
            problem = exactly_once(drain(), first)
            if problem:
                return f"while {OTHER} owned everything: {problem}"
            entries = nsrun(OTHER, "conntrack", "-L", "-p", "udp", "--dport", str(dport),
                            check=False)  # fmt: skip
            if f"sport={sport}" not in entries:
                return f"{OTHER} holds no entry for the flow: {entries!r}"
            self.setup(early=True)
            watch(f"udp dport {dport}")

            def send() -> str | None:
                later = [f"later {i}".encode() for i in range(10)]
                send_udp(socket.AF_INET, SERVER_IP, dport, later, sport=sport)
                return exactly_once(drain(), first + later)

            problem = self._dropped_early(10, send)
        if problem:
            return problem
        entries = nsrun(OTHER, "conntrack", "-L", "-p", "udp", "--dport", str(dport), check=False)
        if f"sport={sport}" not in entries:
            return f"{OTHER}'s entry for the flow is gone (the test shows nothing)"
        return None

    def t_ipv6(self) -> str | None:
        count = 10
        watch(f"ip6 saddr {{ {CLIENT6}, {SERVER6} }} meta l4proto udp")
        self.setup()
        payloads = [f"v6 {i}".encode() for i in range(count)]
        return self._dropped_early(count, datagrams(socket.AF_INET6, SERVER6, 7108, payloads))

    def t_fragments(self) -> str | None:
        count = 5
        watch("udp dport 7103")
        self.setup()
        payloads = [bytes([65 + i]) * 4000 for i in range(count)]
        # Three fragments each pass the receive handler; the witness counts
        # the reassembled datagram.
        send = datagrams(socket.AF_INET, SERVER_IP, 7103, payloads)
        return self._passed_on(count, "early_undecided", send)

    def t_local(self) -> str | None:
        count = 5
        watch(f"ip daddr {CLIENT_GW} udp dport 7104")
        self.setup()

        def send() -> str | None:
            send_udp(socket.AF_INET, CLIENT_GW, 7104, [b"to the cluster IP"] * count)
            time.sleep(1)
            return None

        return self._passed_on(count, "early_undecided", send)

    def t_slow_path(self) -> str | None:
        count = 5
        watch(f"udp dport {SLOW_PORT}")
        self.setup()
        slow = datagrams(socket.AF_INET, SERVER_IP, SLOW_PORT,
                         [f"slow {i}".encode() for i in range(count)])  # fmt: skip
        problem = self._passed_on(count, "early_slow_path", slow)
        if problem:
            return problem
        watch(f"udp dport {SLOW_PORT + 1}")
        beside = datagrams(socket.AF_INET, SERVER_IP, SLOW_PORT + 1,
                           [f"next {i}".encode() for i in range(count)])  # fmt: skip
        return self._dropped_early(count, beside)

    def t_other(self) -> str | None:
        """ICMP errors (the server's port unreachable for a closed port) and a
        protocol without ports (IP protocol 253) are passed on."""
        count = 5
        watch(f"ip daddr {CLIENT_IP} icmp type destination-unreachable")
        self.setup()

        def send() -> str | None:
            refused = 0
            for i in range(count):
                with netns("cli"):
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.settimeout(5)
                with s:
                    s.connect((SERVER_IP, 7107))
                    s.send(f"closed {i}".encode())
                    try:
                        s.recv(64)
                    except ConnectionRefusedError:
                        refused += 1
                    except TimeoutError:
                        pass
            if refused != count:
                return f"{refused} of {count} port unreachables came back through the owner"
            return None

        problem = self._passed_on(count, "early_undecided", send)
        if problem:
            return problem
        watch(f"ip daddr {SERVER_IP} meta l4proto 253")
        with netns("cli"):
            raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, 253)

        def send_raw() -> str | None:
            with raw:
                for _ in range(count):
                    raw.sendto(b"no ports here", (SERVER_IP, 0))
            time.sleep(1)
            return None

        return self._passed_on(count, "early_undecided", send_raw)
