"""The helper tests' FTP server and client on loopback (no namespaces, no
helper): a whole file in passive and active mode over IPv4 (PASV/PORT) and
IPv6 (EPSV/EPRT), and the server's refusals of malformed EPRT commands."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from test_traffic_loopback import free_port

from fwcluster_lab import ftp_lab


@pytest.fixture(params=["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    address, port = str(request.param), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fwcluster_lab.ftp_lab", "server", "--address", address,
         "--port", str(port), "--rate", "5000000"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((address, port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "no server"
                time.sleep(0.05)
        yield address, port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("mode", ["passive", "active"])
def test_a_whole_file_in_either_mode_and_family(server: tuple[str, int], mode: str) -> None:
    address, port = server
    result = ftp_lab.fetch(address, mode, 100_000, pause=False, port=port)
    assert result["error"] is None, result
    assert (result["received"], result["intact"], result["duplicates"]) == (100_000, True, 0)


def test_bad_extended_commands_are_refused(server: tuple[str, int]) -> None:
    address, port = server
    other = "1|192.0.2.1" if ":" in address else "2|2001:db8::1"  # the other family
    with socket.create_connection((address, port), timeout=5) as s, s.makefile("rwb") as f:
        assert f.readline().startswith(b"220")
        for command, reply in (
            (f"EPRT |{other}|2000|", b"501"),
            ("EPRT |3|x|2000|", b"501"),
            ("EPRT nonsense", b"501"),
            ("EPRT |1|127.0.0.1|70000|", b"501"),
            ("EPSV", b"229"),
        ):
            f.write(command.encode() + b"\r\n")
            f.flush()
            assert f.readline().startswith(reply), command
