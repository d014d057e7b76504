"""A small FTP server and client for the helper tests: just enough of RFC 959
(USER, PASS, TYPE, PASV, PORT, RETR, NOOP, QUIT) and of RFC 2428 for IPv6
(EPSV, EPRT) to move one file through the cluster's FTP helper in passive or
active mode, slowly enough that a node can be killed or drained in the middle.
The server speaks the family of its address; the client (Python's ftplib)
uses PASV/PORT over IPv4 and EPSV/EPRT over IPv6, as the kernel's FTP helper
expects them.

The file ``data-<size>.bin`` is `size` bytes of a fixed pattern, so the client can tell a
transfer that is short, long or corrupted from a good one without the server
telling it anything. The client's result is one JSON line on stdout:

    {"mode": "passive", "expected": 400000, "received": 400000,
     "intact": true, "duplicates": 0, "seconds": 2.1, "error": null}

TCP delivers each byte once to the application, so a duplicate delivered by
two nodes shows up as extra or out-of-pattern bytes, never as a repeat count:
`duplicates` counts bytes beyond the file's size.

The client prints ``CONTROL <its port>`` once connected and ``DATA <port>``
once the data connection is announced (the port the data connection goes
to), so a test can find both in the nodes' conntrack tables.

`--pause` makes the client stop after the data connection was announced
(PASV answered, or PORT accepted) and before it is used: it prints
``READY <port>`` and waits for a line on stdin, so a test can kill the
control connection's owner exactly between the two.

    python -m fwcluster_lab.ftp_lab server --address 203.0.113.100
    python -m fwcluster_lab.ftp_lab client --server 203.0.113.100 --mode active --pause
"""

from __future__ import annotations

import argparse
import ftplib
import ipaddress
import json
import re
import socket
import sys
import threading
import time
from typing import Any

FTP_PORT = 21
FILE_NAME = re.compile(r"data-([0-9]{1,9})\.bin")  # data-<size>.bin
CHUNK = 8192
MAX_SIZE = 64 << 20  # bounded transfers only
TIMEOUT = 20.0  # seconds any single socket operation may wait


def pattern(offset: int, length: int) -> bytes:
    """Bytes offset..offset+length of the file: a 251-byte cycle (a prime, so
    a shifted or repeated chunk never lines up with the pattern again)."""
    return bytes((offset + i) % 251 for i in range(length))


# -- server ------------------------------------------------------------------------


class _Session:
    """One control connection: commands in, replies out, one data transfer at a time."""

    def __init__(self, conn: socket.socket, address: str, rate: int) -> None:
        self.conn = conn
        self.address = address
        self.family = family_of(address)
        self.rate = rate
        self.passive: socket.socket | None = None
        self.active: tuple[str, int] | None = None
        self.reader = conn.makefile("rb")

    def reply(self, text: str) -> None:
        self.conn.sendall(text.encode() + b"\r\n")

    def run(self) -> None:
        self.reply("220 fwcluster lab ftp ready")
        for raw in self.reader:
            line = raw.decode("latin-1").strip()
            cmd, _, arg = line.partition(" ")
            cmd = cmd.upper()
            if cmd == "QUIT":
                self.reply("221 bye")
                return
            handler = getattr(self, f"cmd_{cmd.lower()}", None)
            if handler is None:
                self.reply("502 not implemented")
            else:
                handler(arg)

    def cmd_user(self, _arg: str) -> None:
        self.reply("331 any password")

    def cmd_pass(self, _arg: str) -> None:
        self.reply("230 logged in")

    def cmd_type(self, _arg: str) -> None:
        self.reply("200 binary it is")

    def cmd_noop(self, _arg: str) -> None:
        self.reply("200 ok")

    def _listen(self) -> int:
        """A fresh passive listener on the server's address; its port."""
        if self.passive is not None:
            self.passive.close()
        self.passive = socket.socket(self.family, socket.SOCK_STREAM)
        self.passive.bind((self.address, 0))
        self.passive.listen(1)
        self.passive.settimeout(TIMEOUT)
        port: int = self.passive.getsockname()[1]
        return port

    def cmd_pasv(self, _arg: str) -> None:
        if self.family != socket.AF_INET:
            self.reply("522 IPv4 only: use EPSV")
            return
        port = self._listen()
        h = self.address.replace(".", ",")
        self.reply(f"227 Entering Passive Mode ({h},{port >> 8},{port & 0xFF}).")

    def cmd_epsv(self, _arg: str) -> None:
        port = self._listen()
        self.reply(f"229 Entering Extended Passive Mode (|||{port}|)")

    def cmd_eprt(self, arg: str) -> None:
        """EPRT |<1 or 2>|<address>|<port>| (RFC 2428)."""
        fields = arg.split(arg[:1]) if arg else []
        try:
            if len(fields) != 5 or fields[1] not in ("1", "2"):
                raise ValueError(arg)
            address, port = str(ipaddress.ip_address(fields[2])), int(fields[3])
            if not 0 < port <= 0xFFFF or family_of(address) != self.family:
                raise ValueError(arg)
        except ValueError:
            self.reply("501 bad EPRT")
            return
        self.active = (address, port)
        self.reply("200 EPRT ok")

    def cmd_port(self, arg: str) -> None:
        try:
            parts = [int(p) for p in arg.split(",")]
            if len(parts) != 6 or not all(0 <= p <= 255 for p in parts):
                raise ValueError(arg)
        except ValueError:
            self.reply("501 bad PORT")
            return
        self.active = (".".join(map(str, parts[:4])), parts[4] << 8 | parts[5])
        self.reply("200 PORT ok")

    def cmd_retr(self, arg: str) -> None:
        m = FILE_NAME.fullmatch(arg)
        size = int(m.group(1)) if m else 0
        if not 0 < size <= MAX_SIZE:
            self.reply("550 no such file")
            return
        try:
            data = self._data_connection()
        except OSError as e:
            self.reply(f"425 no data connection: {e}")
            return
        self.reply(f"150 sending {size} bytes")
        sent = 0
        try:
            with data:
                start = time.monotonic()
                while sent < size:
                    n = min(CHUNK, size - sent)
                    data.sendall(pattern(sent, n))
                    sent += n
                    # pace to `rate` bytes/s so the transfer spans a failover
                    ahead = sent / self.rate - (time.monotonic() - start)
                    if ahead > 0:
                        time.sleep(ahead)
        except OSError as e:
            print(f"ftp server: transfer broken after {sent} bytes: {e}", flush=True)
            self.reply("426 transfer aborted")
            return
        print(f"ftp server: sent {sent} bytes", flush=True)
        self.reply("226 transfer complete")

    def _data_connection(self) -> socket.socket:
        if self.passive is not None:
            listener, self.passive = self.passive, None
            with listener:
                conn, peer = listener.accept()
            # As vsftpd by default: a passive data connection must come from
            # the control connection's address (through NAT: the same
            # translated address, which is what a failover must keep).
            control_peer = self.conn.getpeername()[0]
            if peer[0] != control_peer:
                conn.close()
                raise OSError(f"data connection from {peer[0]}, control from {control_peer}")
            return conn
        if self.active is not None:
            target, self.active = self.active, None
            return socket.create_connection(target, timeout=TIMEOUT)
        raise OSError("no PASV or PORT first")


def family_of(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET


def serve(address: str, port: int, rate: int) -> None:
    """Serve until killed: one thread per control connection."""
    listener = socket.socket(family_of(address), socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))
    listener.listen(16)
    print(f"ftp server: listening on {address}:{port}", flush=True)
    while True:
        conn, _peer = listener.accept()
        conn.settimeout(TIMEOUT * 3)
        session = _Session(conn, address, rate)

        def run(s: _Session = session) -> None:
            try:
                s.run()
            except OSError as e:
                print(f"ftp server: session ended: {e}", flush=True)
            finally:
                s.conn.close()

        threading.Thread(target=run, daemon=True).start()


# -- client ------------------------------------------------------------------------


def fetch(server: str, mode: str, size: int, pause: bool, port: int = FTP_PORT) -> dict[str, Any]:
    """Download the file once; the result dict of the module docstring."""
    result: dict[str, Any] = {
        "mode": mode,
        "expected": size,
        "received": 0,
        "intact": False,
        "duplicates": 0,
        "seconds": 0.0,
        "error": None,
    }
    start = time.monotonic()
    try:
        with ftplib.FTP(timeout=TIMEOUT) as ftp:
            ftp.connect(server, port)
            assert ftp.sock is not None  # connect() made it
            print(f"CONTROL {ftp.sock.getsockname()[1]}", flush=True)
            ftp.login("lab", "lab")
            ftp.voidcmd("TYPE I")
            if mode == "passive":
                host, port = ftp.makepasv()
                listener = None
            else:
                listener = ftp.makeport()
                port = listener.getsockname()[1]
            print(f"DATA {port}", flush=True)
            if pause:
                print(f"READY {port}", flush=True)
                sys.stdin.readline()
            if listener is None:
                data = socket.create_connection((host, port), timeout=TIMEOUT)
                resp = ftp.sendcmd(f"RETR data-{size}.bin")
            else:
                with listener:
                    resp = ftp.sendcmd(f"RETR data-{size}.bin")
                    listener.settimeout(TIMEOUT)
                    data, _ = listener.accept()
            if not resp.startswith("150"):
                raise ftplib.error_reply(resp)
            data.settimeout(TIMEOUT)
            received = 0
            intact = True
            with data:
                while chunk := data.recv(65536):
                    if received + len(chunk) > size:
                        result["duplicates"] += received + len(chunk) - size
                    intact = intact and chunk == pattern(received, len(chunk))
                    received += len(chunk)
            result["received"] = received
            ftp.voidresp()  # 226
            # The control connection must still carry commands after the
            # transfer (and after a failover in it): through NAT, a helper
            # that rewrote the stream left sequence offsets the new owner needs.
            ftp.voidcmd("NOOP")
            result["intact"] = intact and received == size
    except (OSError, EOFError, ftplib.Error) as e:
        result["error"] = f"{type(e).__name__}: {e}"
    result["seconds"] = round(time.monotonic() - start, 3)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fwcluster_lab.ftp_lab", description=__doc__)
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("server")
    s.add_argument("--address", required=True)
    s.add_argument("--port", type=int, default=FTP_PORT)
    s.add_argument("--rate", type=int, default=200_000, help="bytes per second")
    c = sub.add_parser("client")
    c.add_argument("--server", required=True)
    c.add_argument("--mode", choices=("passive", "active"), default="passive")
    c.add_argument("--size", type=int, default=400_000)
    c.add_argument("--pause", action="store_true")
    c.add_argument("--port", type=int, default=FTP_PORT)
    args = p.parse_args(argv)
    try:
        family_of(args.address if args.role == "server" else args.server)
    except ValueError:
        p.error("the server address must be an IPv4 or IPv6 address")
    if args.role == "server":
        if args.rate <= 0:
            p.error("--rate must be positive")
        serve(args.address, args.port, args.rate)
        return 0
    if not 0 < args.size <= MAX_SIZE:
        p.error(f"--size must be 1..{MAX_SIZE}")
    result = fetch(args.server, args.mode, args.size, args.pause, args.port)
    print(json.dumps(result), flush=True)
    return 0 if result["intact"] else 1


if __name__ == "__main__":
    sys.exit(main())
