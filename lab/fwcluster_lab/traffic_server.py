"""Traffic server: a TCP echo and a UDP responder that count, one thread, selectors.

Runs in a server namespace for the life of the lab. TCP: echoes every byte
back and counts connections and bytes, attributed to the run whose tag is in
the first record of the connection. UDP: answers each well-formed request
with itself and remembers, per run, which (flow, sequence) it has seen, so a
request that arrives twice (a frame forwarded by two nodes) is counted as a
duplicate. The client asks for the counters of its run over a Unix socket
(`stats <run tag hex>`), which works across network namespaces because it is
a path in the shared filesystem.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import resource
import selectors
import signal
import socket
import time
from pathlib import Path
from typing import Any

from .traffic_stats import RECORD_SIZE, parse_record

MAX_LIFETIME_S = 24 * 3600.0  # hard cap: a forgotten server exits by itself
MAX_RUNS = 16  # per-run counters kept; the oldest are forgotten
# Seen requests are a bitmap per (run, flow): an hour at 50/s is 22 KB per flow.
MAX_FLOWS_PER_RUN = 4096
MAX_SEQ_TRACKED = 1 << 24  # 2 MB per flow at most; later sequence numbers are untracked
MAX_TCP_BACKLOG = 1 << 20  # bytes queued for one slow TCP reader before we stop reading it
UDP_BATCH = 256  # datagrams read per readiness event, so TCP is not starved


class RunCounters:
    def __init__(self) -> None:
        self.tcp_connections = 0
        self.tcp_bytes_in = 0
        self.udp_requests = 0
        self.udp_duplicate_requests = 0
        self.udp_untracked = 0
        self.udp_unique_requests = 0
        self.seen: dict[int, bytearray] = {}  # flow -> bit per sequence number

    def mark(self, flow: int, seq: int) -> bool | None:
        """Record a request; True if it was seen before, None if it cannot be tracked."""
        bits = self.seen.get(flow)
        if bits is None:
            if len(self.seen) >= MAX_FLOWS_PER_RUN:
                return None
            bits = self.seen[flow] = bytearray()
        if seq >= MAX_SEQ_TRACKED:
            return None
        byte, bit = seq >> 3, 1 << (seq & 7)
        if byte >= len(bits):
            bits.extend(bytes(max(byte + 1 - len(bits), len(bits))))
        if bits[byte] & bit:
            return True
        bits[byte] |= bit
        self.udp_unique_requests += 1
        return False

    def as_dict(self) -> dict[str, int]:
        return {
            "tcp_connections": self.tcp_connections,
            "tcp_bytes_in": self.tcp_bytes_in,
            "udp_requests": self.udp_requests,
            "udp_unique_requests": self.udp_unique_requests,
            "udp_duplicate_requests": self.udp_duplicate_requests,
            "udp_untracked": self.udp_untracked,
        }


class TcpConn:
    __slots__ = ("head", "pending", "run", "sock", "unattributed")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.run: RunCounters | None = None
        self.pending = bytearray()
        self.head = bytearray()  # the first record, until it is complete
        self.unattributed = 0


class Server:
    def __init__(self, addresses: list[str], port: int, control: Path) -> None:
        self.sel = selectors.DefaultSelector()
        self.runs: collections.OrderedDict[int, RunCounters] = collections.OrderedDict()
        self.totals = collections.Counter[str]()
        self.conns: dict[int, TcpConn] = {}
        self.stopping = False
        # One TCP listener and one UDP socket per address (IPv4 and IPv6 of a
        # dual-stack lab): bound to the address, so replies leave from it.
        for address in addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            listener = socket.socket(family, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((address, port))
            listener.listen(4096)
            listener.setblocking(False)
            self.sel.register(listener, selectors.EVENT_READ, self._accept)
            udp = socket.socket(family, socket.SOCK_DGRAM)
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            udp.bind((address, port))
            udp.setblocking(False)
            self.sel.register(udp, selectors.EVENT_READ, self._udp_read)

        control.parent.mkdir(parents=True, exist_ok=True)
        control.unlink(missing_ok=True)
        self.control_path = control
        self.control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.control.bind(str(control))
        self.control.listen(16)
        self.control.setblocking(False)
        self.sel.register(self.control, selectors.EVENT_READ, self._control)

    def run_counters(self, tag: int) -> RunCounters:
        run = self.runs.get(tag)
        if run is None:
            run = self.runs[tag] = RunCounters()
            while len(self.runs) > MAX_RUNS:
                self.runs.popitem(last=False)
        return run

    # TCP ------------------------------------------------------------------

    def _accept(self, fd: int, _mask: int) -> None:
        listener = self.sel.get_key(fd).fileobj
        assert isinstance(listener, socket.socket)
        for _i in range(256):
            try:
                sock, _addr = listener.accept()
            except BlockingIOError:
                return
            except OSError:
                self.totals["tcp_accept_errors"] += 1
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conns[sock.fileno()] = TcpConn(sock)
            self.sel.register(sock, selectors.EVENT_READ, self._tcp_event)
            self.totals["tcp_accepted"] += 1

    def _tcp_close(self, conn: TcpConn, reason: str) -> None:
        self.totals[f"tcp_{reason}"] += 1
        self.conns.pop(conn.sock.fileno(), None)
        self.sel.unregister(conn.sock)
        conn.sock.close()

    def _tcp_event(self, fd: int, mask: int) -> None:
        conn = self.conns.get(fd)
        if conn is None:
            return
        if mask & selectors.EVENT_WRITE:
            self._tcp_flush(conn)
            if fd not in self.conns:
                return
        if not mask & selectors.EVENT_READ or len(conn.pending) > MAX_TCP_BACKLOG:
            return
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except ConnectionResetError:
            self._tcp_close(conn, "resets")
            return
        except OSError:
            self._tcp_close(conn, "errors")
            return
        if not data:
            self._tcp_close(conn, "eof")
            return
        if conn.run is None:
            self._attribute(conn, data)
        else:
            conn.run.tcp_bytes_in += len(data)
        self.totals["tcp_bytes_in"] += len(data)
        self._tcp_send(conn, data)

    def _attribute(self, conn: TcpConn, data: bytes) -> None:
        """Find the run of a connection from its first record, even if that
        record arrives in pieces; bytes before that are counted once it is known."""
        conn.head += data[: RECORD_SIZE - len(conn.head)]
        conn.unattributed += len(data)
        if len(conn.head) < RECORD_SIZE:
            return
        first = parse_record(bytes(conn.head))
        if first is None:  # not a traffic client: counted in the totals only
            return
        conn.run = self.run_counters(first[0])
        conn.run.tcp_connections += 1
        conn.run.tcp_bytes_in += conn.unattributed

    def _tcp_send(self, conn: TcpConn, data: bytes) -> None:
        if conn.pending:  # already waiting for the socket: keep the byte order
            conn.pending += data
            return
        try:
            n = conn.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError:
            self._tcp_close(conn, "errors")
            return
        self.totals["tcp_bytes_out"] += n
        if n < len(data):
            conn.pending += data[n:]
            self.sel.modify(
                conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, self._tcp_event
            )

    def _tcp_flush(self, conn: TcpConn) -> None:
        try:
            n = conn.sock.send(conn.pending)
        except BlockingIOError:
            return
        except OSError:
            self._tcp_close(conn, "errors")
            return
        self.totals["tcp_bytes_out"] += n
        del conn.pending[:n]
        if not conn.pending:
            self.sel.modify(conn.sock, selectors.EVENT_READ, self._tcp_event)

    # UDP ------------------------------------------------------------------

    def _udp_read(self, fd: int, _mask: int) -> None:
        udp = self.sel.get_key(fd).fileobj
        assert isinstance(udp, socket.socket)
        for _i in range(UDP_BATCH):
            try:
                data, addr = udp.recvfrom(2048)
            except BlockingIOError:
                return
            except OSError:
                self.totals["udp_errors"] += 1
                return
            parsed = parse_record(data)
            if parsed is None:
                self.totals["udp_malformed"] += 1
                continue
            tag, flow, seq = parsed
            run = self.run_counters(tag)
            run.udp_requests += 1
            seen = run.mark(flow, seq)
            if seen is None:
                run.udp_untracked += 1
            elif seen:
                run.udp_duplicate_requests += 1
            self.totals["udp_requests"] += 1
            try:
                udp.sendto(data, addr)
            except OSError:
                self.totals["udp_send_errors"] += 1

    # control --------------------------------------------------------------

    def stats(self, tag: int | None) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out: dict[str, Any] = {
            "totals": dict(self.totals),
            "tcp_open": len(self.conns),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        }
        if tag is not None:
            run = self.runs.get(tag)
            out["run"] = run.as_dict() if run is not None else None
        return out

    def _control(self, _fd: int, _mask: int) -> None:
        try:
            sock, _addr = self.control.accept()
        except OSError:
            return
        with sock:
            # The client writes its one-line request right after connecting; a short
            # timeout keeps a silent peer from stalling the echo of every stream.
            sock.settimeout(0.2)
            try:
                line = sock.recv(256).decode("ascii", "replace").strip().split()
                tag = int(line[1], 16) if len(line) > 1 else None
                if not line or line[0] != "stats":
                    raise ValueError("unknown command")
                reply = self.stats(tag)
            except (OSError, ValueError, IndexError) as exc:
                reply = {"error": str(exc)}
            with contextlib.suppress(OSError):
                sock.sendall(json.dumps(reply).encode() + b"\n")

    # loop -----------------------------------------------------------------

    def serve(self, max_lifetime: float) -> None:
        deadline = time.monotonic() + max_lifetime
        while not self.stopping and time.monotonic() < deadline:
            for key, mask in self.sel.select(timeout=0.5):
                key.data(key.fd, mask)
        self.control_path.unlink(missing_ok=True)


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--listen", required=True, action="append", help="address to bind (repeatable)")
    p.add_argument("--port", type=int, default=7001)
    p.add_argument("--control", type=Path, required=True, help="Unix socket for counters")
    p.add_argument("--max-lifetime", type=float, default=MAX_LIFETIME_S)
    args = p.parse_args(argv)
    raise_nofile()
    server = Server(args.listen, args.port, args.control)

    def on_signal(_signo: int, _frame: object) -> None:
        server.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"traffic server pid {os.getpid()} on {args.listen} port {args.port}", flush=True)
    server.serve(min(args.max_lifetime, MAX_LIFETIME_S))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
