"""The traffic client and server as real processes on loopback: exact counts
when nothing goes wrong, and the counters catching what does (server death,
duplicated datagrams). No namespaces, so these run without the lab."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = os.geteuid() == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.control = tmp / "server.sock"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fwcluster_lab.traffic_server", "--listen", "127.0.0.1",
             "--port", str(self.port), "--control", str(self.control)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not self.control.exists():
            assert time.monotonic() < deadline, "server did not start"
            assert self.proc.poll() is None, "server exited"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path)
    yield srv
    srv.stop()


def client_argv(port: int, out: Path, *opts: str, control: Path | None = None) -> list[str]:
    argv = [sys.executable, "-m", "fwcluster_lab.traffic", "--server", "127.0.0.1",
            "--port", str(port), "--json", str(out), "--drain", "1", *opts]  # fmt: skip
    if control is not None:
        argv += ["--control", str(control)]
    return argv


def run_client(argv: list[str], out: Path) -> dict[str, Any]:
    subprocess.run(argv, check=True, timeout=60, stdout=subprocess.DEVNULL)
    summary: dict[str, Any] = json.loads(out.read_text())
    return summary


def test_clean_run_counts_every_record_and_byte(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    opts = ["--tcp", "20", "--udp", "5", "--duration", "1.0"]
    if ROOT:
        opts += ["--ping", "2"]
    s = run_client(client_argv(server.port, out, *opts, control=server.control), out)
    tcp, udp, run = s["tcp"], s["udp"], s["server"]["run"]
    assert (s["connections"], s["established"], s["lost"], s["duplicates"]) == (20, 20, 0, 0)
    assert tcp["ok"] == 20 and tcp["broken"] == {}
    # one record per stream per 20 ms for 1 s, give or take the connect time
    assert 20 * 40 <= tcp["records_sent"] <= 20 * 51
    assert tcp["bytes_sent"] == tcp["bytes_echoed"] == run["tcp_bytes_in"]
    assert run["tcp_connections"] == 20
    assert udp["sent"] == udp["replied"] == udp["server_requests"] == run["udp_unique_requests"]
    assert 5 * 40 <= udp["sent"] <= 5 * 51
    assert udp["lost"] == 0 and udp["server_duplicate_requests"] == 0
    if ROOT:
        assert s["ping"]["sent"] == s["ping"]["replied"] > 0
    assert sum(s["stall_histogram_ms"].values()) == 20


def test_server_death_breaks_every_stream_and_loses_datagrams(
    server: Server, tmp_path: Path
) -> None:
    out = tmp_path / "s.json"
    argv = client_argv(server.port, out, "--tcp", "10", "--udp", "3", "--duration", "2.0")
    client = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    time.sleep(1.0)
    server.proc.kill()  # the kernel resets every accepted connection
    assert client.wait(timeout=30) == 0
    s = json.loads(out.read_text())
    assert s["established"] == 10
    assert s["lost"] == 10
    assert sum(s["tcp"]["broken"].values()) == 10
    assert set(s["tcp"]["broken"]) <= {"reset", "eof", "broken-pipe"}
    assert s["udp"]["lost"] > 0
    assert s["udp"]["replied"] > 0  # the first second was answered


class DuplicatingRelay:
    """Forwards each UDP request twice to the server and each reply once back:
    what two firewall nodes forwarding the same frame do to a flow. One back
    socket per client address, so replies find their flow."""

    def __init__(self, server_port: int) -> None:
        self.server_port = server_port
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.port = self.front.getsockname()[1]
        self.backs: dict[Any, socket.socket] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def back_for(self, addr: Any) -> socket.socket:
        if addr not in self.backs:
            back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            back.connect(("127.0.0.1", self.server_port))
            self.backs[addr] = back
        return self.backs[addr]

    def loop(self) -> None:
        deadline = time.monotonic() + 30  # bounded even if a test forgets to stop it
        while not self.done.is_set() and time.monotonic() < deadline:
            by_sock = {b: a for a, b in self.backs.items()}
            ready, _, _ = select.select([self.front, *by_sock], [], [], 0.05)
            for sock in ready:
                if sock is self.front:
                    data, addr = self.front.recvfrom(2048)
                    back = self.back_for(addr)
                    back.send(data)
                    back.send(data)
                else:
                    self.front.sendto(sock.recv(2048), by_sock[sock])

    def close(self) -> None:
        self.done.set()
        self.thread.join(timeout=5)
        self.front.close()
        for back in self.backs.values():
            back.close()


def test_duplicated_requests_are_counted_on_both_ends(server: Server, tmp_path: Path) -> None:
    relay = DuplicatingRelay(server.port)
    try:
        out = tmp_path / "s.json"
        argv = client_argv(relay.port, out, "--tcp", "0", "--udp", "4", "--duration", "0.5",
                           control=server.control)  # fmt: skip
        s = run_client(argv, out)
    finally:
        relay.close()
    udp = s["udp"]
    assert udp["sent"] > 0 and udp["lost"] == 0
    assert udp["server_requests"] == 2 * udp["sent"]
    assert udp["server_duplicate_requests"] == udp["sent"]
    assert udp["duplicates"] == udp["sent"]  # two replies per request reach the client
    assert s["duplicates"] == 2 * udp["sent"]


def test_nothing_listening_fails_every_connection(tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    s = run_client(client_argv(free_port(), out, "--tcp", "5", "--duration", "0.3"), out)
    assert s["established"] == 0 and s["lost"] == 5
    assert s["tcp"]["broken"] == {"connect-refused": 5}


def test_sigterm_ends_the_run_early_with_a_summary(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    status = tmp_path / "status.json"
    argv = client_argv(server.port, out, "--tcp", "5", "--duration", "600", "--status", str(status))
    client = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not status.exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert json.loads(status.read_text())["established"] == 5
    time.sleep(0.3)
    client.send_signal(signal.SIGTERM)
    assert client.wait(timeout=20) == 0
    s = json.loads(out.read_text())
    assert s["lost"] == 0 and 0.2 < s["duration_s"] < 10


def test_server_attributes_a_connection_whose_first_record_arrives_in_pieces(
    server: Server,
) -> None:
    from fwcluster_lab.traffic import query_server
    from fwcluster_lab.traffic_stats import make_record

    tag = 0x5EED0001
    data = make_record(tag, 0, 0) + make_record(tag, 0, 1)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(data), 5):  # 5-byte pieces, each its own segment
            s.sendall(data[i : i + 5])
            time.sleep(0.01)
        echoed = b""
        while len(echoed) < len(data):
            echoed += s.recv(64)
    assert echoed == data
    run = query_server(server.control, tag)["run"]
    assert run == {**run, "tcp_connections": 1, "tcp_bytes_in": len(data)}
