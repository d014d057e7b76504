"""The floor under an idle agent's CPU: an asyncio loop that sends one
heartbeat-sized multicast datagram per interval and reads whatever arrives
on the group, and does nothing else (no crypto, no protocol, no fence).

Run it in a lab node's namespace in place of that node's agent, with the
other agents running, so it sends and receives at the heartbeats' rates:

    flock /work/lab.lock bin/lab up
    kill -9 <fw1's agent pid>            # bin/lab status lists it
    ip netns exec fwl-fw1 nice -n -10 .venv/bin/python bench/idle_floor.py --seconds 30
    flock /work/lab.lock bin/lab down

It prints its own CPU (utime + stime) and wakeups (voluntary context
switches) per second, measured after a second of warm-up: what any asyncio
process pays on this machine for the heartbeat traffic, which the agent's
figures (bench/lab_scale.py) are read against (docs/benchmarks.md, "The
fence refreshed by the heartbeat's own packets").
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import socket
import sys

from fwbench import measure


def own_cpu_and_wakeups() -> tuple[float, int]:
    cpu, woken = (
        measure.process_cpu_s(os.getpid()),
        measure.process_wakeups(os.getpid()),
    )
    assert cpu is not None and woken is not None  # this process is alive
    return cpu, woken


def group_socket(group: str, port: int, address: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((group, port))
    membership = socket.inet_aton(group) + socket.inet_aton(address)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
    sock.setsockopt(
        socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address)
    )
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    sock.setblocking(False)
    return sock


async def run(args: argparse.Namespace) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    sock = group_socket(args.group, args.port, args.address)
    received = 0

    def readable() -> None:
        nonlocal received
        while True:
            try:
                sock.recvfrom(65535)
            except BlockingIOError:
                return
            received += 1

    loop.add_reader(sock.fileno(), readable)
    payload = bytes(args.size)
    interval = args.interval_ms / 1000
    tick = loop.time()
    started = tick
    first: tuple[float, int, float, int] | None = None
    try:
        while (now := loop.time()) < started + 1.0 + args.seconds:
            if first is None and now >= started + 1.0:  # after a second of warm-up
                first = (*own_cpu_and_wakeups(), now, received)
            tick += interval
            await asyncio.sleep(max(0.0, tick - loop.time()))
            sock.sendto(payload, (args.group, args.port))
    finally:
        loop.remove_reader(sock.fileno())
        sock.close()
    assert first is not None
    cpu, woken = own_cpu_and_wakeups()
    elapsed = loop.time() - first[2]
    return {
        "cpu_ms_per_s": (cpu - first[0]) / elapsed * 1000,
        "wakeups_per_s": (woken - first[1]) / elapsed,
        "received_per_s": (received - first[3]) / elapsed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--group", default="239.255.77.1", help="the lab's sync group")
    parser.add_argument("--port", type=int, default=7788)
    parser.add_argument("--address", default="198.51.100.11", help="fw1's sync address")
    parser.add_argument("--interval-ms", type=int, default=50)
    parser.add_argument("--size", type=int, default=120, help="bytes per datagram")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    if not 1 <= args.interval_ms <= 10_000:
        parser.error("--interval-ms must be 1..10000")
    if not 0 < args.seconds <= 600:
        parser.error("--seconds must be 0..600")
    if not 0 <= args.size <= 1400:
        parser.error("--size must be 0..1400")
    try:
        if not ipaddress.ip_address(args.group).is_multicast:
            parser.error(f"--group {args.group} is not a multicast address")
        ipaddress.IPv4Address(args.address)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        out = asyncio.run(run(args))
    except OSError as exc:
        print(f"idle_floor: {exc} (run it in a lab node's namespace)", file=sys.stderr)
        return 1
    print(
        f"floor: {out['cpu_ms_per_s']:.1f} ms of CPU per s, {out['wakeups_per_s']:.0f} wakeups/s, "
        f"{out['received_per_s']:.0f} datagrams received/s, "
        f"{out['cpu_ms_per_s'] / max(out['wakeups_per_s'], 1) * 1000:.0f} us per wakeup"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
