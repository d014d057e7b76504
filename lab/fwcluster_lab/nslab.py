"""Small network-namespace topologies built in-process, for the agent's
data-plane lab tests (agent/tests/lab) and bench/clusterdev_cost.py.

Everything lives inside namespaces this module creates (named with the
caller's prefix, e.g. ``fwdp-<pid>-``): veth pairs are created directly
between namespaces and bridges sit in a "switch" namespace, so the host's
own namespace is never touched. No namespace gets a route out; routes only
name lab prefixes. `NsLab.destroy()` deletes every namespace it created by
name, which also removes their interfaces and sockets.

`inside(ns)` moves the calling thread into a namespace for a block: sockets
opened there stay in it, and subprocesses (nft, ip) started there run there.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

from .netns import in_ns

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    """Run the block in network namespace `ns` (/run/netns/<ns>)."""
    home = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def sh(*cmd: str, ns: str | None = None, check: bool = True) -> str:
    full = in_ns(ns, cmd) if ns else list(cmd)
    done = subprocess.run(full, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(full)}: {done.stderr.strip()}")
    return done.stdout


class NsLab:
    """A set of namespaces created by one test, destroyed together."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.namespaces: list[str] = []

    def ns(self, short: str) -> str:
        name = self.prefix + short
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "link", "set", "lo", "up", ns=name)
        return name

    def veth(self, a: str, a_if: str, b: str, b_if: str) -> None:
        """A veth pair between namespaces a and b, both ends up."""
        sh("ip", "-n", a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b)
        sh("ip", "-n", a, "link", "set", a_if, "up")
        sh("ip", "-n", b, "link", "set", b_if, "up")

    def bridge(self, ns: str, name: str) -> None:
        """A switch that floods multicast (no IGMP snooping), as a real
        switch does for a multicast MAC nobody joined with IGMP."""
        sh("ip", "-n", ns, "link", "add", name, "type", "bridge", "mcast_snooping", "0")
        sh("ip", "-n", ns, "link", "set", name, "up")

    def attach(self, ns: str, port: str, bridge: str) -> None:
        sh("ip", "-n", ns, "link", "set", port, "master", bridge)

    def addr(self, ns: str, iface: str, cidr: str) -> None:
        extra = ["nodad"] if ":" in cidr else []
        sh("ip", "-n", ns, "addr", "add", cidr, "dev", iface, *extra)

    def route(self, ns: str, prefix: str, via: str) -> None:
        sh("ip", "-n", ns, "route", "add", prefix, "via", via)

    def destroy(self) -> None:
        for name in reversed(self.namespaces):
            sh("ip", "netns", "del", name, check=False)
        self.namespaces.clear()


# --- traffic, generated in-process from inside the namespaces ---------------------------


def udp_flows(ns: str, src: str, dst: str, ports: range, dport: int = 5000) -> None:
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET
    with inside(ns):
        for p in ports:
            with socket.socket(fam, socket.SOCK_DGRAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((src, p))
                s.sendto(b"x", (dst, dport))


def tcp_flows(client_ns: str, server_ns: str, src: str, dst: str, ports: range) -> int:
    """Connect from each source port; returns how many handshakes completed."""
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET
    with inside(server_ns):
        listener = socket.socket(fam, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((dst, 8080))
        listener.listen(len(ports) + 8)
    ok = 0
    try:
        with inside(client_ns):
            for p in ports:
                with socket.socket(fam, socket.SOCK_STREAM) as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.settimeout(3.0)  # long only when a handshake is lost
                    s.bind((src, p))
                    try:
                        s.connect((dst, 8080))
                        ok += 1
                    except OSError:
                        pass
    finally:
        listener.close()
    return ok


def icmp_echoes(ns: str, dst: str, ids: range) -> None:
    """One echo request per id (ICMP, or ICMPv6 for an IPv6 destination)."""
    v6 = ":" in dst
    fam, proto, kind = (
        (socket.AF_INET6, socket.IPPROTO_ICMPV6, 128)
        if v6
        else (socket.AF_INET, socket.IPPROTO_ICMP, 8)
    )
    with inside(ns), socket.socket(fam, socket.SOCK_RAW, proto) as s:
        for ident in ids:
            body = struct.pack("!BBHHH", kind, 0, 0, ident, 1) + b"fwdp"
            if not v6:  # the kernel fills in the ICMPv6 checksum (pseudo-header)
                body = body[:2] + struct.pack("!H", _checksum(body)) + body[4:]
            s.sendto(body, (dst, 0))


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, step: float = 0.02) -> bool:
    """Poll `predicate` until it holds or `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class TcpStream:
    """One established TCP connection between two namespaces, held open so a
    test can move its conntrack entry and check that bytes still flow."""

    def __init__(
        self,
        client_ns: str,
        server_ns: str,
        src: str,
        dst: str,
        port: int,
        dport: int | None = None,
    ) -> None:
        """Listen on `port` in server_ns; connect to dst:dport (default: port),
        which may be a translated address (DNAT) in front of the server."""
        fam = socket.AF_INET6 if ":" in src else socket.AF_INET
        with inside(server_ns):
            listener = socket.socket(fam, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", port))
            listener.listen(1)
            listener.settimeout(5.0)
        try:
            with inside(client_ns):
                self.client = socket.create_connection(
                    (dst, port if dport is None else dport), timeout=5.0, source_address=(src, 0)
                )
            self.server, _ = listener.accept()
        finally:
            listener.close()
        self.sport = self.client.getsockname()[1]

    @staticmethod
    def _move(tx: socket.socket, rx: socket.socket, data: bytes, timeout: float) -> bool:
        tx.sendall(data)
        rx.settimeout(timeout)
        got = b""
        try:
            while len(got) < len(data):
                chunk = rx.recv(len(data) - len(got))
                if not chunk:
                    return False
                got += chunk
        except OSError:  # timeout or reset
            return False
        return got == data

    def client_to_server(self, data: bytes, timeout: float = 3.0) -> bool:
        return self._move(self.client, self.server, data, timeout)

    def server_to_client(self, data: bytes, timeout: float = 3.0) -> bool:
        return self._move(self.server, self.client, data, timeout)

    def close(self) -> None:
        for s in (self.client, self.server):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
