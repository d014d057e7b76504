"""Where the sync path's time goes, per connection and per stage (no namespaces).

The agent's conntrack sync, driven in one process on a fixed clock exactly as
the daemon drives it, for N new UDP connections:

- owner: kernel event bytes (an IPCTNL_MSG_CT_NEW event as ctnetlink sends
  it) -> netlink decode -> Connection -> mirror and queue (ConntrackSync;
  since the mirror keeps records, the CT record is encoded here, once)
  -> CT record encode (what is left: a record passes through) ->
  reliable-broadcast payloads and RB_DATA messages -> AEAD seal of each datagram;
- peer: datagram -> AEAD open -> datagram decode -> reliable-broadcast
  delivery -> CT record decode -> peer cache insert.

Each stage is timed on its own (CPU time of this process, the whole batch
through one stage before the next) with the layers composed as node.py
composes them; `end to end` runs the same connections through two real
`Node`s (connection_new + datagrams_to_send on the owner, receive_datagram
on the peer), which is what the daemon pays without its sockets. The stages
should add up to about the end-to-end figure.

Memory: the peer cache's size per 100,000 cached connections and the owner's
mirror's per 100,000 announced, by tracemalloc (what each holds once
everything transient is freed).

    .venv/bin/python bench/sync_path.py            # 100,000 connections, docs/benchmarks/
    .venv/bin/python bench/sync_path.py --quick    # 5,000, temp dir (smoke)
"""

from __future__ import annotations

import argparse
import collections
import gc
import ipaddress
import random
import statistics
import struct
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from availability_manager import wire
from availability_manager.broadcast import MAX_PAYLOAD, Delivered, ReliableBroadcast
from availability_manager.connection import PROTO_UDP, Connection, Tuple
from availability_manager.conntrack_sync import ConntrackSync
from availability_manager.crypto import Encryption, Keyring
from availability_manager.ct_messages import encode_ct
from availability_manager.dataplane import netlink_attrs as nl
from availability_manager.dataplane.conntrack_netlink import (
    IPCTNL_MSG_CT_NEW,
    NFNL_SUBSYS_CTNETLINK,
    encode_inject,
    parse_events,
)
from availability_manager.node import Node
from availability_manager.types import ClusterSettings, node_id_from_address
from fwbench import env, report

# The same script measures an agent tree from before the fast paths (PYTHONPATH
# pointing at its agent/, for before/after side by side): there, the
# reference functions are the only ones.
try:
    from availability_manager.record_table import decode_ct_payload, encode_ct_fast
except ImportError:
    try:  # before the owner's mirror kept records (the module was peer_cache)
        from availability_manager.peer_cache import (  # type: ignore[no-redef]
            decode_ct_payload,
            encode_ct_fast,
        )
    except ImportError:
        decode_ct_payload, encode_ct_fast = wire.decode_messages, encode_ct  # type: ignore[assignment]
try:
    from availability_manager.node_config import NodeConfig
    from availability_manager.packing import pack
except ImportError:  # before node.py was split
    from availability_manager.node import NodeConfig, pack  # type: ignore[attr-defined]
try:
    from availability_manager.dataplane.ct_event_layouts import EventLayouts
except ImportError:
    EventLayouts = None  # type: ignore[assignment,misc]

BUCKETS = 256
SETTINGS = ClusterSettings(buckets=BUCKETS, hash_seed=1234, backend="sim")
KEYRING = Keyring.single(bytes(range(32)))
MARK_MASK = 0xFFFF
OWNER, PEER = node_id_from_address("192.0.2.1"), node_id_from_address("192.0.2.2")
BATCH = 64  # events handed to the node between two pumps (the daemon's burst size)
_NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id


def connections(n: int, buckets: list[int]) -> list[Connection]:
    """n new UDP connections, each a new 5-tuple (the generator's pattern),
    spread over `buckets`, marked with their bucket as the data plane marks them."""
    return [connection(i, buckets) for i in range(n)]


_BASE = int(ipaddress.IPv4Address("198.18.0.0"))
_DST = ipaddress.IPv4Address("203.0.113.10").packed


def connection(i: int, buckets: list[int]) -> Connection:
    """The i-th connection of `connections`."""
    src = (_BASE + (i >> 14)).to_bytes(4, "big")
    orig = Tuple(src, _DST, 1024 + (i & 0x3FFF), 5001)
    bucket = buckets[i % len(buckets)]
    return Connection(PROTO_UDP, orig, orig.inverse(), mark=bucket + 1, bucket=bucket)


def event_bytes(conn: Connection, seq: int) -> bytes:
    """The NEW event ctnetlink would multicast for `conn` (one per datagram)."""
    payload = _NFGEN.pack(2, 0, 0) + encode_inject(conn)
    mtype = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW
    return nl.message(mtype, nl.NLM_F_CREATE | nl.NLM_F_EXCL, seq, payload)


def stages(n: int) -> dict[str, float]:
    """CPU seconds per stage for n connections, the layers composed by hand."""
    now = 1.0
    conns = connections(n, list(range(BUCKETS)))
    events = [event_bytes(c, i) for i, c in enumerate(conns)]
    owner = ConntrackSync(OWNER, BUCKETS, rng=random.Random(1), now=now)
    peer = ConntrackSync(PEER, BUCKETS, rng=random.Random(2), now=now)
    peer.peer_up(OWNER, now)
    rb_out = ReliableBroadcast(OWNER, random.Random(3), now=now)
    rb_in = ReliableBroadcast(PEER, random.Random(4), now=now)
    rb_in.peer_up(OWNER, rb_out.next_seq, now)
    sealer = Encryption(OWNER, KEYRING, 1)
    opener = Encryption(PEER, KEYRING, 1)
    bad: collections.Counter[str] = collections.Counter()
    layouts = (
        EventLayouts(MARK_MASK) if EventLayouts is not None else None
    )  # as ConntrackSocket
    t: dict[str, float] = collections.defaultdict(float)

    def stage(name: str, fn: Callable[..., Any], *args: Any) -> Any:
        t0 = time.process_time()
        out = fn(*args)
        t[name] += time.process_time() - t0
        return out

    def decode_events(batch: list[bytes]) -> list[Any]:
        return [
            e
            for data in batch
            for e in (
                parse_events(data, MARK_MASK, bad, layouts)
                if layouts is not None
                else parse_events(data, MARK_MASK, bad)
            )
        ]

    def mirror(decoded: list[Any]) -> None:
        for _, c in decoded:
            owner.local_new(c, now)

    def encode_records() -> list[bytes]:
        return [encode_ct_fast(m) for m in owner.messages_to_send(now)]

    def broadcast(records: list[bytes]) -> list[bytes]:
        for payload in pack(records, MAX_PAYLOAD):
            rb_out.send(payload, now)
        msgs = [wire.encode_message(m) for m in rb_out.messages_to_send(now)]
        return pack(msgs, sealer.max_plaintext)

    def seal(plaintexts: list[bytes]) -> list[bytes]:
        return [sealer.seal(p) for p in plaintexts]

    def open_all(datagrams: list[bytes]) -> list[bytes]:
        return [o[1] for d in datagrams if (o := opener.open(d)) is not None]

    def decode_all(plaintexts: list[bytes]) -> list[Any]:
        return [m for p in plaintexts for m in wire.decode_messages(p)]

    def deliver(rb_msgs: list[Any]) -> list[bytes]:
        for m in rb_msgs:
            rb_in.receive(m, OWNER, now)
        out = []
        while (e := rb_in.next_event()) is not None:
            if isinstance(e, Delivered):
                out.append(e.payload)
        return out

    def decode_records(payloads: list[bytes]) -> list[Any]:
        return [m for p in payloads for m in decode_ct_payload(p)]

    def insert(ct_msgs: list[Any]) -> None:
        for m in ct_msgs:
            peer.receive(m, OWNER, now)

    for start in range(0, n, BATCH):
        decoded = stage(
            "owner: netlink event decode", decode_events, events[start : start + BATCH]
        )
        stage("owner: mirror and queue", mirror, decoded)
        records = stage("owner: CT record encode", encode_records)
        plaintexts = stage("owner: broadcast payloads", broadcast, records)
        datagrams = stage("owner: AEAD seal", seal, plaintexts)
        opened = stage("peer: AEAD open", open_all, datagrams)
        rb_msgs = stage("peer: datagram decode", decode_all, opened)
        payloads = stage("peer: broadcast delivery", deliver, rb_msgs)
        ct_msgs = stage("peer: CT record decode", decode_records, payloads)
        stage("peer: cache insert", insert, ct_msgs)
    if bad or peer.stats.cache_sizes.get(OWNER) != n:
        raise SystemExit(f"stages: not every connection arrived ({bad}, {peer.stats})")
    return dict(t)


def _pair() -> tuple[Node, Node, float]:
    """Two Nodes that see each other up and have split the buckets."""
    nodes = [
        Node(
            NodeConfig(
                node_id=i,
                settings=SETTINGS,
                keyring=KEYRING,
                incarnation=1,
                initial_counter=1,
            ),
            random.Random(i),
            0.0,
        )
        for i in (OWNER, PEER)
    ]
    now = 0.0
    while now < 1.5:
        now = round(now + 0.005, 6)
        for a in nodes:
            due = a.next_timer()
            if due is not None and due <= now:
                a.handle_timer(now)
        _move(nodes, now)
    if not all(n.ready for n in nodes):
        raise SystemExit("end to end: the two nodes did not become ready")
    return nodes[0], nodes[1], now


def _datagrams(out: list[Any]) -> list[bytes]:
    """The datagrams' bytes: (datagram, destination) pairs today, bare bytes
    in trees from before destinations. No zone copies are configured here."""
    return [d if isinstance(d, bytes) else d[0] for d in out]


def _move(nodes: list[Node], now: float) -> None:
    moving = True
    while moving:
        moving = False
        for a in nodes:
            while a.next_event() is not None:
                pass
            for d in _datagrams(a.datagrams_to_send(now)):
                moving = True
                for b in nodes:
                    if b is not a:
                        b.receive_datagram(d, now)


def end_to_end(n: int) -> dict[str, float]:
    """CPU seconds of the owner and the peer Node for n connections."""
    owner, peer, now = _pair()
    conns = connections(n, sorted(owner.owned_buckets()))
    t_owner = t_peer = 0.0
    for start in range(0, n, BATCH):
        batch = conns[start : start + BATCH]
        t0 = time.process_time()
        for c in batch:
            owner.connection_new(c, now)
        datagrams = _datagrams(owner.datagrams_to_send(now))
        t1 = time.process_time()
        for d in datagrams:
            peer.receive_datagram(d, now)
        t2 = time.process_time()
        t_owner += t1 - t0
        t_peer += t2 - t1
        for a in (owner, peer):
            while a.next_event() is not None:
                pass
    cached = len(peer.peer_cache(OWNER))
    if cached != n:
        raise SystemExit(f"end to end: {cached} of {n} connections cached")
    return {"owner: end to end": t_owner, "peer: end to end": t_peer}


def cache_memory(n: int) -> float:
    """Bytes the peer cache holds per cached connection (tracemalloc)."""
    conns = connections(n, list(range(BUCKETS)))
    peer = ConntrackSync(PEER, BUCKETS, rng=random.Random(2), now=1.0)
    peer.peer_up(OWNER, 1.0)
    payloads = [
        p
        for start in range(0, n, BATCH)
        for p in pack(
            [encode_ct_fast(m) for m in _announce(conns[start : start + BATCH])],
            MAX_PAYLOAD,
        )
    ]
    del conns
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for p in payloads:
        for m in decode_ct_payload(p):
            peer.receive(m, OWNER, 1.0)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    if peer.stats.cache_sizes.get(OWNER) != n:
        raise SystemExit("cache memory: not every connection cached")
    return held / n


def mirror_memory(n: int) -> float:
    """Bytes the owner's mirror holds per announced connection (tracemalloc).
    Each Connection is made inside the loop and dropped after its event, as
    the daemon drops a decoded event; what stays is what the mirror keeps."""
    buckets = list(range(BUCKETS))
    owner = ConntrackSync(OWNER, BUCKETS, rng=random.Random(1), now=1.0)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for start in range(0, n, BATCH):
        for i in range(start, min(n, start + BATCH)):
            owner.local_new(connection(i, buckets), 1.0)
        owner.messages_to_send(1.0)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    if owner.stats.local_entries != n:
        raise SystemExit("mirror memory: not every connection mirrored")
    return held / n


def _announce(conns: list[Connection]) -> list[Any]:
    sync = ConntrackSync(OWNER, BUCKETS, rng=random.Random(1), now=1.0)
    for c in conns:
        sync.local_new(c, 1.0)
    return list(sync.messages_to_send(1.0))


def _agent_tree() -> str:
    import availability_manager

    return str(Path(availability_manager.__file__).resolve().parent.parent)


_END_TO_END = {
    "owner": "owner: end to end, Connection to datagrams (Node)",
    "peer": "peer: end to end, datagram to cache (Node)",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    report.add_common_options(ap)
    ap.add_argument("--connections", type=int, default=100_000)
    ap.add_argument(
        "--repeat", type=int, default=3, help="runs; the median is reported"
    )
    args = ap.parse_args()
    n = 5_000 if args.quick else args.connections
    repeat = 1 if args.quick else args.repeat
    if n < BATCH or repeat < 1:
        ap.error(f"--connections must be at least {BATCH}, --repeat at least 1")
    out = report.out_dir(args, "sync_path")
    facts = env.machine_facts()
    sampler = env.LoadSampler(interval=1.0)
    runs: list[dict[str, float]] = []
    with sampler:
        for _ in range(repeat):
            gc.collect()
            run = stages(n)
            gc.collect()
            run.update(end_to_end(n))
            runs.append(run)
        mem = cache_memory(n)
        mirror_mem = mirror_memory(n)
    us = {k: statistics.median(r[k] for r in runs) / n * 1e6 for k in runs[0]}
    rows = []
    for side in ("owner", "peer"):
        parts = [k for k in us if k.startswith(side) and not k.endswith("end to end")]
        total = sum(us[k] for k in parts)
        for k in parts:
            rows.append([k, f"{us[k]:.2f}", f"{100 * us[k] / total:.0f}%"])
        rows.append([f"**{side}: sum of stages**", f"**{total:.2f}**", ""])
        rows.append([_END_TO_END[side], f"{us[f'{side}: end to end']:.2f}", ""])
    both = us["owner: end to end"] + us["peer: end to end"]
    lines = report.header(
        "Sync path: where the time goes (no namespaces)", facts, sampler.text()
    )
    lines += [
        (
            f"{n:,} new UDP connections (IPv4, no NAT), {BATCH} kernel events per pump, through "
            f"the agent's sync path in one process; CPU time per connection, median of {repeat} "
            "run(s). Stages are timed one at a time over each batch (layers composed as node.py "
            "does); *end to end* runs the same through two `Node`s; the *owner* figure starts "
            "from a Connection, so the owner's whole cost is it plus the netlink decode. Agent "
            f"package measured: `{_agent_tree()}`."
        ),
        "",
        *report.table(["stage", "us / connection", "share of side"], rows),
        "",
        (
            f"**Owner + one peer: {both:.1f} us per connection** (a 2-node cluster; each further "
            f"peer adds {us['peer: end to end']:.1f} us). Peer cache: "
            f"{mem * 100_000 / 2**20:.1f} MiB per 100,000 cached connections, owner's mirror: "
            f"{mirror_mem * 100_000 / 2**20:.1f} MiB per 100,000 announced (tracemalloc; "
            "goal for the whole agent <= 40)."
        ),
        "",
    ]
    report.write(out, "sync_path", lines, {"us_per_connection": us, "cache_bytes_per_conn": mem,
                                           "mirror_bytes_per_conn": mirror_mem,
                                           "connections": n, "runs": runs})  # fmt: skip
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
