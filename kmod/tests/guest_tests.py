#!/usr/bin/env python3
"""clusterdev functional tests, run as root inside a throwaway guest kernel.

run-guest-tests.sh boots each target kernel with virtme-ng (which shares the
host's userspace: python3, ip, conntrack) and runs this file once per boot.
Everything happens in network namespaces this file creates:

    cli ─ brc (bridge, mcast_snooping 0) ─ fw1, fw2, fw3 ─ brs (bridge) ─ srv

Each firewall namespace has a clusterdev link on each of its two veths,
holding the cluster IP of that side. Tests, in order (later ones use the
lab the earlier ones built):

  load          modprobe the dependencies, insmod the module under test
  lab           build the namespaces; every node gets its third of 256 buckets
  arp           the client resolves the cluster IP to the cluster multicast MAC
  traffic       30 TCP connections and pings pass through the cluster
  one_owner     every connection is in exactly one node's conntrack table,
                the node owning its bucket
  hash_twin     every conntrack mark equals bucket+1 computed in Python
  stats         per-bucket connection counters match the conntrack tables
  failover      fw2's links go down; its connections are injected into the
                survivors (conntrack -I), which then take its buckets; all
                30 connections still carry data (0 lost)
  ipv6          neighbour discovery resolves the cluster IPv6 addresses to the
                cluster MACs (no static entries); 10 IPv6 connections: one
                owner each, marks equal the twin
  known_not_owned  a known connection passes only on its bucket's owner: a
                node holding an injected entry of a bucket it does not own
                drops its packets; with no owner the connection stalls
                although two nodes hold its entry; the new owner resumes it
  unprivileged, rx_filter, mtu, offloads, vlan, ip_multicast, notify, untracked,
  packet_tap, churn
                the link as a stacked device and what reaches it
                (guest_netdev.py): least privilege, cl0's groups in the lower
                device's filter, MTU and offloads of the lower device, VLAN
                frames nobody claims and real IPv4 multicast left on the lower
                device, untracked packets forwarded once, a packet socket on
                the lower device while traffic flows, config changes and a
                namespace deletion while UDP floods
  malformed     malformed netlink requests are refused, config unchanged
  big_config    4096 buckets all owned: the largest messages round-trip
  mld_snooping  a snooping bridge with an MLD querier keeps sending neighbour
                solicitations for a cluster IPv6 address (guest_netdev.py)
  teardown      a second clusterdev on one lower device and a unicast cluster
                MAC are refused; removing the lower device removes cl0; a
                namespace deleted with an up cl0 inside tears down cleanly
  reload        rmmod with clusterdev links present (and UDP flowing through
                them) removes them; insmod again
  early_new, early_known, early_ipv6, early_fragments, early_local,
  early_slow_path, early_other
                the receive handler's early drop, one packet class each
                (guest_early_drop.py): a node owning nothing lets none of the
                decidable classes reach conntrack, passes the others on; the
                owner forwards each packet once
  agent_lab     the lab of lab/fwcluster_lab with an availability-manager on
                each of 3 nodes, backend clusterdev (guest_agent_lab.py):
                one owner per connection, a node killed under traffic with no
                connection lost, `clusterctl status --json` shows the backend
                and the bucket ownership
  dmesg         the kernel log has no WARNING, BUG, Oops or lockdep splat

Prints one "PASS name" / "FAIL name: why" line per test and a final
"guest: N passed, M failed" line (run-guest-tests.sh reads it).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import glob
import ipaddress
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(REPO, "agent"))

from availability_manager.dataplane import clusterdev_genl as genl  # noqa: E402
from availability_manager.dataplane.clusterdev import GenlChannel, mark_bucket  # noqa: E402
from availability_manager.dataplane.clusterdev_hash import connection_bucket  # noqa: E402

BUCKETS = 256
SEED = 0x5EEDF17E
HASH_FIELDS = "addresses+ports"
MARK_MASK = 0x0000FFFF
NODES = ("fw1", "fw2", "fw3")
CLIENT_IP, CLIENT_GW = "192.0.2.100", "192.0.2.1"
SERVER_IP, SERVER_GW = "198.51.100.10", "198.51.100.1"
CLIENT_MAC, SERVER_MAC = "01:00:5e:00:00:c1", "01:00:5e:00:00:c2"
SERVER_PORT = 8080
CLIENT6, CLIENT6_GW = "2001:db8:c::100", "2001:db8:c::1"
SERVER6, SERVER6_GW = "2001:db8:5::10", "2001:db8:5::1"
N_CONNS6 = 10
N_CONNS = 30
N_TAP_CONNS = 10  # packet_tap opens its own (see t_packet_tap)
IO_TIMEOUT = 15.0  # seconds; TCG guests are slow, but nothing should take this long
# Seconds for the agent lab: 389-395 s in the 6.1 guest alone; beside make
# test's molecule scenarios it ran past 720 s in 3 of 5 clean runs, and past
# 1,080 s once (2026-12-07: lab up 262 s, the one-owner check 437 s, at the
# input guard when stopped: clusterctl status waits minutes for a CPU).
AGENT_LAB_TIMEOUT = 1500
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def sh(*argv: str, check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and done.returncode:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def nsrun(ns: str, *argv: str, check: bool = True) -> str:
    if argv[0] == "ip":  # one process instead of two: `ip netns exec` execs
        return sh("ip", "-n", ns, *argv[1:], check=check)
    return sh("ip", "netns", "exec", ns, *argv, check=check)


@contextlib.contextmanager
def netns(name: str) -> Iterator[None]:
    """Run the body in namespace `name`; sockets made here stay there."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET):
            raise OSError(ctypes.get_errno(), f"setns {name}")
        yield
    finally:
        _libc.setns(home, CLONE_NEWNET)
        os.close(target)
        os.close(home)


def client_socket(family: int = socket.AF_INET) -> socket.socket:
    """A TCP socket in the client namespace, with the tests' I/O timeout."""
    with netns("cli"):
        s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(IO_TIMEOUT)
    return s


def channel(ns: str) -> GenlChannel:
    with netns(ns):
        return GenlChannel()


def owned_split(n_nodes: int, index: int, buckets: int = BUCKETS) -> frozenset[int]:
    lo, hi = buckets * index // n_nodes, buckets * (index + 1) // n_nodes
    return frozenset(range(lo, hi))


class Lab:
    """The namespaces; removed by name on exit."""

    def __init__(self) -> None:
        self.namespaces = ["sw", "cli", "srv", *NODES]

    def build(self) -> None:
        # Commands go to `ip -batch` per namespace: under TCG every process
        # start costs a good part of a second.
        for ns in self.namespaces:
            sh("ip", "netns", "add", ns)
        ports = [("cli", "eth0", "brc", "p-cli"), ("srv", "eth0", "brs", "p-srv")]
        for node in NODES:
            ports += [(node, "ethc", "brc", f"p-{node}c"), (node, "eths", "brs", f"p-{node}s")]
        sw = ["link set lo up"]
        for br in ("brc", "brs"):
            sw += [f"link add {br} type bridge mcast_snooping 0", f"link set {br} up"]
        for ns, ifname, bridge, port in ports:
            sw += [
                f"link add {port} type veth peer name {ifname} netns {ns}",
                f"link set {port} master {bridge} up",
            ]
        self._batch("sw", sw)
        up = {ns: ["link set lo up"] for ns in self.namespaces if ns != "sw"}
        for ns, ifname, _, _ in ports:
            up[ns].append(f"link set {ifname} up")
        up["cli"] += [f"addr add {CLIENT_IP}/24 dev eth0", f"route add default via {CLIENT_GW}"]
        up["srv"] += [f"addr add {SERVER_IP}/24 dev eth0", f"route add default via {SERVER_GW}"]
        for node in NODES:
            for dev, lower, mac, ip in (
                ("cdc", "ethc", CLIENT_MAC, f"{CLIENT_GW}/24"),
                ("cds", "eths", SERVER_MAC, f"{SERVER_GW}/24"),
            ):
                up[node] += [
                    f"link add {dev} link {lower} address {mac} type clusterdev",
                    f"addr add {ip} dev {dev}",
                    f"link set {dev} up",
                ]
        for ns, cmds in up.items():
            self._batch(ns, cmds)
        for node in NODES:
            # Mid-stream packets of a connection this node never saw must be
            # INVALID here (tcp_loose 0), so that only its owner forwards them.
            nsrun(node, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
                  "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
                  "net.netfilter.nf_conntrack_tcp_loose=0")  # fmt: skip

    def _batch(self, ns: str, commands: list[str]) -> None:
        done = subprocess.run(
            ["ip", "-n", ns, "-batch", "-"],
            input="\n".join(commands) + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode:
            raise RuntimeError(f"ip -n {ns} -batch: {done.stderr.strip()}")

    def destroy(self) -> None:
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)


class EchoServer:
    """A TCP echo server in the server namespace, one thread per connection."""

    def __init__(self) -> None:
        with netns("srv"):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((SERVER_IP, SERVER_PORT))
        self.sock.listen(64)
        self.sock.settimeout(1.0)
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while not self.stop.is_set() and len(self.threads) < 4 * N_CONNS:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._echo, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _echo(self, conn: socket.socket) -> None:
        conn.settimeout(IO_TIMEOUT * 4)
        with conn:
            while not self.stop.is_set():
                try:
                    data = conn.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(data)

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def roundtrip(sock: socket.socket, payload: bytes) -> bool:
    try:
        sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = sock.recv(len(payload) - len(got))
            if not chunk:
                return False
            got += chunk
        return got == payload
    except OSError:
        return False


def conntrack_entries(ns: str, proto: str, family: str = "ipv4") -> list[dict[str, str]]:
    """Entries of a namespace's conntrack table as key=value dicts (first tuple wins)."""
    out = nsrun(ns, "conntrack", "-L", "-f", family, "-p", proto, check=False)
    entries = []
    for line in out.splitlines():
        fields: dict[str, str] = {}
        for key, value in re.findall(r"(\w+)=(\S+)", line):
            fields.setdefault(key, value)
        if fields:
            entries.append(fields)
    return entries


def tcp_bucket(sport: int) -> int:
    return connection_bucket(
        ipaddress.ip_address(CLIENT_IP),
        ipaddress.ip_address(SERVER_IP),
        sport,
        SERVER_PORT,
        6,
        buckets=BUCKETS,
        seed=SEED,
        hash_fields=HASH_FIELDS,
    )


def guest_early_drop():  # type: ignore[no-untyped-def]
    """The early drop's per-class tests; imported late (they import this module)."""
    import guest_early_drop as module

    return module


def guest_netdev():  # type: ignore[no-untyped-def]
    """The stacked-device tests; imported late (the module imports this one)."""
    import guest_netdev as module

    return module


# Tests that later ones stand on: always run, even with --only.
PREREQUISITES = ("load", "lab", "arp", "traffic")


class GuestTests:
    def __init__(
        self, ko: str, only: frozenset[str] = frozenset(), skip: frozenset[str] = frozenset()
    ) -> None:
        self.ko = ko
        self.only = only  # empty: every test
        self.skip = skip  # left out on purpose (said in the output)
        self.lab = Lab()
        self.results: list[tuple[str, bool, str]] = []
        self.server: EchoServer | None = None
        self.clients: list[socket.socket] = []
        self.owned: dict[str, frozenset[int]] = {}

    def run(self, name: str, fn: Callable[[], str | None]) -> bool:
        if self.only and name not in self.only and name not in PREREQUISITES:
            return True  # skipped: not asked for (--only)
        if name in self.skip:
            print(f"SKIP {name} (--skip: it runs on another kernel of this run)", flush=True)
            return True
        start = time.monotonic()
        try:
            problem = fn()
        except Exception as e:  # a test's crash is that test's failure, not the run's
            problem = f"{type(e).__name__}: {e}"
        took = time.monotonic() - start
        ok = not problem
        self.results.append((name, ok, problem or ""))
        print(f"{'PASS' if ok else 'FAIL'} {name} ({took:.1f}s){'' if ok else ': ' + str(problem)}",
              flush=True)  # fmt: skip
        return ok

    # -- tests -------------------------------------------------------------

    def t_load(self) -> str | None:
        for mod in ("nf_conntrack", "nf_conntrack_netlink", "veth", "bridge"):
            sh("modprobe", mod)
        sh("dmesg", "-C")
        sh("insmod", self.ko)
        if "clusterdev" not in sh("cat", "/proc/modules"):
            return "module not listed in /proc/modules after insmod"
        return None

    def t_lab(self) -> str | None:
        self.lab.build()
        for i, node in enumerate(NODES):
            owned = owned_split(len(NODES), i)
            chan = channel(node)
            chan.set_config(
                buckets=BUCKETS, seed=SEED, hash_fields=HASH_FIELDS, mark_mask=MARK_MASK,
                owned=owned,
            )  # fmt: skip
            cfg = chan.get_config()
            chan.close()
            if cfg.owned != owned or cfg.seed != SEED or cfg.buckets != BUCKETS:
                return f"{node}: config read back differs: {cfg}"
            self.owned[node] = owned
        return None

    def t_arp(self) -> str | None:
        nsrun("cli", "ping", "-c", "1", "-W", "5", CLIENT_GW, check=False)
        neigh = nsrun("cli", "ip", "neigh", "show", CLIENT_GW)
        if CLIENT_MAC not in neigh:
            return f"client's neighbour entry for {CLIENT_GW} is {neigh.strip()!r}"
        # The lower device must have joined the multicast group.
        maddr = nsrun("fw1", "ip", "maddr", "show", "dev", "ethc")
        if CLIENT_MAC not in maddr:
            return f"ethc did not subscribe to {CLIENT_MAC}: {maddr!r}"
        return None

    def t_traffic(self) -> str | None:
        self.server = EchoServer()
        for i in range(N_CONNS):
            s = client_socket()
            try:
                s.connect((SERVER_IP, SERVER_PORT))
            except OSError as e:
                s.close()
                return f"connection {i} failed: {e}"
            self.clients.append(s)
            if not roundtrip(s, f"hello {i}\n".encode()):
                return f"connection {i}: no echo"
        out = nsrun("cli", "ping", "-c", "3", "-i", "0.3", "-W", "5", SERVER_IP, check=False)
        if " 0% packet loss" not in out:
            return f"ping lost packets: {out.strip().splitlines()[-2:]}"
        return None

    def _client_ports(self) -> set[int]:
        return {s.getsockname()[1] for s in self.clients}

    def _tables(self) -> dict[str, dict[int, dict[str, str]]]:
        """Per node: the client's TCP connections to the server, by client port."""
        tables: dict[str, dict[int, dict[str, str]]] = {}
        for node in NODES:
            tables[node] = {}
            for e in conntrack_entries(node, "tcp"):
                if e.get("src") == CLIENT_IP and e.get("dport") == str(SERVER_PORT):
                    tables[node][int(e["sport"])] = e
        return tables

    def t_one_owner(self) -> str | None:
        if not self.clients:
            return "no connections (traffic failed)"
        tables = self._tables()
        for port in sorted(self._client_ports()):
            holders = [n for n in NODES if port in tables[n]]
            if len(holders) != 1:
                return f"client port {port} is in {holders or 'no'} conntrack table(s)"
            bucket = tcp_bucket(port)
            if bucket not in self.owned[holders[0]]:
                return f"port {port}: bucket {bucket} handled by {holders[0]}, not its owner"
        counts = {n: len(tables[n]) for n in NODES}
        print(f"  connections per node: {counts}")
        return None

    def t_hash_twin(self) -> str | None:
        checked = 0
        tables = self._tables()
        for node in NODES:
            for port, e in tables[node].items():
                got = mark_bucket(int(e.get("mark", "0")), MARK_MASK)
                want = tcp_bucket(port)
                if got != want:
                    return f"{node} port {port}: kernel bucket {got}, Python twin {want}"
                checked += 1
            for e in conntrack_entries(node, "icmp"):
                if e.get("src") != CLIENT_IP:
                    continue
                want = connection_bucket(
                    ipaddress.ip_address(CLIENT_IP), ipaddress.ip_address(e["dst"]),
                    int(e["id"]), 0, 1, buckets=BUCKETS, seed=SEED, hash_fields=HASH_FIELDS,
                )  # fmt: skip
                got = mark_bucket(int(e.get("mark", "0")), MARK_MASK)
                if got != want:
                    return f"{node} icmp id {e['id']}: kernel bucket {got}, Python twin {want}"
                checked += 1
        if checked < N_CONNS:
            return f"only {checked} entries checked"
        print(f"  {checked} conntrack marks match the Python twin")
        return None

    def t_stats(self) -> str | None:
        tables = self._tables()
        for node in NODES:
            chan = channel(node)
            stats = chan.get_stats()
            chan.close()
            for port in tables[node]:
                b = tcp_bucket(port)
                if stats.conns[b] < 1 or stats.packets[b] < 3:
                    return f"{node} bucket {b}: conns {stats.conns[b]}, packets {stats.packets[b]}"
            if sum(stats.conns) < len(tables[node]):
                return f"{node}: {sum(stats.conns)} counted < {len(tables[node])} in conntrack"
            if any(stats.conns[b] for b in range(BUCKETS) if b not in self.owned[node]):
                return f"{node}: counted a NEW connection in a bucket it does not own"
            if stats.drop_not_owned == 0:
                return f"{node}: no NEW packet dropped as not owned (every node sees every SYN)"
        return None

    def t_failover(self) -> str | None:
        if not self.clients:
            return "no connections (traffic failed)"
        tables = self._tables()
        victim = "fw2"
        nsrun(victim, "ip", "link", "set", "ethc", "down")
        nsrun(victim, "ip", "link", "set", "eths", "down")
        state = nsrun(victim, "ip", "-o", "link", "show", "cdc")
        if "LOWERLAYERDOWN" not in state and "state DOWN" not in state:
            return f"cdc did not follow its lower device down: {state.strip()}"
        survivors = [n for n in NODES if n != victim]
        # The victim's buckets go half to each survivor.
        taken = sorted(self.owned[victim])
        half = len(taken) // 2
        new_owned = {
            survivors[0]: self.owned[survivors[0]] | frozenset(taken[:half]),
            survivors[1]: self.owned[survivors[1]] | frozenset(taken[half:]),
        }
        # Inject first, then claim: a claimed bucket never lacks a known connection.
        injected = 0
        for port, e in tables[victim].items():
            bucket = tcp_bucket(port)
            owner = next(n for n in survivors if bucket in new_owned[n])
            nsrun(owner, "conntrack", "-I", "-p", "tcp", "-s", CLIENT_IP, "-d", SERVER_IP,
                  "--sport", str(port), "--dport", str(SERVER_PORT), "--state", "ESTABLISHED",
                  "-u", "ASSURED,SEEN_REPLY", "-t", "300", "-m", e.get("mark", "0"))  # fmt: skip
            injected += 1
        for node in survivors:
            chan = channel(node)
            chan.set_config(buckets=BUCKETS, owned=new_owned[node])
            chan.close()
            self.owned[node] = new_owned[node]
        lost = [i for i, s in enumerate(self.clients) if not roundtrip(s, f"again {i}\n".encode())]
        print(f"  {len(tables[victim])} connections of {victim} injected into survivors")
        if lost:
            return f"{len(lost)} of {len(self.clients)} connections lost: {lost[:10]}"
        if injected == 0:
            return f"{victim} had no connections: the failover was not exercised"
        # A new connection still works and lands on a survivor.
        s = client_socket()
        try:
            s.connect((SERVER_IP, SERVER_PORT))
            ok = roundtrip(s, b"new\n")
        except OSError as e:
            return f"new connection after failover failed: {e}"
        finally:
            s.close()
        return None if ok else "new connection after failover: no echo"

    def t_known_not_owned(self) -> str | None:
        """A known connection passes only on its bucket's owner (as with nftables).

        After failover fw1 and fw3 are alive. Take a connection X handles and
        inject its entry into the other survivor Y, which does not own the
        bucket: Y drops its packets (drop_not_owned_established) while X
        forwards. Then X gives the bucket up without anyone taking it: the
        connection stalls although both hold its entry. Once Y owns the
        bucket, Y forwards it and the stalled data arrives."""
        if not self.clients:
            return "no connections (traffic failed)"
        alive = [n for n in NODES if n != "fw2"]
        tables = self._tables()
        pick = next(
            ((s, n, int(s.getsockname()[1])) for s in self.clients for n in alive
             if s.getsockname()[1] in tables[n]), None,
        )  # fmt: skip
        if pick is None:
            return f"no connection held by {alive}"
        sock, holder, port = pick
        other = next(n for n in alive if n != holder)
        bucket = tcp_bucket(port)
        if bucket not in self.owned[holder] or bucket in self.owned[other]:
            return f"bucket {bucket}: {holder} should own it, {other} not"
        mark = tables[holder][port].get("mark", "0")
        nsrun(other, "conntrack", "-I", "-p", "tcp", "-s", CLIENT_IP, "-d", SERVER_IP,
              "--sport", str(port), "--dport", str(SERVER_PORT), "--state", "ESTABLISHED",
              "-u", "ASSURED,SEEN_REPLY", "-t", "300", "-m", mark)  # fmt: skip
        chan_h, chan_o = channel(holder), channel(other)
        try:
            before = chan_o.get_stats()
            if not roundtrip(sock, b"owner only\n"):
                return f"port {port}: no echo while {holder} owns bucket {bucket}"
            after = chan_o.get_stats()
            dropped = after.drop_not_owned_established - before.drop_not_owned_established
            if dropped < 2:  # at least the request and its echo crossed the other node
                return f"{other} dropped {dropped} packets of a known, not owned connection"
            if after.packets[bucket] != before.packets[bucket]:
                return f"{other} passed packets of bucket {bucket} it does not own"
            # Nobody owns the bucket: both nodes hold the entry, neither forwards.
            chan_h.set_config(buckets=BUCKETS, owned=self.owned[holder] - {bucket})
            self.owned[holder] = self.owned[holder] - {bucket}
            sock.settimeout(3.0)
            sock.sendall(b"stalled\n")
            try:
                early = sock.recv(64)
            except TimeoutError:
                early = b""
            if early:
                return f"bucket {bucket} owned by nobody, yet the echo came back: {early!r}"
            chan_o.set_config(buckets=BUCKETS, owned=self.owned[other] | {bucket})
            self.owned[other] = self.owned[other] | {bucket}
            sock.settimeout(IO_TIMEOUT)
            got = b""
            while len(got) < len(b"stalled\n"):
                chunk = sock.recv(64)
                if not chunk:
                    break
                got += chunk
            if got != b"stalled\n":
                return f"after {other} took bucket {bucket}: echo {got!r}"
            if chan_o.get_stats().packets[bucket] <= after.packets[bucket]:
                return f"{other} owns bucket {bucket} but counted none of its packets"
        finally:
            sock.settimeout(IO_TIMEOUT)
            chan_h.close()
            chan_o.close()
        # The handover is complete: the giver forgets the entry, as the agent does.
        nsrun(holder, "conntrack", "-D", "-p", "tcp", "-s", CLIENT_IP, "--sport", str(port),
              check=False)  # fmt: skip
        print(f"  port {port} bucket {bucket}: dropped on {other} ({dropped} packets), "
              f"stalled with no owner, resumed on {other}")  # fmt: skip
        return None

    def t_malformed(self) -> str | None:
        chan = channel("cli")  # a namespace with the default configuration
        before = chan.get_config()
        fam = chan.family
        u32 = lambda v: struct.pack("=I", v)  # noqa: E731
        cases: list[tuple[str, bytes]] = [
            ("unknown command", genl.genlmsg(fam, 99, 0, b"")),
            ("command 0", genl.genlmsg(fam, 0, 0, b"")),
            ("short u32", genl.genlmsg(fam, 1, 0, genl.attr(genl.A_BUCKETS, b"\x01\x00"))),
            ("long u8", genl.genlmsg(fam, 1, 0, genl.attr(genl.A_HASH_FIELDS, u32(1)))),
            ("hash fields 7", genl.genlmsg(fam, 1, 0, genl.attr(genl.A_HASH_FIELDS, b"\x07"))),
            ("buckets 0", genl.genlmsg(fam, 1, 0, genl.attr(genl.A_BUCKETS, u32(0)))),
            ("buckets 5000", genl.genlmsg(fam, 1, 0, genl.attr(genl.A_BUCKETS, u32(5000)))),
            ("oversized bitmap", genl.genlmsg(fam, 1, 0, genl.attr(genl.A_OWNED, b"\xff" * 513))),
            ("bitmap length != buckets/8",
             genl.genlmsg(fam, 1, 0, genl.attr(genl.A_OWNED, b"\x01" * 10))),
            ("bit beyond bucket count",
             genl.genlmsg(fam, 1, 0, genl.attr(genl.A_BUCKETS, u32(20))
                          + genl.attr(genl.A_OWNED, b"\x00\x00\x80"))),
            ("mask 0", genl.genlmsg(fam, 1, 0, genl.attr(genl.A_MARK_MASK, u32(0)))),
            ("mask with holes", genl.genlmsg(fam, 1, 0, genl.attr(genl.A_MARK_MASK, u32(0xF0F)))),
            ("mask too narrow", genl.genlmsg(fam, 1, 0, genl.attr(genl.A_MARK_MASK, u32(0xFF)))),
            ("valid buckets + bad mask (no partial change)",
             genl.genlmsg(fam, 1, 0, genl.attr(genl.A_BUCKETS, u32(128))
                          + genl.attr(genl.A_MARK_MASK, u32(0)))),
            ("unknown attribute", genl.genlmsg(fam, 1, 0, genl.attr(200, u32(1)))),
            ("reply-only attribute", genl.genlmsg(fam, 1, 0, genl.attr(genl.A_STATS_PACKETS, b""))),
            ("attribute overruns message",
             genl.genlmsg(fam, 1, 0, struct.pack("=HH", 64, genl.A_SEED) + u32(1))),
            ("reserved header byte",
             genl.nlmsg(fam, 5, 0, struct.pack("=BBH", 1, 1, 7) + genl.attr(genl.A_SEED, u32(1)))),
            ("no genl header", genl.nlmsg(fam, 5, 0, b"\x01")),
        ]  # fmt: skip
        problems = []
        for i, (label, msg) in enumerate(cases, start=1):
            msg = msg[:8] + struct.pack("=I", 1000 + i) + msg[12:]  # sequence number
            replies = chan.exchange(msg, 1000 + i)
            err = next((r for r in replies if r.type == genl.NLMSG_ERROR), None)
            code = struct.unpack_from("=i", err.payload)[0] if err else None
            if code is None or code >= 0:
                problems.append(f"{label}: accepted ({code})")
            else:
                print(f"  refused {label}: {errno.errorcode.get(-code, -code)}")
        after = chan.get_config()
        chan.close()
        if after != before:
            problems.append(f"config changed by refused requests: {before} -> {after}")
        return "; ".join(problems) or None

    def t_ipv6(self) -> str | None:
        """IPv6 through the cluster: the endpoints resolve the cluster IPv6
        addresses to the cluster MAC by neighbour discovery (the module moves
        solicitations for cl0's addresses to cl0, whose ndisc answers with its
        own hardware address); one owner per connection, marks = twin."""
        lab = self.lab
        lab._batch("cli", [f"addr add {CLIENT6}/64 dev eth0 nodad",
                           f"route add ::/0 via {CLIENT6_GW}"])  # fmt: skip
        lab._batch("srv", [f"addr add {SERVER6}/64 dev eth0 nodad",
                           f"route add ::/0 via {SERVER6_GW}"])  # fmt: skip
        for node in NODES:
            lab._batch(node, [f"addr add {CLIENT6_GW}/64 dev cdc nodad",
                              f"addr add {SERVER6_GW}/64 dev cds nodad"])  # fmt: skip
            nsrun(node, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")
        with netns("srv"):
            listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        conns: list[socket.socket] = []
        accepted: list[socket.socket] = []
        try:
            listener.bind((SERVER6, SERVER_PORT))
            listener.listen(N_CONNS6)
            listener.settimeout(IO_TIMEOUT)
            for i in range(N_CONNS6):
                c = client_socket(socket.AF_INET6)
                conns.append(c)
                try:
                    c.connect((SERVER6, SERVER_PORT))
                    accepted.append(listener.accept()[0])
                except OSError as e:
                    return f"IPv6 connection {i} failed: {e}"
            ports = {c.getsockname()[1] for c in conns}
            tables = {n: conntrack_entries(n, "tcp", family="ipv6") for n in NODES}
            for ns, gw, mac in (("cli", CLIENT6_GW, CLIENT_MAC), ("srv", SERVER6_GW, SERVER_MAC)):
                neigh = nsrun(ns, "ip", "-6", "neigh", "show", gw)
                if mac not in neigh or "PERMANENT" in neigh:
                    return f"{ns}: neighbour entry for {gw} is {neigh.strip()!r}, not learnt {mac}"
        finally:
            for sock in [*conns, *accepted, listener]:
                sock.close()
        for port in sorted(ports):
            holders = [
                (n, e) for n in NODES for e in tables[n]
                if e.get("src") == CLIENT6 and e.get("sport") == str(port)
            ]  # fmt: skip
            if len(holders) != 1:
                return f"IPv6 port {port} in {[n for n, _ in holders] or 'no'} tables"
            node, entry = holders[0]
            want = connection_bucket(
                ipaddress.ip_address(CLIENT6), ipaddress.ip_address(SERVER6), port, SERVER_PORT,
                6, buckets=BUCKETS, seed=SEED, hash_fields=HASH_FIELDS,
            )  # fmt: skip
            got = mark_bucket(int(entry.get("mark", "0")), MARK_MASK)
            if got != want or want not in self.owned[node]:
                return f"IPv6 port {port} on {node}: mark bucket {got}, twin {want}"
        print(f"  {len(ports)} IPv6 connections, each on its bucket's owner, marks = twin")
        return None

    # -- the stacked device (guest_netdev.py) --------------------------------

    def t_unprivileged(self) -> str | None:
        return guest_netdev().t_unprivileged("fw1")

    def t_rx_filter(self) -> str | None:
        return guest_netdev().t_rx_filter("fw1", "ethc", CLIENT6_GW)

    def t_mtu(self) -> str | None:
        return guest_netdev().t_mtu("fw1", "cdc", "ethc")

    def t_offloads(self) -> str | None:
        return guest_netdev().t_offloads("fw1", "cdc", "ethc")

    def t_vlan(self) -> str | None:
        return guest_netdev().t_vlan("cli", "eth0", "fw1", "cdc")

    def t_ip_multicast(self) -> str | None:
        return guest_netdev().t_ip_multicast("cli", "eth0", "fw1", "ethc")

    def t_notify(self) -> str | None:
        return guest_netdev().t_notify("fw1", self.owned["fw1"], BUCKETS)

    def t_untracked(self) -> str | None:
        return guest_netdev().t_untracked("cli", "srv")

    def t_packet_tap(self) -> str | None:
        if not self.clients:
            return "no connections (traffic failed)"
        # The pool of t_traffic has been through failover, moved buckets and
        # MTU changes: a connection one of those tests left broken (seen in
        # about one full run in three, 2026-12-06, open) is not the tap's
        # fault. Said here, and the tap is judged on connections of its own.
        broken = [i for i, s in enumerate(self.clients) if not roundtrip(s, f"pre {i}\n".encode())]
        if broken:
            print(f"  note: {len(broken)} of {len(self.clients)} earlier connections no "
                  f"longer answer: {broken[:10]} (broken before this test)")  # fmt: skip
        clients: list[socket.socket] = []
        try:
            for i in range(N_TAP_CONNS):
                s = client_socket()
                clients.append(s)
                try:
                    s.connect((SERVER_IP, SERVER_PORT))
                except OSError as e:
                    return f"a new connection failed before the tap: {e}"
                if not roundtrip(s, f"pre {i}\n".encode()):
                    return f"new connection {i}: no echo before the tap"
            failed: list[int] = []

            def roundtrips() -> bool:
                failed[:] = [i for i, c in enumerate(clients) if not roundtrip(c, f"tap {i}\n".encode())]
                return not failed

            problem = guest_netdev().t_packet_tap("fw1", "ethc", roundtrips)
            if problem and failed:
                after = [i for i in failed if roundtrip(clients[i], f"post {i}\n".encode())]
                problem += f" ({len(failed)} of {len(clients)}: {failed[:10]}; {len(after)} work again)"
            return problem
        finally:
            for c in clients:
                c.close()

    def t_churn(self) -> str | None:
        return guest_netdev().t_churn(self.owned, BUCKETS)

    def run_early_drop(self) -> None:
        """One test per packet class of the receive handler's early decision
        (guest_early_drop.py); the lab's ownership is restored after them."""
        early = guest_early_drop().EarlyDropTests(self.owned)
        for name in ("new", "known", "ipv6", "fragments", "local", "slow_path", "other"):
            self.run(f"early_{name}", getattr(early, f"t_{name}"))
        if any(n.startswith("early_") for n, _, _ in self.results):
            self.run("early_restore", early.restore)

    def t_mld_snooping(self) -> str | None:
        return guest_netdev().t_mld_snooping()

    def t_big_config(self) -> str | None:
        """4096 buckets, all owned: the largest bitmap and counter replies."""
        sh("ip", "netns", "add", "big")
        try:
            chan = channel("big")
            every = frozenset(range(4096))
            chan.set_config(buckets=4096, owned=every)
            cfg, stats = chan.get_config(), chan.get_stats()
            chan.close()
        finally:
            sh("ip", "netns", "del", "big")
        if cfg.owned != every or cfg.buckets != 4096:
            return f"read back {cfg.buckets} buckets, {len(cfg.owned)} owned"
        if len(stats.packets) != 4096 or len(stats.conns) != 4096:
            return f"counters for {len(stats.packets)} buckets"
        return None

    def t_teardown(self) -> str | None:
        """Removing the lower device removes cl0; a namespace dies with cl0 in it."""
        for ns in ("td1", "td2"):
            sh("ip", "netns", "add", ns)
        try:
            nsrun("td1", "ip", "link", "add", "low", "type", "veth", "peer", "name", "peer")
            nsrun("td1", "ip", "link", "add", "cl0", "link", "low", "address", CLIENT_MAC,
                  "type", "clusterdev")  # fmt: skip
            # One clusterdev per lower device: a second must be refused.
            second = subprocess.run(
                ["ip", "netns", "exec", "td1", "ip", "link", "add", "cl1", "link", "low",
                 "address", SERVER_MAC, "type", "clusterdev"], capture_output=True,
            )  # fmt: skip
            if second.returncode == 0:
                return "a second clusterdev on the same lower device was accepted"
            refused = subprocess.run(
                ["ip", "netns", "exec", "td1", "ip", "link", "add", "cl2", "link", "low",
                 "address", "02:00:00:00:00:01", "type", "clusterdev"], capture_output=True,
            )  # fmt: skip
            if refused.returncode == 0:
                return "a unicast cluster MAC was accepted"
            nsrun("td1", "ip", "link", "del", "low")
            if "cl0" in nsrun("td1", "ip", "-o", "link", "show"):
                return "cl0 survived the removal of its lower device"
            nsrun("td2", "ip", "link", "add", "low", "type", "veth", "peer", "name", "peer")
            nsrun("td2", "ip", "link", "add", "cl0", "link", "low", "address", CLIENT_MAC,
                  "type", "clusterdev")  # fmt: skip
            nsrun("td2", "ip", "link", "set", "cl0", "up")
        finally:
            sh("ip", "netns", "del", "td1", check=False)
            sh("ip", "netns", "del", "td2", check=False)  # dies with cl0 (up) inside
        # Namespace cleanup runs in a worker: give it a moment, then dmesg says.
        time.sleep(2)
        return None

    def t_reload(self) -> str | None:
        for s in self.clients:
            s.close()
        self.clients.clear()
        if self.server:
            self.server.close()
        with guest_netdev().flood("cli", SERVER_IP, 7778):
            sh("rmmod", "clusterdev")
        for node in NODES:
            left = nsrun(node, "ip", "-o", "link", "show")
            if "cdc" in left or "cds" in left:
                return f"{node} still has clusterdev links after rmmod"
        sh("insmod", self.ko)
        nsrun("fw1", "ip", "link", "add", "cdc", "link", "ethc", "address", CLIENT_MAC,
              "type", "clusterdev")  # fmt: skip
        chan = channel("fw1")
        cfg = chan.get_config()
        chan.close()
        if cfg.owned or cfg.buckets != 256:
            return f"fresh module does not start owning nothing with 256 buckets: {cfg}"
        # Unload once more with a link present, then leave it loaded for dmesg.
        sh("rmmod", "clusterdev")
        sh("insmod", self.ko)
        return None

    def t_agent_lab(self) -> str | None:
        """The lab with the real agent on the clusterdev backend (guest_agent_lab.py),
        run by the agent's own Python (the guest shares the host's filesystem)."""
        python = os.path.join(REPO, ".venv", "bin", "python")
        if not os.path.exists(python):
            return f"{python} missing: the agent's venv (make bootstrap) is needed"
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guest_agent_lab.py")
        try:
            done = subprocess.run([python, script], capture_output=True, text=True,
                                  timeout=AGENT_LAB_TIMEOUT, check=False)  # fmt: skip
        except subprocess.TimeoutExpired as e:
            # what it printed until then (its steps carry their time) and what
            # each agent did last: a timeout alone said nothing in CI
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout
            for line in (out or "").splitlines():
                print(line)
            for log in sorted(glob.glob("/run/fwk-agent-lab/*/agent.log")):
                with open(log, errors="replace") as f:
                    for line in f.read().splitlines()[-15:]:
                        print(f"  [{log.split('/')[-2]} log] {line[:240]}")
            return f"no result in {AGENT_LAB_TIMEOUT} s (steps and agent logs above)"
        lines = done.stdout.splitlines()
        for line in lines[:-1]:
            print(line)
        last = lines[-1] if lines else f"no output, exit {done.returncode}: {done.stderr[-500:]}"
        return None if done.returncode == 0 and last == "agent_lab: ok" else last

    def t_dmesg(self) -> str | None:
        log = sh("dmesg")
        bad = [
            line
            for line in log.splitlines()
            if re.search(
                r"WARNING:|BUG[: ]|Oops|general protection|lockdep|KASAN|KFENCE|Call Trace"
                r"|Redzone|Poison overwritten|corruption|refcount_t|waiting for .* to become free",
                line,
            )
        ]
        return f"{len(bad)} bad lines, first: {bad[0]}" if bad else None

    def main(self) -> int:
        try:
            if self.run("load", self.t_load):
                if self.run("lab", self.t_lab):
                    self.run("arp", self.t_arp)
                    self.run("traffic", self.t_traffic)
                    self.run("one_owner", self.t_one_owner)
                    self.run("hash_twin", self.t_hash_twin)
                    self.run("stats", self.t_stats)
                    self.run("failover", self.t_failover)
                    self.run("ipv6", self.t_ipv6)
                    self.run("known_not_owned", self.t_known_not_owned)
                    self.run("unprivileged", self.t_unprivileged)
                    self.run("rx_filter", self.t_rx_filter)
                    self.run("mtu", self.t_mtu)
                    self.run("offloads", self.t_offloads)
                    self.run("vlan", self.t_vlan)
                    self.run("ip_multicast", self.t_ip_multicast)
                    self.run("notify", self.t_notify)
                    self.run("untracked", self.t_untracked)
                    self.run("packet_tap", self.t_packet_tap)
                    self.run("churn", self.t_churn)
                    self.run_early_drop()
                self.run("malformed", self.t_malformed)
                self.run("big_config", self.t_big_config)
                self.run("mld_snooping", self.t_mld_snooping)
                self.run("teardown", self.t_teardown)
                self.run("reload", self.t_reload)
                self.run("agent_lab", self.t_agent_lab)
                self.run("dmesg", self.t_dmesg)
        finally:
            for s in self.clients:
                s.close()
            if self.server:
                self.server.close()
            self.lab.destroy()
        passed = sum(ok for _, ok, _ in self.results)
        print(f"guest: {passed} passed, {len(self.results) - passed} failed", flush=True)
        return 0 if passed == len(self.results) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ko", required=True, help="clusterdev.ko built for the running kernel")
    parser.add_argument(
        "--only", default="", help="comma-separated test names (and their prerequisites)"
    )
    parser.add_argument("--skip", default="", help="comma-separated test names left out")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("guest tests need root (run them in a guest: kmod/tools/run-guest-tests.sh)")
        return 2
    only = frozenset(filter(None, args.only.split(",")))
    skip = frozenset(filter(None, args.skip.split(",")))
    return GuestTests(args.ko, only, skip).main()


if __name__ == "__main__":
    sys.exit(main())
