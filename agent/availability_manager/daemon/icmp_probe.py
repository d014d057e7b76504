"""ICMP echo to a zone's next hops, from this node's own address on the zone.

Why ICMP echo and not ARP/ND: one mechanism for IPv4 and IPv6 that needs no
hand-built link-layer frames, and it proves what matters, that the next hop
answers at layer 3 (a router whose forwarding died often still answers ARP
from its kernel). A next hop that filters echo can be watched with an
operator check instead (any command, e.g. arping).

Why from the node's own address: every node holds the cluster's shared
address, and its replies go to the cluster's multicast MAC, so every node
would hear the answer to any node's probe. The socket is bound to the zone
interface (SO_BINDTODEVICE) and to the node's own address there, so a reply
counts only if it came back on that interface to this node.

The socket is raw (the agent runs as root; ping sockets need a sysctl that
namespaces do not set): the kernel hands every echo reply of the namespace to
every raw ICMP socket, so replies are matched by identifier, sequence number
and source address.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct
from collections.abc import Callable, Iterable, Sequence

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY = 8, 0
ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY = 128, 129
SIOCGIFADDR = 0x8915
SO_BINDTODEVICE = 25
IFA_F_TENTATIVE = 0x40
PAYLOAD = b"fwcluster-nexthop"


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(family: int, ident: int, seq: int) -> bytes:
    """An echo request; for IPv6 the kernel fills in the checksum (it needs
    the pseudo-header, which only the kernel knows for sure)."""
    kind = ICMP_ECHO_REQUEST if family == socket.AF_INET else ICMP6_ECHO_REQUEST
    header = struct.pack("!BBHHH", kind, 0, 0, ident, seq)
    if family == socket.AF_INET6:
        return header + PAYLOAD
    csum = _checksum(header + PAYLOAD)
    return struct.pack("!BBHHH", kind, 0, csum, ident, seq) + PAYLOAD


def parse_echo_reply(family: int, data: bytes) -> tuple[int, int] | None:
    """(identifier, sequence) of an echo reply, or None for anything else. An
    IPv4 raw socket receives the IP header too; an IPv6 one does not."""
    if family == socket.AF_INET:
        if len(data) < 20:
            return None
        data = data[(data[0] & 0x0F) * 4 :]
    if len(data) < 8:
        return None
    kind, code, _csum, ident, seq = struct.unpack_from("!BBHHH", data)
    want = ICMP_ECHO_REPLY if family == socket.AF_INET else ICMP6_ECHO_REPLY
    return (ident, seq) if (kind, code) == (want, 0) else None


def own_address(interface: str, family: int, shared: Iterable[Address]) -> Address | None:
    """This node's own address on `interface`, never one of the cluster's
    `shared` ones (None: it has none now). IPv4: the interface's primary
    address (the lab and the role add the node's address first); IPv6: the
    first global address that is not tentative."""
    not_ours = set(shared)
    if family == socket.AF_INET:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                req = struct.pack("256s", interface.encode()[:15])
                res = fcntl.ioctl(s.fileno(), SIOCGIFADDR, req)
            except OSError:
                return None
        addr4 = ipaddress.IPv4Address(res[20:24])
        return None if addr4 in not_ours else addr4
    try:
        with open("/proc/net/if_inet6") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        hexaddr, _idx, _plen, scope, flags, name = line.split()
        if name != interface or int(scope, 16) != 0 or int(flags, 16) & IFA_F_TENTATIVE:
            continue
        addr6 = ipaddress.IPv6Address(bytes.fromhex(hexaddr))
        if addr6 not in not_ours:
            return addr6
    return None


class EchoSocket:
    """One raw ICMP socket of one family on one zone interface, bound to the
    node's own address; reopened when that address changes or is missing."""

    def __init__(
        self,
        interface: str,
        family: int,
        shared: Sequence[Address],
        before_close: Callable[[int], None] = lambda fd: None,
    ) -> None:
        self.interface = interface
        self.before_close = before_close  # e.g. the event loop's remove_reader
        self.family = family
        self.shared = tuple(shared)
        self.ident = int.from_bytes(os.urandom(2), "big")
        self._sock: socket.socket | None = None
        self._bound: Address | None = None

    def fileno(self) -> int | None:
        return self._sock.fileno() if self._sock is not None else None

    @property
    def bound_address(self) -> Address | None:
        """The node's own address the socket sends from (None: not open)."""
        return self._bound

    def ensure_open(self) -> str | None:
        """Open (or reopen) the socket; a reason when it cannot be."""
        addr = own_address(self.interface, self.family, self.shared)
        if addr is None:
            self.close()
            return (
                f"no own IPv{4 if self.family == socket.AF_INET else 6} address on {self.interface}"
            )
        if self._sock is not None and addr == self._bound:
            return None
        self.close()
        proto = socket.IPPROTO_ICMP if self.family == socket.AF_INET else socket.IPPROTO_ICMPV6
        sock = socket.socket(self.family, socket.SOCK_RAW, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, self.interface.encode())
            sock.bind((str(addr), 0))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            return f"cannot bind to {addr} on {self.interface}: {exc.strerror}"
        self._sock, self._bound = sock, addr
        return None

    def send(self, target: Address, seq: int) -> str | None:
        """Send one echo request; a reason when it could not leave."""
        if self._sock is None:
            return "socket not open"
        try:
            self._sock.sendto(echo_request(self.family, self.ident, seq), (str(target), 0))
        except OSError as exc:  # no route, interface down: as good as no answer
            return f"cannot send to {target}: {exc.strerror}"
        return None

    def replies(self) -> list[tuple[Address, int]]:
        """(source, sequence) of every pending echo reply to this socket's identifier."""
        out: list[tuple[Address, int]] = []
        if self._sock is None:
            return out
        while True:
            try:
                data, peer = self._sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return out
            except OSError:
                return out
            parsed = parse_echo_reply(self.family, data)
            if parsed is not None and parsed[0] == self.ident:
                out.append((ipaddress.ip_address(peer[0].split("%")[0]), parsed[1]))

    def close(self) -> None:
        if self._sock is not None:
            self.before_close(self._sock.fileno())
            self._sock.close()
        self._sock, self._bound = None, None
