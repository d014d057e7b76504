"""Bucket hash: balance of the nftables bucket hash, and the cost of its twin
and of the conntrack event decoder.

Balance: flows are hashed with the Python twin (dataplane/bucket.py, checked
byte for byte against the kernel by tests/lab/test_nftables_backend.py) into
256 buckets, for two workloads:

* *many clients*: random client addresses in 198.18.0.0/15 with random
  ephemeral ports, to 16 servers on ports 80/443;
* *NAT'd clients*: 4 client addresses (carrier-grade NAT in front of the
  firewall) with random ports, to one server on 443.

For each of `hash_fields` = addresses+ports and addresses it reports the
flows per bucket (mean, max/mean, coefficient of variation against the
Poisson ideal 1/sqrt(mean)) and the number of empty buckets.

Cost: microseconds per bucket_of() call of the twin, and per conntrack event
for our netlink decoder and for pyroute2's generic decoder on the same bytes
(the hot path of the sync; NOTES.md asks for the hand-written one).

    .venv/bin/python bench/bucket_hash.py            # 200,000 flows per case
    .venv/bin/python bench/bucket_hash.py --quick    # 5,000 flows, writes to a temp dir
"""

from __future__ import annotations

import argparse
import collections
import datetime
import ipaddress
import random
import socket
import statistics
import struct
import sys
import tempfile
import timeit
from pathlib import Path

from availability_manager.connection import (
    IPS_ASSURED,
    IPS_SEEN_REPLY,
    Connection,
    make_tuple,
)
from availability_manager.dataplane import netlink_attrs as nl
from availability_manager.dataplane.bucket import bucket_of
from availability_manager.dataplane.conntrack_netlink import (
    IPCTNL_MSG_CT_NEW,
    NFNL_SUBSYS_CTNETLINK,
    encode_inject,
    parse_events,
)
from availability_manager.types import ClusterSettings

ROOT = Path(__file__).resolve().parent.parent
ZONES = ("inside", "outside")
BUCKETS = 256
SEED = 0x5EEDF17E
BENCH_NET = ipaddress.ip_network("198.18.0.0/15")
NAT_CLIENTS = 4
NATTED = "NAT'd clients"


def flows(
    workload: str, n: int, rng: random.Random
) -> list[tuple[bytes, bytes, int, int]]:
    base = int(BENCH_NET.network_address)
    if workload == "many clients":
        servers = [(base + 0x10000 + i).to_bytes(4, "big") for i in range(16)]
        return [
            (
                (base + rng.randrange(1, 0x10000)).to_bytes(4, "big"),
                rng.choice(servers),
                rng.randint(1024, 65535),
                rng.choice((80, 443)),
            )
            for _ in range(n)
        ]
    clients = [(base + 1 + i).to_bytes(4, "big") for i in range(NAT_CLIENTS)]
    server = (base + 0x10001).to_bytes(4, "big")
    # Distinct (client, port) pairs: a NAT never uses one twice at the same time.
    ports = 65535 - 1024 + 1
    picks = rng.sample(range(NAT_CLIENTS * ports), min(n, NAT_CLIENTS * ports))
    return [(clients[i // ports], server, 1024 + i % ports, 443) for i in picks]


def balance(
    settings: ClusterSettings, sample: list[tuple[bytes, bytes, int, int]]
) -> list[int]:
    counts = collections.Counter(
        bucket_of(
            settings,
            ZONES,
            in_zone="inside",
            out_zone="outside",
            proto=6,
            src=s,
            dst=d,
            sport=sp,
            dport=dp,
        )
        for s, d, sp, dp in sample
    )
    return [counts.get(b, 0) for b in range(settings.buckets)]


def event_bytes() -> bytes:
    conn = Connection(
        6,
        make_tuple("198.18.0.10", "198.19.0.10", 40000, 443),
        make_tuple("198.19.0.10", "198.18.0.10", 443, 40000),
        state=3,
        status=IPS_ASSURED | IPS_SEEN_REPLY,
        mark=42,
    )
    payload = struct.pack("!BBH", socket.AF_INET, 0, 0) + encode_inject(conn)
    return nl.message(
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW, 0x600, 0, payload
    )


def costs(quick: bool) -> dict[str, float]:
    """Best-of-5 microseconds per call."""
    number = 200 if quick else 5000
    out: dict[str, float] = {}
    src, dst = bytes([198, 18, 0, 10]), bytes([198, 19, 0, 10])

    def twin() -> None:
        bucket_of(
            ClusterSettings(),
            ZONES,
            in_zone="inside",
            out_zone="outside",
            proto=6,
            src=src,
            dst=dst,
            sport=40000,
            dport=443,
        )

    out["twin bucket_of()"] = (
        min(timeit.repeat(twin, number=number, repeat=5)) / number * 1e6
    )
    data = event_bytes()
    counter: collections.Counter[str] = collections.Counter()
    out["event decode, ours"] = (
        min(
            timeit.repeat(
                lambda: parse_events(data, 0xFFFF, counter), number=number, repeat=5
            )
        )
        / number
        * 1e6
    )
    try:
        from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg
    except ImportError:  # pragma: no cover - pyroute2 is a dependency
        return out

    def generic() -> None:
        msg = nfct_msg(data)
        msg.decode()
        msg.get_attr("CTA_TUPLE_ORIG")

    n = max(number // 5, 50)
    out["event decode, pyroute2"] = (
        min(timeit.repeat(generic, number=n, repeat=5)) / n * 1e6
    )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run into a temp dir")
    ap.add_argument(
        "--out", type=Path, help="output directory (default docs/benchmarks)"
    )
    args = ap.parse_args(argv)
    n = 5_000 if args.quick else 200_000
    out_dir = args.out or (
        Path(tempfile.mkdtemp()) if args.quick else ROOT / "docs/benchmarks"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(20261127)

    rows = []
    cvs: dict[tuple[str, str], float] = {}
    hists: dict[tuple[str, str], list[int]] = {}
    for workload in ("many clients", "NAT'd clients"):
        sample = flows(workload, n, rng)
        for fields in ("addresses+ports", "addresses"):
            settings = ClusterSettings(
                buckets=BUCKETS, hash_seed=SEED, hash_fields=fields
            )
            per_bucket = balance(settings, sample)
            hists[(workload, fields)] = per_bucket
            mean = statistics.fmean(per_bucket)
            cv = statistics.pstdev(per_bucket) / mean
            cvs[(workload, fields)] = cv / (1 / mean**0.5)
            rows.append(
                f"| {workload} | {fields} | {mean:.1f} | {max(per_bucket) / mean:.2f} "
                f"| {cv:.3f} | {1 / mean**0.5:.3f} | {per_bucket.count(0)} |"
            )
    cost = costs(args.quick)

    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cmd = ".venv/bin/python bench/bucket_hash.py" + (" --quick" if args.quick else "")
    lines = [
        "## Bucket hash: balance and cost",
        "",
        f"Command: `{cmd}` ({when}).",
        "",
        (
            f"{n:,} TCP flows per workload hashed into {BUCKETS} buckets with the Python twin of "
            "the nftables rule (jhash over the zone-oriented concatenation, explicit seed, "
            "reciprocal_scale). *many clients*: random clients in 198.18.0.0/15 with random "
            "ports to 16 servers; *NAT'd clients*: 4 client addresses with random ports to "
            "one server. CV: coefficient of variation of flows per bucket; the Poisson "
            "ideal is 1/sqrt(mean)."
        ),
        "",
        "| workload | hash_fields | flows/bucket | max/mean | CV | ideal CV | empty buckets |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        "| cost (best of 5, this machine) | us per call |",
        "| --- | ---: |",
        *(f"| {k} | {v:.1f} |" for k, v in cost.items()),
        "",
        (
            "- With `addresses+ports` the spread of flows per bucket is "
            f"{max(cvs[(w, 'addresses+ports')] for w in ('many clients', NATTED)):.2f} times "
            "the Poisson ideal at worst (1.00 = as even as random placement allows)."
        ),
        (
            f"- With `addresses`, {NAT_CLIENTS} NAT'd client addresses to one server fill "
            f"{BUCKETS - hists[(NATTED, 'addresses')].count(0)} of {BUCKETS} buckets: the load "
            "goes to a handful of nodes. Use `addresses` only when ports must not matter "
            "(e.g. protocols whose related flows use other ports without conntrack helpers)."
        ),
        (
            "- The twin is for tests, tools and the simulator; the kernel computes the "
            "bucket on the data path and the agent reads it back from the conntrack mark."
        ),
        (
            "- The decoder figures were measured on a 2-core VM shared with other jobs; "
            "compare the two rows with each other, not with other machines."
        ),
        "",
        "![flows per bucket](bucket_hash.png)",
        "",
    ]
    (out_dir / "bucket_hash.md").write_text("\n".join(lines))
    plot(hists, out_dir / "bucket_hash.png")
    print("\n".join(lines))
    print(f"written to {out_dir}", file=sys.stderr)
    return 0


def plot(hists: dict[tuple[str, str], list[int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=False)
    for ax, workload in zip(axes, ("many clients", "NAT'd clients"), strict=True):
        for fields, color in (
            ("addresses+ports", "tab:blue"),
            ("addresses", "tab:orange"),
        ):
            ax.plot(
                range(BUCKETS),
                hists[(workload, fields)],
                lw=0.9,
                color=color,
                label=fields,
            )
        ax.set_title(f"{workload}")
        ax.set_xlabel("bucket")
        ax.set_ylabel("flows")
        if workload == NATTED:  # spikes of whole clients next to empty buckets
            ax.set_yscale("symlog")
        else:
            ax.set_ylim(bottom=0)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle("Flows per bucket (nftables jhash, 256 buckets)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
