"""UDP sockets of the sync network (and of optional zone heartbeats).

Three ways to reach every peer, chosen in the config: multicast to a group
(default; one datagram reaches all), broadcast on the sync interface's
subnet, or unicast to each configured peer. The socket is bound to the sync
interface (SO_BINDTODEVICE) so datagrams never leave by another route, and
multicast loopback is off so a node does not hear itself (the crypto layer
drops its own datagrams anyway).

Zone heartbeats use the same class on each zone interface, with the group
ZONE_HEARTBEAT_GROUP and the sync port + 1: the runtime sends there every
datagram the Node addresses to `Destination.ZONES` (a copy of each heartbeat,
made only when zone heartbeats are configured), so a node alive on its data
links is not taken for dead when only the sync network fails.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
from collections.abc import Sequence

SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
RCVBUF = 4 * 1024 * 1024
# Linux values; Python 3.11's socket module does not name them.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)
# Zone heartbeats are sent with TTL 255 and accepted only with TTL 255: a
# datagram that crossed a router arrives with less, so only a sender on the
# link itself can be heard (the GTSM rule, RFC 5082).
LINK_TTL = 255
_CMSG_SPACE = socket.CMSG_SPACE(12) + socket.CMSG_SPACE(4)
SO_MARK = getattr(socket, "SO_MARK", 36)
_MARK = struct.Struct("=I")
# What a kernel says when it takes no SO_MARK control message (or not from
# us): the datagram is then sent without a mark, and no later one asks again.
_MARK_REFUSED = (errno.EINVAL, errno.EPERM, errno.EOPNOTSUPP)

log = logging.getLogger("availability-manager")


ZONE_HEARTBEAT_GROUP = ipaddress.IPv4Address("239.255.77.2")


class SyncSocket:
    def __init__(
        self,
        interface: str,
        address: ipaddress.IPv4Address | ipaddress.IPv6Address,
        port: int,
        transport: str,
        group: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None,
        peers: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
        broadcast: ipaddress.IPv4Address | None = None,
        link_only: bool = False,
    ) -> None:
        """`link_only` (zone heartbeat sockets, IPv4 multicast): receive only
        datagrams sent to the group (not unicast to an address of this
        node) with TTL 255; the others are counted in `filtered`."""
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, interface.encode())
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.setblocking(False)
            ifindex = socket.if_nametoindex(interface)
            if transport == "multicast":
                assert group is not None
                if family == socket.AF_INET:
                    sock.bind(("", port))
                    # struct ip_mreqn: group, local address (any), ifindex (host order)
                    mreq = struct.pack("=4s4si", group.packed, bytes(4), ifindex)
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
                    out_if = struct.pack("=4s4si", bytes(4), bytes(4), ifindex)
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, out_if)
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
                    sock.setsockopt(
                        socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, LINK_TTL if link_only else 1
                    )
                    if link_only:
                        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
                        sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
                else:
                    sock.bind(("", port))
                    mreq6 = group.packed + struct.pack("@I", ifindex)
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq6)
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
                self.destinations: list[tuple[str, int] | tuple[str, int, int, int]] = [
                    (str(group), port)
                    if family == socket.AF_INET
                    else (str(group), port, 0, ifindex)
                ]
            elif transport == "broadcast":
                if broadcast is None:
                    raise ValueError("broadcast transport needs the interface's broadcast address")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                sock.bind(("", port))
                self.destinations = [(str(broadcast), port)]
            else:
                sock.bind((str(address), port))
                self.destinations = [(str(p), port) for p in peers if p != address]
        except BaseException:
            sock.close()
            raise
        if link_only and (transport != "multicast" or family != socket.AF_INET):
            sock.close()
            raise ValueError("link_only needs the IPv4 multicast transport")
        self.sock = sock
        self.send_errors = 0
        self.marks_taken = True  # until the kernel refuses an SO_MARK message
        self.link_only = link_only
        self._group = group.packed if group is not None else b""
        self.filtered: dict[str, int] = {}

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, datagram: bytes, mark: int = 0) -> bool:
        """To every destination; with `mark`, each packet carries that socket
        mark (the data plane's fence, fence.py). True if at least one copy
        left with the mark asked for (with mark 0: any copy)."""
        left = False
        for dest in self.destinations:
            try:
                if mark and self.marks_taken:
                    left = self._send_marked(datagram, dest, mark) or left
                else:
                    self.sock.sendto(datagram, dest)
                    left = left or not mark
            except OSError:
                # ENETUNREACH/ENOBUFS while a link is down: counted, the
                # protocol's own repair (NAK, heartbeat) covers the loss
                self.send_errors += 1
        return left

    def _send_marked(
        self, datagram: bytes, dest: tuple[str, int] | tuple[str, int, int, int], mark: int
    ) -> bool:
        """True if the datagram left with `mark`, False if the kernel takes
        no mark from us and it left without (no later datagram asks again)."""
        try:
            self.sock.sendmsg([datagram], [(socket.SOL_SOCKET, SO_MARK, _MARK.pack(mark))], 0, dest)
            return True
        except OSError as e:
            if e.errno not in _MARK_REFUSED:
                raise
            refusal = e
        # EPERM is also what an output rule that drops the packet returns:
        # only if the same datagram leaves unmarked was it the mark.
        self.sock.sendto(datagram, dest)
        self.marks_taken = False
        log.warning(
            "the kernel refuses a socket mark on a datagram (%s): heartbeats go out "
            "unmarked and the fence is refreshed by netlink after each",
            errno.errorcode.get(refusal.errno or 0, refusal.errno),
        )
        return False

    def receive_all(self, limit: int = 256) -> list[bytes]:
        if self.link_only:
            return self._receive_link_only(limit)
        out = []
        for _ in range(limit):
            try:
                data, _addr = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            out.append(data)
        return out

    def _receive_link_only(self, limit: int) -> list[bytes]:
        out = []
        for _ in range(limit):
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(65535, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            reason = self._refusal(ancdata)
            if reason is None:
                out.append(data)
            else:
                self.filtered[reason] = self.filtered.get(reason, 0) + 1
        return out

    def _refusal(self, ancdata: list[tuple[int, int, bytes]]) -> str | None:
        """Why a zone datagram is refused, from its IP header's destination
        and TTL (ancillary data), or None to accept it."""
        destination: bytes | None = None
        ttl: int | None = None
        for level, kind, value in ancdata:
            if level != socket.IPPROTO_IP:
                continue
            if kind == IP_PKTINFO and len(value) >= 12:
                destination = value[8:12]  # struct in_pktinfo: ifindex, spec_dst, addr
            elif kind == socket.IP_TTL and len(value) >= 4:
                (ttl,) = struct.unpack("=i", value[:4])
        if destination != self._group:
            return "not-to-group"
        if ttl != LINK_TTL:
            return "ttl-not-255"
        return None

    def close(self) -> None:
        self.sock.close()
