"""Traffic client: long-lived TCP streams, UDP request/response flows and pings
through the cluster, every answer checked and counted. One thread, selectors.

Every flow sends one 16-byte record per interval (default 20 ms). The send
times of all flows are spread over the interval by a wheel of 1 ms slots, so
the load is even and a flow's records leave at a fixed rate. TCP streams
expect their own records back in order and byte for byte; UDP flows and
pings expect one reply per request. What counts as lost, stalled or
duplicate is defined in traffic_stats.py and docs/lab.md.

A run has three phases: connect (all streams at once; the status file is
written once every stream connected or failed), send (until --duration or
SIGTERM/SIGINT), drain (no more sends; wait up to --drain seconds for the
answers still owed). Then the client asks the server for its counters of this
run, writes the JSON summary and prints one line. Every phase is bounded in
time, and the flow counts by hard caps.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import resource
import secrets
import selectors
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

from .traffic_server import raise_nofile
from .traffic_stats import (
    RECORD_SIZE,
    DatagramFlowStats,
    StreamStats,
    human_line,
    make_record,
    parse_record,
    summarize,
)

MAX_DURATION_S = 3600.0
MAX_TCP, MAX_UDP, MAX_PING = 10_000, 2_000, 1_000
SLOT_S = 0.001
WBUF_CAP = 64 * 1024  # bytes queued in user space per stream before sends are skipped
HOUSEKEEPING_S = 0.1
ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY = 8, 0
ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY = 128, 129
ICMP_HEADER = struct.Struct("!BBHHH")

CONNECTING, OPEN, DONE = 0, 1, 2


def icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp_echo(ident: int, seq16: int, payload: bytes, v6: bool = False) -> bytes:
    if v6:  # the kernel fills in the ICMPv6 checksum (it covers the IPv6 pseudo-header)
        return ICMP_HEADER.pack(ICMPV6_ECHO_REQUEST, 0, 0, ident, seq16) + payload
    head = ICMP_HEADER.pack(ICMP_ECHO_REQUEST, 0, 0, ident, seq16)
    csum = icmp_checksum(head + payload)
    return ICMP_HEADER.pack(ICMP_ECHO_REQUEST, 0, csum, ident, seq16) + payload


def _break_reason(exc: OSError) -> str:
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, BrokenPipeError):
        return "broken-pipe"
    if exc.errno == errno.ETIMEDOUT:
        return "kernel-timeout"
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    return "error"


class TcpStream:
    __slots__ = ("rbuf", "sock", "state", "stats", "wbuf")

    def __init__(self, flow: int) -> None:
        self.stats = StreamStats(flow)
        self.sock: socket.socket | None = None
        self.state = CONNECTING
        self.rbuf = bytearray()
        self.wbuf = bytearray()


class UdpFlow:
    __slots__ = ("sock", "stats")

    def __init__(self, flow: int, sock: socket.socket) -> None:
        self.stats = DatagramFlowStats(flow)
        self.sock = sock


class Client:
    def __init__(self, args: argparse.Namespace, run_tag: int) -> None:
        self.args = args
        self.tag = run_tag
        self.server = (args.server, args.port)
        # The family follows the server address: one client process per family,
        # so every counter of a summary is one family's.
        self.v6 = ":" in args.server
        self.family = socket.AF_INET6 if self.v6 else socket.AF_INET
        self.sel = selectors.DefaultSelector()
        self.streams = [TcpStream(i) for i in range(args.tcp)]
        self.udp: list[UdpFlow] = []
        self.ping = [DatagramFlowStats(i) for i in range(args.ping)]
        self.ping_sock: socket.socket | None = None
        self.ping_id_base = run_tag & 0xFFFF
        self.stop_requested = False
        self.counters = {"late_slots": 0, "skipped_sends": 0, "udp_errors": 0, "ping_errors": 0}
        self.max_lag = 0.0
        self.connect_started = 0.0
        self.ready_written = False

    # setup ----------------------------------------------------------------

    def open_all(self, now: float) -> None:
        self.connect_started = now
        for st in self.streams:
            sock = socket.socket(self.family, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            st.sock = sock
            err = sock.connect_ex(self.server)
            if err not in (0, errno.EINPROGRESS):
                self._break(st, "connect-failed")
                continue
            self.sel.register(sock, selectors.EVENT_WRITE, (self._tcp_event, st))
        for i in range(self.args.udp):
            sock = socket.socket(self.family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect(self.server)  # a connected socket only hears its own server
            flow = UdpFlow(i, sock)
            self.udp.append(flow)
            self.sel.register(sock, selectors.EVENT_READ, (self._udp_event, flow))
        if self.ping:
            proto = socket.IPPROTO_ICMPV6 if self.v6 else socket.IPPROTO_ICMP
            self.ping_sock = socket.socket(self.family, socket.SOCK_RAW, proto)
            self.ping_sock.setblocking(False)
            self.ping_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.sel.register(self.ping_sock, selectors.EVENT_READ, (self._ping_event, None))

    def build_wheel(self, nslots: int) -> list[tuple[list[TcpStream], list[UdpFlow], list[int]]]:
        """Spread every flow's send time evenly over the interval."""
        wheel: list[tuple[list[TcpStream], list[UdpFlow], list[int]]] = [
            ([], [], []) for _ in range(nslots)
        ]
        senders: list[tuple[int, Any]] = [(0, s) for s in self.streams]
        senders += [(1, u) for u in self.udp] + [(2, p.flow) for p in self.ping]
        for i, (kind, item) in enumerate(senders):
            wheel[(i * nslots) // max(1, len(senders))][kind].append(item)
        return wheel

    # TCP ------------------------------------------------------------------

    def _break(self, st: TcpStream, reason: str) -> None:
        st.stats.break_(reason)
        self._close(st)

    def _close(self, st: TcpStream) -> None:
        st.state = DONE
        if st.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(st.sock)
            st.sock.close()
            st.sock = None

    def _tcp_event(self, st: TcpStream, mask: int, now: float) -> None:
        sock = st.sock
        if sock is None:
            return
        if st.state == CONNECTING:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err != 0:
                self._break(
                    st, "connect-refused" if err == errno.ECONNREFUSED else "connect-failed"
                )
                return
            st.state = OPEN
            st.stats.established = True
            self.sel.modify(sock, selectors.EVENT_READ, (self._tcp_event, st))
            return
        if mask & selectors.EVENT_WRITE and st.wbuf:
            self._tcp_flush(st)
            if st.state != OPEN:
                return
        if mask & selectors.EVENT_READ:
            self._tcp_read(st, sock, now)

    def _tcp_read(self, st: TcpStream, sock: socket.socket, now: float) -> None:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            self._break(st, _break_reason(exc))
            return
        if not data:
            self._break(st, "eof")
            return
        stats = st.stats
        if not st.rbuf and len(data) == RECORD_SIZE:  # the common case: one whole record
            if data != make_record(self.tag, stats.flow, stats.records_echoed):
                self._break(st, "corrupt")
                return
            stats.echoed(now)
            if stats.records_echoed > stats.records_sent:
                self._break(st, "corrupt")
            return
        st.rbuf += data
        pos = 0
        while len(st.rbuf) - pos >= RECORD_SIZE:
            expected = make_record(self.tag, stats.flow, stats.records_echoed)
            if st.rbuf[pos : pos + RECORD_SIZE] != expected:
                self._break(st, "corrupt")
                return
            stats.echoed(now)
            pos += RECORD_SIZE
        del st.rbuf[:pos]
        if stats.records_echoed > stats.records_sent:  # more came back than was sent
            self._break(st, "corrupt")

    def _tcp_send(self, st: TcpStream, now: float) -> None:
        if st.state != OPEN or st.sock is None:
            return
        if len(st.wbuf) >= WBUF_CAP:
            self.counters["skipped_sends"] += 1
            return
        record = make_record(self.tag, st.stats.flow, st.stats.records_sent)
        st.stats.sent(now)
        if st.wbuf:
            st.wbuf += record
            return
        try:
            n = st.sock.send(record)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self._break(st, _break_reason(exc))
            return
        if n < RECORD_SIZE:
            st.wbuf += record[n:]
            self.sel.modify(
                st.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, (self._tcp_event, st)
            )

    def _tcp_flush(self, st: TcpStream) -> None:
        assert st.sock is not None
        try:
            n = st.sock.send(st.wbuf)
        except BlockingIOError:
            return
        except OSError as exc:
            self._break(st, _break_reason(exc))
            return
        del st.wbuf[:n]
        if not st.wbuf:
            self.sel.modify(st.sock, selectors.EVENT_READ, (self._tcp_event, st))

    # UDP and ping ---------------------------------------------------------

    def _udp_send(self, flow: UdpFlow, now: float) -> None:
        seq = flow.stats.request(now)
        try:
            flow.sock.send(make_record(self.tag, flow.stats.flow, seq))
        except OSError:  # e.g. ECONNREFUSED left by an earlier ICMP error: the request is lost
            self.counters["udp_errors"] += 1

    def _udp_event(self, flow: UdpFlow, _mask: int, now: float) -> None:
        for _ in range(64):
            try:
                data = flow.sock.recv(2048)
            except BlockingIOError:
                return
            except OSError:
                self.counters["udp_errors"] += 1
                return
            parsed = parse_record(data)
            if parsed is None or parsed[0] != self.tag or parsed[1] != flow.stats.flow:
                flow.stats.foreign += 1
                continue
            flow.stats.reply(parsed[2], now)

    def _ping_send(self, index: int, now: float) -> None:
        assert self.ping_sock is not None
        stats = self.ping[index]
        seq = stats.request(now)
        ident = (self.ping_id_base + index) & 0xFFFF
        packet = icmp_echo(ident, seq & 0xFFFF, make_record(self.tag, index, seq), self.v6)
        try:
            self.ping_sock.sendto(packet, (self.server[0], 0))
        except OSError:
            self.counters["ping_errors"] += 1

    def _ping_event(self, _unused: None, _mask: int, now: float) -> None:
        assert self.ping_sock is not None
        for _ in range(256):
            try:
                data = self.ping_sock.recv(2048)
            except BlockingIOError:
                return
            except OSError:
                self.counters["ping_errors"] += 1
                return
            if self.v6:  # raw ICMPv6 sockets get the message without the IPv6 header
                icmp, reply_type = data, ICMPV6_ECHO_REPLY
            else:
                if len(data) < 20:
                    continue
                icmp, reply_type = data[(data[0] & 0x0F) * 4 :], ICMP_ECHO_REPLY
            if len(icmp) != ICMP_HEADER.size + RECORD_SIZE or icmp[0] != reply_type:
                continue  # not one of ours (other ICMP, or another tool's ping)
            parsed = parse_record(icmp[ICMP_HEADER.size :])
            if parsed is None or parsed[0] != self.tag or not 0 <= parsed[1] < len(self.ping):
                continue
            self.ping[parsed[1]].reply(parsed[2], now)

    # loop -----------------------------------------------------------------

    def _housekeeping(self, now: float, sending: bool) -> None:
        connecting = 0
        for st in self.streams:
            if st.state == CONNECTING:
                connecting += 1
                if now - self.connect_started > self.args.connect_timeout:
                    self._break(st, "connect-timeout")
            elif st.state == OPEN and st.stats.outstanding > 0:
                g = st.stats.gaps
                last = g.last_answer if g.last_answer is not None else g.first_send
                if last is not None and now - last > self.args.stream_timeout:
                    self._break(st, "timeout")
        if not self.ready_written and (connecting == 0 or not sending):
            self.ready_written = True
            self._write_status({"ready": True, "established": self.established()})

    def established(self) -> int:
        return sum(1 for s in self.streams if s.stats.established)

    def _write_status(self, data: dict[str, Any]) -> None:
        if self.args.status is None:
            return
        data = {"run": f"{self.tag:08x}", "pid": os.getpid(), **data}
        tmp = self.args.status.with_suffix(".tmp")
        tmp.write_text(json.dumps(data) + "\n")
        os.replace(tmp, self.args.status)

    def _all_answered(self) -> bool:
        return (
            all(st.state != OPEN or st.stats.outstanding == 0 for st in self.streams)
            and all(u.stats.lost == 0 for u in self.udp)
            and all(p.lost == 0 for p in self.ping)
        )

    def run(self) -> dict[str, Any]:
        args = self.args
        interval = args.interval_ms / 1000.0
        nslots = max(1, round(interval / SLOT_S))
        slot = interval / nslots
        server0 = query_server(args.control, self.tag) if args.control else {}
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.monotonic()
        self.open_all(start)
        wheel = self.build_wheel(nslots)
        t0 = time.monotonic()
        stop_at = t0 + min(args.duration, MAX_DURATION_S)
        next_slot = 0
        sending = True
        drain_until = 0.0
        next_housekeeping = t0
        end = t0
        while True:
            now = time.monotonic()
            if sending and (now >= stop_at or self.stop_requested):
                sending = False
                drain_until = now + args.drain
                stop_at = now
            if sending:
                due = int((now - t0) / slot)
                if due >= next_slot:
                    if due - next_slot >= nslots:  # fell behind a whole interval: skip, count
                        self.counters["late_slots"] += due - next_slot - nslots + 1
                        next_slot = due - nslots + 1
                    self.max_lag = max(self.max_lag, now - (t0 + next_slot * slot))
                    for j in range(next_slot, due + 1):
                        tcp, udp, ping = wheel[j % nslots]
                        for st in tcp:
                            self._tcp_send(st, now)
                        for u in udp:
                            self._udp_send(u, now)
                        for p in ping:
                            self._ping_send(p, now)
                    next_slot = due + 1
                timeout = max(0.0, t0 + next_slot * slot - time.monotonic())
            else:
                if now >= drain_until or self._all_answered():
                    end = now
                    break
                timeout = 0.01
            if now >= next_housekeeping:
                self._housekeeping(now, sending)
                next_housekeeping = now + HOUSEKEEPING_S
            events = self.sel.select(timeout)
            if events:
                now = time.monotonic()
                for key, mask in events:
                    callback, item = key.data
                    callback(item, mask, now)
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        for st in self.streams:
            st.stats.finish(end)
            if st.state == CONNECTING:
                st.stats.break_("connect-timeout")
            self._close(st)
        for u in self.udp:
            u.stats.finish(end)
            u.sock.close()
        for p in self.ping:
            p.finish(end)
        if self.ping_sock is not None:
            self.ping_sock.close()
        cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        wall = max(1e-9, end - start)
        server = query_server(args.control, self.tag) if args.control else None
        if server is not None and "cpu_s" in server and "cpu_s" in server0:
            # The server outlives runs: its CPU for this run is the difference.
            server["run_cpu_s"] = round(server["cpu_s"] - server0["cpu_s"], 3)
        return summarize(
            run_tag=self.tag,
            interval_s=interval,
            duration_s=stop_at - t0,
            streams=[s.stats for s in self.streams],
            udp=[u.stats for u in self.udp],
            ping=self.ping,
            server=server,
            stall_threshold_ms=args.stall_threshold_ms,
            extra={
                "client": {
                    "cpu_s": round(cpu_s, 3),
                    "cpu_share": round(cpu_s / wall, 3),
                    "max_loop_lag_ms": round(self.max_lag * 1000.0, 1),
                    **self.counters,
                },
            },
        )


def query_server(path: Path, tag: int) -> dict[str, Any]:
    """The server's counters for this run, over its Unix control socket."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            s.connect(str(path))
            s.sendall(f"stats {tag:08x}\n".encode())
            buf = b""
            while not buf.endswith(b"\n") and len(buf) < 1 << 20:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        reply: dict[str, Any] = json.loads(buf)
        return reply
    except (OSError, ValueError) as exc:
        return {"error": f"server counters unavailable: {exc}"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="fwcluster lab traffic client")
    p.add_argument("--server", required=True)
    p.add_argument("--port", type=int, default=7001)
    p.add_argument("--tcp", type=int, default=10, help="long-lived TCP streams")
    p.add_argument("--udp", type=int, default=0, help="UDP request/response flows")
    p.add_argument("--ping", type=int, default=0, help="ICMP echo flows")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of sending")
    p.add_argument("--interval-ms", type=float, default=20.0, help="per flow, between records")
    p.add_argument("--connect-timeout", type=float, default=5.0)
    p.add_argument("--stream-timeout", type=float, default=10.0, help="no echo for this: broken")
    p.add_argument("--drain", type=float, default=2.0, help="seconds to wait for late answers")
    p.add_argument(
        "--stall-threshold-ms",
        type=float,
        help="a gap longer than this is a stall (default: 3 intervals, at least 50)",
    )
    p.add_argument("--json", type=Path, help="write the summary here")
    p.add_argument("--status", type=Path, help="write {ready, established} here once connected")
    p.add_argument("--control", type=Path, help="the server's Unix control socket")
    p.add_argument("--run-tag", type=lambda s: int(s, 16), help="hex; random by default")
    args = p.parse_args(argv)
    if not 0 <= args.tcp <= MAX_TCP or not 0 <= args.udp <= MAX_UDP:
        p.error(f"--tcp must be 0..{MAX_TCP} and --udp 0..{MAX_UDP}")
    if not 0 <= args.ping <= MAX_PING:
        p.error(f"--ping must be 0..{MAX_PING}")
    if not 0 < args.duration <= MAX_DURATION_S:
        p.error(f"--duration must be in (0, {MAX_DURATION_S}]")
    if not 1.0 <= args.interval_ms <= 10_000.0:
        p.error("--interval-ms must be 1..10000")
    if not 0 <= args.drain <= 60 or not 0 < args.connect_timeout <= 60:
        p.error("--drain must be 0..60 and --connect-timeout in (0, 60]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile()
    client = Client(args, args.run_tag if args.run_tag is not None else secrets.randbits(32))

    def on_signal(_signo: int, _frame: object) -> None:
        client.stop_requested = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    summary = client.run()
    if args.json is not None:
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, args.json)
    print(human_line(summary), flush=True)
    client._write_status({"ready": True, "done": True, "established": client.established()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
