"""clusterdev guest tests of the link as a stacked device and of what reaches it.

Called by guest_tests.py (inside the guest, as root) on the lab it built:
fw1's `cdc` on `ethc` holds the client-side cluster IP and cluster MAC.
Each function returns None when the behaviour holds, else what is wrong.

  unprivileged   a user without CAP_NET_ADMIN (uid 65534; also uid 65534 in
                 a user namespace of its own) is refused every command
  rx_filter      cl0's multicast groups (the cluster IPv6 address's
                 solicited-node group) are in the lower device's list
  mtu            cl0's MTU follows its lower device's, never above it
  offloads       cl0 has its lower device's TSO, checksum and SG offloads
                 and GSO limits
  vlan           frames to the cluster MAC tagged with a VLAN nobody
                 claims stay on the lower device
  ip_multicast   real IPv4 multicast to a group that maps to the cluster MAC
                 (224.0.0.193) reaches a listener on the lower device
  notify         a SET_CONFIG sends CONFIG_CHANGED (generation + 1, the
                 sender's port, nothing of the configuration) to the
                 "config" group; GET_CONFIG reports the same generation
  untracked      an operator's notrack rule: each datagram forwarded once
                 (by its bucket's owner), not once per node
  packet_tap     a packet socket on the lower device (as tcpdump) while
                 traffic flows through cl0: traffic intact, frames seen
  churn          while UDP floods through the cluster: 20 SET_CONFIGs per
                 node; a namespace with a clusterdev link deleted while its
                 lower device is flooded from outside (dmesg checks the rest)
  mld_snooping   a snooping bridge with an MLD querier: neighbour discovery
                 for a cluster IPv6 address still works after the bridge's
                 membership interval (cl0 answers MLD queries)
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import errno
import fcntl
import json
import os
import select
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator

from availability_manager.dataplane import clusterdev_genl as genl
from availability_manager.dataplane.clusterdev import GenlChannel
from guest_tests import (  # type: ignore[import-not-found]
    CLIENT_GW,
    CLIENT_IP,
    CLIENT_MAC,
    NODES,
    SERVER_IP,
    channel,
    netns,
    nsrun,
    sh,
)

NOBODY = 65534
CLONE_NEWUSER = 0x10000000
SIOCETHTOOL = 0x8946
ETHTOOL_GTXCSUM, ETHTOOL_GSG, ETHTOOL_GTSO = 0x16, 0x18, 0x1E
ETH_P_ALL, ETH_P_8021Q = 0x0003, 0x8100
SOL_NETLINK, NETLINK_ADD_MEMBERSHIP = 270, 1

_libc = ctypes.CDLL(None, use_errno=True)


def link_json(ns: str, dev: str) -> dict[str, object]:
    out = nsrun(ns, "ip", "-d", "-s", "-j", "link", "show", "dev", dev)
    info: dict[str, object] = json.loads(out)[0]
    return info


def rx_packets(ns: str, dev: str) -> int:
    stats = link_json(ns, dev)["stats64"]
    assert isinstance(stats, dict)
    return int(stats["rx"]["packets"])


# -- least privilege --------------------------------------------------------


def _try_every_command(user_namespace: bool) -> list[str]:
    """In a child: drop to nobody (and into a new user namespace), try each
    command; returns what was NOT refused with EPERM."""
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    if user_namespace and _libc.unshare(CLONE_NEWUSER):
        return [f"unshare(CLONE_NEWUSER): errno {ctypes.get_errno()}"]
    chan = GenlChannel()
    fam = chan.family
    requests = {
        "SET_CONFIG": genl.genlmsg(
            fam, 1, 0, genl.attr(genl.A_SEED, struct.pack("=I", 7))
        ),
        "GET_CONFIG": genl.genlmsg(fam, 2, 0, b""),
        "GET_STATS": genl.genlmsg(fam, 3, 0, b""),
    }
    accepted = []
    for i, (name, msg) in enumerate(requests.items(), start=1):
        msg = msg[:8] + struct.pack("=I", 500 + i) + msg[12:]
        replies = chan.exchange(msg, 500 + i)
        err = next((r for r in replies if r.type == genl.NLMSG_ERROR), None)
        code = struct.unpack_from("=i", err.payload)[0] if err else None
        if code != -errno.EPERM:
            got = "a reply" if code is None else f"errno {-code}" if code else "ack"
            accepted.append(f"{name}: {got}")
    # The notifications say only that something changed, but joining their
    # group needs CAP_NET_ADMIN all the same (GENL_MCAST_CAP_NET_ADMIN).
    group = chan.groups.get(genl.MCGRP_CONFIG)
    listener = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, genl.NETLINK_GENERIC)
    try:
        listener.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group or 0)
        accepted.append(f"joining the {genl.MCGRP_CONFIG!r} group (id {group})")
    except PermissionError:
        pass
    except OSError as e:
        accepted.append(f"joining the {genl.MCGRP_CONFIG!r} group (id {group}): {e}")
    finally:
        listener.close()
    chan.close()
    return accepted


def t_unprivileged(ns: str) -> str | None:
    problems = []
    for user_namespace in (False, True):
        label = "nobody in a user namespace of its own" if user_namespace else "nobody"
        read, write = os.pipe()
        with netns(ns):
            pid = os.fork()
        if pid == 0:  # child: never returns into the test runner
            os.close(read)
            try:
                result = "; ".join(_try_every_command(user_namespace))
            except Exception as e:  # noqa: BLE001 - reported to the parent
                result = f"{type(e).__name__}: {e}"
            os.write(write, result.encode() or b"-")
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            answer = pipe.read().decode()
        os.waitpid(pid, 0)
        if answer.startswith("unshare"):  # the kernel allows no user namespaces
            print(f"  {label}: not tried, {answer}")
        elif answer != "-":
            problems.append(f"{label}: {answer}")
        else:
            print(f"  {label}: SET_CONFIG, GET_CONFIG, GET_STATS, joining the config group "
                  "refused (EPERM)")  # fmt: skip
    before = channel(ns)
    seed = before.get_config().seed
    before.close()
    if seed == 7:
        problems.append("an unprivileged SET_CONFIG changed the seed")
    return "; ".join(problems) or None


# -- the lower device's filters, MTU and offloads ----------------------------


def solicited_node_mac(address: str) -> str:
    raw = socket.inet_pton(socket.AF_INET6, address)
    return "33:33:ff:" + ":".join(f"{b:02x}" for b in raw[-3:])


def t_rx_filter(ns: str, lower: str, cluster6: str) -> str | None:
    mac = solicited_node_mac(cluster6)
    listed = nsrun(ns, "ip", "maddr", "show", "dev", lower)
    if mac not in listed:
        return f"{lower} lacks {mac} (solicited-node group of {cluster6} on cl0): {listed!r}"
    print(f"  {lower} lists {mac}, the group cl0 joined for {cluster6}")
    return None


def mtu(ns: str, dev: str) -> int:
    return int(str(link_json(ns, dev)["mtu"]))


def t_mtu(ns: str, upper: str, lower: str) -> str | None:
    start = mtu(ns, lower)
    try:
        nsrun(ns, "ip", "link", "set", lower, "mtu", "1400")
        if mtu(ns, upper) != 1400:
            return f"{lower} at 1400, {upper} still at {mtu(ns, upper)}"
        refused = subprocess.run(
            ["ip", "-n", ns, "link", "set", upper, "mtu", "1450"],
            capture_output=True,
            check=False,
        )
        if refused.returncode == 0:
            return f"{upper} accepted MTU 1450 above its lower device's 1400"
        nsrun(ns, "ip", "link", "set", upper, "mtu", "1300")
        nsrun(ns, "ip", "link", "set", lower, "mtu", str(start))
        if mtu(ns, upper) != start:
            return f"{lower} back at {start}, {upper} at {mtu(ns, upper)}"
    finally:
        nsrun(ns, "ip", "link", "set", lower, "mtu", str(start), check=False)
    print(
        f"  {upper} followed {lower} to 1400 and back to {start}; 1450 > 1400 refused"
    )
    return None


def ethtool_value(dev: str, cmd: int) -> int:
    buf = array.array("I", [cmd, 0])
    ifreq = struct.pack("16sP", dev.encode(), buf.buffer_info()[0])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, SIOCETHTOOL, ifreq)
    return buf[1]


def t_offloads(ns: str, upper: str, lower: str) -> str | None:
    names = {"tx-checksumming": ETHTOOL_GTXCSUM, "scatter-gather": ETHTOOL_GSG,
             "tcp-segmentation-offload": ETHTOOL_GTSO}  # fmt: skip
    problems = []
    with netns(ns):
        for name, cmd in names.items():
            low, up = ethtool_value(lower, cmd), ethtool_value(upper, cmd)
            if low and not up:
                problems.append(f"{name}: on for {lower}, off for {upper}")
    lo, up = link_json(ns, lower), link_json(ns, upper)
    for key in ("tso_max_size", "tso_max_segs", "gso_max_size", "gso_max_segs"):
        if key in lo and lo[key] != up.get(key):
            problems.append(f"{key}: {lower} {lo[key]}, {upper} {up.get(key)}")
    if not problems:
        print(f"  {upper}: checksum, SG, TSO and GSO limits as {lower}")
    return "; ".join(problems) or None


# -- what the receive handler leaves on the lower device ---------------------


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_in_ipv4(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                       socket.inet_aton(src), socket.inet_aton(dst))  # fmt: skip
    head = head[:10] + struct.pack("!H", ip_checksum(head)) + head[12:]
    return head + udp


def t_vlan(client_ns: str, client_if: str, node: str, upper: str) -> str | None:
    """20 frames to the cluster MAC in VLAN 42, which no VLAN device claims."""
    frames = 20
    with netns(client_ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        s.bind((client_if, 0))
        src = s.getsockname()[4]
        inner = udp_in_ipv4(CLIENT_IP, CLIENT_GW, 40000, 9, b"vlan 42")
        frame = (
            mac_bytes(CLIENT_MAC)
            + src
            + struct.pack("!HHH", ETH_P_8021Q, 42, 0x0800)
            + inner
        )
        before = rx_packets(node, upper)
        for _ in range(frames):
            s.send(frame)
        time.sleep(1)
        moved = rx_packets(node, upper) - before
    finally:
        s.close()
    # Other frames may reach cl0 meanwhile (ARP refreshes): far fewer than 20.
    if moved >= frames:
        return (
            f"{upper} received {moved} frames while {frames} tagged VLAN 42 were sent"
        )
    print(f"  {frames} frames tagged with unclaimed VLAN 42: {moved} reached {upper}")
    return None


def t_ip_multicast(client_ns: str, client_if: str, node: str, lower: str) -> str | None:
    """224.0.0.193 maps to the cluster MAC 01:00:5e:00:00:c1 but is a group."""
    group, port = "224.0.0.193", 5555
    nsrun(node, "sysctl", "-q", "-w", f"net.ipv4.conf.{lower}.rp_filter=0")
    with netns(node):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        index = socket.if_nametoindex(lower)
    with netns(client_ns):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        out_index = socket.if_nametoindex(client_if)
    try:
        rx.bind(("0.0.0.0", port))
        rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                      socket.inet_aton(group) + socket.inet_aton("0.0.0.0")
                      + struct.pack("=i", index))  # fmt: skip
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                      struct.pack("=4s4si", b"\0" * 4, b"\0" * 4, out_index))  # fmt: skip
        for i in range(5):
            tx.sendto(f"group {i}".encode(), (group, port))
        got = []
        while select.select([rx], [], [], 2.0)[0]:
            got.append(rx.recv(64))
    finally:
        rx.close()
        tx.close()
    if not got:
        return f"a listener of {group} on {node}'s {lower} received none of 5 datagrams"
    print(f"  {len(got)} of 5 datagrams to {group} reached the listener on {lower}")
    return None


def t_notify(ns: str, owned: frozenset[int], buckets: int) -> str | None:
    """Configuration changes reach the "config" multicast group's listeners."""
    with netns(ns):
        chan = GenlChannel()
        listener = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, genl.NETLINK_GENERIC)
    try:
        group = chan.groups.get(genl.MCGRP_CONFIG)
        if group is None:
            return f"the family has no {genl.MCGRP_CONFIG!r} group: {chan.groups}"
        listener.bind((0, 0))
        listener.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
        listener.settimeout(5.0)
        before = chan.get_config().generation
        chan.set_config(buckets=buckets, owned=owned)  # the same bitmap: still a change
        msgs = genl.parse_messages(listener.recv(65536))
        note = genl.parse_config_changed(msgs[0], chan.family)
        after = chan.get_config().generation
        sender = chan._sock.getsockname()[0]
        leaked = set(genl.parse_attrs(msgs[0].payload[4:])) - {genl.A_GENERATION, genl.A_SENDER_PID}
    except TimeoutError:
        return "no CONFIG_CHANGED within 5 s of a SET_CONFIG"
    finally:
        listener.close()
        chan.close()
    if note.generation != before + 1 or after != before + 1:
        return f"generation {before} -> notified {note.generation}, GET_CONFIG {after}"
    if note.sender_pid != sender:
        return f"sender {note.sender_pid}, expected the SET_CONFIG socket's port {sender}"
    if leaked:
        return f"the notification carries configuration attributes {sorted(leaked)}"
    print(f"  CONFIG_CHANGED generation {note.generation} from port {sender}, nothing else")
    return None


def t_untracked(client_ns: str, server_ns: str) -> str | None:
    """notrack for UDP port 7777 on every node: each datagram must arrive once."""
    port, count = 7777, 30
    rules = [
        "add table ip cdtest",
        "add chain ip cdtest pre { type filter hook prerouting priority -300; }",
        f"add rule ip cdtest pre udp dport {port} notrack",
    ]
    for node in NODES:
        subprocess.run(["ip", "netns", "exec", node, "nft", "-f", "-"],
                       input="\n".join(rules) + "\n", text=True, check=True, timeout=60)  # fmt: skip
    with netns(server_ns):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind((SERVER_IP, port))
    seen: dict[bytes, int] = {}
    try:
        for i in range(count):
            with netns(client_ns):
                tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tx.sendto(f"untracked {i}".encode(), (SERVER_IP, port))
            tx.close()
        while select.select([rx], [], [], 3.0)[0]:
            data = rx.recv(64)
            seen[data] = seen.get(data, 0) + 1
    finally:
        rx.close()
        for node in NODES:
            nsrun(node, "nft", "delete", "table", "ip", "cdtest", check=False)
    twice = {k: v for k, v in seen.items() if v > 1}
    if twice:
        return f"{len(twice)} of {count} untracked datagrams forwarded more than once: {twice}"
    if len(seen) != count:
        return f"{count - len(seen)} of {count} untracked datagrams never arrived"
    print(f"  {count} untracked datagrams (notrack), each forwarded once")
    return None


def t_packet_tap(node: str, lower: str, roundtrip: object) -> str | None:
    """A packet socket on the lower device shares every frame cl0 takes."""
    with netns(node):
        tap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        tap.bind((lower, 0))
        assert callable(roundtrip)
        if not roundtrip():
            return "traffic through the cluster failed while the tap was open"
        to_cluster = 0
        while select.select([tap], [], [], 0.5)[0]:
            frame = tap.recv(2048)
            to_cluster += frame[:6] == mac_bytes(CLIENT_MAC)
    finally:
        tap.close()
    if not to_cluster:
        return f"the tap on {lower} saw no frame to the cluster MAC"
    print(f"  tap on {lower}: {to_cluster} frames to the cluster MAC; traffic intact")
    return None


# -- changes while traffic flows ----------------------------------------------

FLOOD_LIMIT = 200_000  # datagrams
FLOOD_SECONDS = 20.0


@contextlib.contextmanager
def flood(ns: str, address: str, port: int) -> Iterator[list[int]]:
    """UDP datagrams from `ns` to address:port from a thread while the body
    runs, bounded in count and time; yields [datagrams sent]."""
    with netns(ns):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setblocking(False)
    stop = threading.Event()
    sent = [0]

    def run() -> None:
        deadline = time.monotonic() + FLOOD_SECONDS
        while (
            not stop.is_set() and sent[0] < FLOOD_LIMIT and time.monotonic() < deadline
        ):
            try:
                tx.sendto(b"flood", (address, port))
                sent[0] += 1
            except OSError:  # a full queue, a device going away: keep trying
                time.sleep(0.001)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)  # traffic is flowing before the body starts
        yield sent
    finally:
        stop.set()
        thread.join(timeout=FLOOD_SECONDS + 5)
        tx.close()


def t_churn(owned: dict[str, frozenset[int]], buckets: int) -> str | None:
    with flood("cli", SERVER_IP, 7778) as sent:
        for node in NODES:
            chan = channel(node)
            try:
                for i in range(20):  # give every bucket away and back, ending owned
                    chan.set_config(
                        buckets=buckets, owned=owned[node] if i % 2 else frozenset()
                    )
                if chan.get_config().owned != owned[node]:
                    return f"{node}: ownership not restored after 20 changes"
            finally:
                chan.close()
    if sent[0] == 0:
        return "the flood sent nothing"
    print(f"  60 SET_CONFIGs while {sent[0]} datagrams flowed")
    sh("ip", "netns", "add", "td3")
    sh("ip", "netns", "add", "td4")
    try:
        _batch("td4", ["link set lo up", "link add peer type veth peer name low netns td3",
                       "addr add 192.0.2.50/24 dev peer", "link set peer up",
                       f"neigh add 192.0.2.1 lladdr {CLIENT_MAC} dev peer nud permanent"])  # fmt: skip
        _batch("td3", ["link set lo up", "link set low up",
                       f"link add cl0 link low address {CLIENT_MAC} type clusterdev",
                       "addr add 192.0.2.1/24 dev cl0", "link set cl0 up"])  # fmt: skip
        with flood("td4", "192.0.2.1", 7779) as sent:
            time.sleep(1)
            sh("ip", "netns", "del", "td3")
        if "low" in nsrun("td4", "ip", "-o", "link", "show", check=False):
            return "td3's veth end survived the namespace"
    finally:
        sh("ip", "netns", "del", "td3", check=False)
        sh("ip", "netns", "del", "td4", check=False)
    time.sleep(2)  # namespace cleanup runs in a worker; dmesg tells the rest
    print(f"  namespace with cl0 deleted under a flood of {sent[0]} datagrams")
    return None


# -- MLD snooping -------------------------------------------------------------


MLD_NAMESPACES = ("msw", "mcli", "mfw")
MLD_CLUSTER6, MLD_CLIENT6 = "2001:db8:d::1", "2001:db8:d::100"
MLD_MAC = "01:00:5e:00:00:d1"
MLD_MEMBERSHIP_S = 4  # the bridge forgets an unrefreshed group after this


def _batch(ns: str, commands: list[str]) -> None:
    subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(commands) + "\n",
                   text=True, check=True, timeout=60, capture_output=True)  # fmt: skip


def _resolves(ns: str, address: str, mac: str) -> bool:
    """Neighbour discovery from `ns` learns `address` at `mac`. (The echo that
    triggers it may get no answer: a snooping bridge with a querier sends IP
    packets to a multicast MAC with a unicast IP destination to router ports
    only, see docs/clusterdev.md.)"""
    subprocess.run(["ip", "netns", "exec", ns, "ping", "-6", "-c", "1", "-W", "2", address],
                   capture_output=True, check=False, timeout=30)  # fmt: skip
    neigh = nsrun(ns, "ip", "-6", "neigh", "show", address)
    return mac in neigh and "FAILED" not in neigh and "INCOMPLETE" not in neigh


def t_mld_snooping() -> str | None:
    """cli - bridge (snooping, MLD querier, 1 s queries, 4 s membership) - fw (cl0)."""
    for ns in MLD_NAMESPACES:
        sh("ip", "netns", "add", ns)
    try:
        # The bridge queries only with a usable link-local address: no DAD wait.
        nsrun("msw", "sysctl", "-q", "-w", "net.ipv6.conf.default.accept_dad=0",
              "net.ipv6.conf.all.accept_dad=0")  # fmt: skip
        bridge = (
            "link add br0 type bridge mcast_snooping 1 mcast_querier 1 mcast_query_interval 100"
            " mcast_query_response_interval 50 mcast_startup_query_interval 50"
            f" mcast_membership_interval {MLD_MEMBERSHIP_S * 100}"
        )
        _batch("msw", [
            "link set lo up",
            bridge,
            "link set br0 up",
            "link add p-cli type veth peer name eth0 netns mcli",
            "link add p-fw type veth peer name eth0 netns mfw",
            "link set p-cli master br0 up",
            "link set p-fw master br0 up",
        ])  # fmt: skip
        _batch("mcli", ["link set lo up", "link set eth0 up",
                        f"addr add {MLD_CLIENT6}/64 dev eth0 nodad"])  # fmt: skip
        _batch("mfw", [
            "link set lo up", "link set eth0 up",
            f"link add cl0 link eth0 address {MLD_MAC} type clusterdev",
            "link set cl0 addrgenmode none",
            f"addr add {MLD_CLUSTER6}/64 dev cl0 nodad",
            "link set cl0 up",
        ])  # fmt: skip
        chan = channel("mfw")  # the one node owns every bucket: the echo passes
        chan.set_config(buckets=1, owned=frozenset({0}))
        chan.close()
        time.sleep(2)
        if not _resolves("mcli", MLD_CLUSTER6, MLD_MAC):
            return f"neighbour discovery for {MLD_CLUSTER6} failed right after the join"
        # Past the membership interval only MLD answers keep the group.
        nsrun("mcli", "ip", "-6", "neigh", "flush", "dev", "eth0")
        time.sleep(2 * MLD_MEMBERSHIP_S + 1)
        mdb = nsrun("msw", "bridge", "mdb", "show", check=False)
        if not _resolves("mcli", MLD_CLUSTER6, MLD_MAC):
            return (f"after {2 * MLD_MEMBERSHIP_S + 1} s the snooping bridge no longer sends "
                    f"neighbour solicitations for {MLD_CLUSTER6} to the node; mdb: {mdb.strip()!r}")  # fmt: skip
        group = "ff02::1:ff00:1"
        if group not in mdb:
            return (
                f"solicited-node group {group} not in the bridge's mdb: {mdb.strip()!r}"
            )
        print(f"  {MLD_CLUSTER6} resolved after {2 * MLD_MEMBERSHIP_S + 1} s of MLD queries; "
              f"{group} kept in the bridge's mdb")  # fmt: skip
        return None
    finally:
        for ns in MLD_NAMESPACES:
            sh("ip", "netns", "del", ns, check=False)
