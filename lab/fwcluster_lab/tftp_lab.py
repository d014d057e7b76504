"""A small TFTP server and client (RFC 1350, octet mode, read requests only)
for the helper tests: the read request goes to port 69, the data comes back
from a new server port, which is what the kernel's TFTP helper expects.

The server sends each block, waits for its ACK and retransmits after
`RETRY_S` (at most `RETRIES` times); it paces blocks (`--block-delay`) so a
transfer spans a failover, and may wait before the first block
(`--first-delay`) so a test can kill the read request's owner between the
request and the data. Both ends count every block: after a transfer the
server writes {"sent": {block: times}} to `--stats-dir`/<client port>.json,
and the client prints one JSON line. The client names its own port in the
file it asks for (``data-<port>.bin``), so the statistics are found under
that port also when NAT changed the port the server sees.

    {"expected": 100000, "received": 100000, "intact": true,
     "blocks": 196, "received_per_block": {...}, "seconds": 2.0, "error": null}

The client prints ``CONTROL <its port>`` before it sends the request.
A block the client received more often than the server sent it was
delivered twice by the cluster (a retransmission is sent twice, and may
arrive twice, legitimately).

    python -m fwcluster_lab.tftp_lab server --address 203.0.113.100 --size 100000
    python -m fwcluster_lab.tftp_lab client --server 203.0.113.100 --size 100000
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .ftp_lab import pattern

TFTP_PORT = 69
BLOCK = 512
RETRY_S = 0.5
RETRIES = 20  # 10 s of silence ends a transfer
MAX_SIZE = 16 << 20
FILE_NAME = re.compile(rb"data-([0-9]{1,5})\.bin")  # the name a client asks for
OP_RRQ, OP_DATA, OP_ACK, OP_ERROR = 1, 3, 4, 5


def blocks_of(size: int) -> int:
    """Blocks of a `size`-byte file: a last short (possibly empty) block ends it."""
    return size // BLOCK + 1


def _transfer(
    client: tuple[str, int],
    address: str,
    size: int,
    pace: float,
    first: float,
    stats: Path,
    name: int,
) -> None:
    sent: collections.Counter[int] = collections.Counter()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((address, 0))  # the new TID the helper expects replies from
        sock.settimeout(RETRY_S)
        time.sleep(first)
        for block in range(1, blocks_of(size) + 1):
            offset = (block - 1) * BLOCK
            payload = struct.pack("!HH", OP_DATA, block & 0xFFFF)
            payload += pattern(offset, max(0, min(BLOCK, size - offset)))
            for _ in range(RETRIES):
                sock.sendto(payload, client)
                sent[block] += 1
                if _acked(sock, client, block):
                    break
            else:
                print(f"tftp server: {client} gave up at block {block}", flush=True)
                break
            time.sleep(pace)
    stats.mkdir(parents=True, exist_ok=True)
    (stats / f"{name}.json").write_text(json.dumps({"sent": sent}))
    print(f"tftp server: {client} done, {sum(sent.values())} datagrams", flush=True)


def _acked(sock: socket.socket, client: tuple[str, int], block: int) -> bool:
    deadline = time.monotonic() + RETRY_S
    while time.monotonic() < deadline:
        try:
            data, peer = sock.recvfrom(1024)
        except TimeoutError:
            return False
        if peer == client and len(data) == 4:
            op, num = struct.unpack("!HH", data)
            if op == OP_ACK and num == block & 0xFFFF:
                return True
    return False


def serve(address: str, size: int, pace: float, first: float, stats: Path) -> None:
    """Serve read requests until killed: one thread per transfer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((address, TFTP_PORT))
        print(f"tftp server: listening on {address}:{TFTP_PORT}", flush=True)
        while True:
            data, peer = sock.recvfrom(1024)
            if len(data) < 4 or struct.unpack_from("!H", data)[0] != OP_RRQ:
                continue
            m = FILE_NAME.fullmatch(data[2:].split(b"\0", 1)[0])
            name = int(m.group(1)) if m else peer[1]  # the client's own port, or what we see
            threading.Thread(
                target=_transfer,
                args=(peer, address, size, pace, first, stats, name),
                daemon=True,
            ).start()


def fetch(server: str, size: int) -> dict[str, Any]:
    """Read the file once; the result dict of the module docstring."""
    received: collections.Counter[int] = collections.Counter()
    chunks: dict[int, bytes] = {}
    result: dict[str, Any] = {"expected": size, "error": None}
    start = time.monotonic()
    last = blocks_of(size)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", 0))
        result["port"] = sock.getsockname()[1]
        print(f"CONTROL {result['port']}", flush=True)  # the read request's source port
        sock.settimeout(RETRY_S * RETRIES)
        request = f"data-{result['port']}.bin\0octet\0".encode()
        sock.sendto(struct.pack("!H", OP_RRQ) + request, (server, TFTP_PORT))
        try:
            while len(chunks) < last:
                data, peer = sock.recvfrom(BLOCK + 4)
                if len(data) < 4 or peer[0] != server:
                    continue
                op, num = struct.unpack_from("!HH", data)
                if op != OP_DATA:
                    continue
                received[num] += 1
                chunks.setdefault(num, data[4:])
                sock.sendto(struct.pack("!HH", OP_ACK, num), peer)
        except OSError as e:
            result["error"] = f"{type(e).__name__}: {e}"
    body = b"".join(chunks[b] for b in sorted(chunks))
    result.update(
        received=len(body),
        intact=body == pattern(0, size) and len(chunks) == last,
        blocks=len(chunks),
        received_per_block={str(k): v for k, v in sorted(received.items())},
        seconds=round(time.monotonic() - start, 3),
    )
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fwcluster_lab.tftp_lab", description=__doc__)
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("server")
    s.add_argument("--address", required=True)
    s.add_argument("--size", type=int, default=100_000)
    s.add_argument("--block-delay", type=float, default=0.01)
    s.add_argument("--first-delay", type=float, default=0.0)
    s.add_argument("--stats-dir", type=Path, required=True)
    c = sub.add_parser("client")
    c.add_argument("--server", required=True)
    c.add_argument("--size", type=int, default=100_000)
    args = p.parse_args(argv)
    if not 0 < args.size <= MAX_SIZE:
        p.error(f"--size must be 1..{MAX_SIZE}")
    if args.role == "server":
        serve(args.address, args.size, args.block_delay, args.first_delay, args.stats_dir)
        return 0
    result = fetch(args.server, args.size)
    print(json.dumps(result), flush=True)
    return 0 if result["intact"] else 1


if __name__ == "__main__":
    sys.exit(main())
