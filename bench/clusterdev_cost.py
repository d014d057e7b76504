"""Forwarding cost per packet through one cluster node: the clusterdev kernel
module backend against the nftables backend and a plain stateful nft ruleset,
side by side in one guest kernel (the host here cannot load modules).

Three identical chains live in namespaces of the same kernel, one per data
plane: client - bridge - node - bridge - server, the node's zones carrying
the cluster IP (multicast cluster MAC for both backends, the node's own MAC
for the plain ruleset). Each backend is the agent's own class
(ClusterdevDataPlane, NftablesDataPlane) installed in its node namespace and
given every bucket, so each packet takes the full ownership path. Per round,
each chain in turn: iperf3 UDP with 64-byte datagrams at full speed (packets
per second received; the flow is never answered, so every packet is NEW to
conntrack) and iperf3 TCP (established both ways; Gbit/s), plus the
guest's busy CPU per received UDP packet. Rounds alternate the chains so
background load hits all alike. Goal (issue 5): clusterdev at least as fast
as the nftables backend.

    .venv/bin/python bench/clusterdev_cost.py           # boots a guest (virtme-ng, TCG)
    .venv/bin/python bench/clusterdev_cost.py --quick   # host only: plain and nftables, 1 s

A full run needs kmod/.venv/bin/vng, a /boot/vmlinuz-<kver> and
kmod/build/<kver>/clusterdev.ko (kmod/tools/install-build-deps.sh, build.sh);
without them it says what is missing and exits 0 (skipped). Inside the guest
this file runs itself with --in-guest and prints one RESULT line of JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from availability_manager.dataplane.base import DataPlane, DataPlaneConfig, Zone
from availability_manager.dataplane.clusterdev import ClusterdevDataPlane, device_name
from availability_manager.dataplane.nftables import NftablesDataPlane
from availability_manager.types import ClusterSettings
from fwbench import env, guest, report
from fwbench.measure import iface_counters
from fwcluster_lab.netns import ns_run
from fwcluster_lab.nslab import NsLab, inside, sh

NAME = "clusterdev_cost"
PREFIX = "fwkc-"  # namespaces of this benchmark (fwk- is this lab prefix)
VARIANTS = ("plain", "nftables", "clusterdev")
PORT = 5201
CLIENT, CLIENT_GW = "198.18.0.100", "198.18.0.1"
SERVER, SERVER_GW = "198.18.1.100", "198.18.1.1"
CLIENT_MAC, SERVER_MAC = "01:00:5e:7f:00:11", "01:00:5e:7f:00:12"
BUCKETS = 256
PLAIN_RULESET = """
table inet fwkc_plain {
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    ct state new accept
  }
}
"""


def dataplane_config() -> DataPlaneConfig:
    zones = (
        Zone(
            "outside", "ethc", (ipaddress.IPv4Interface(f"{CLIENT_GW}/24"),), CLIENT_MAC
        ),
        Zone(
            "inside", "eths", (ipaddress.IPv4Interface(f"{SERVER_GW}/24"),), SERVER_MAC
        ),
    )
    settings = ClusterSettings(buckets=BUCKETS, backend="clusterdev")
    return DataPlaneConfig(node_id=1, settings=settings, zones=zones)


def _backend(variant: str) -> DataPlane:
    config = dataplane_config()
    if variant == "clusterdev":
        return ClusterdevDataPlane(config)
    return NftablesDataPlane(config)


class Chains:
    """One client - node - server chain per variant, all on one switch namespace."""

    def __init__(self, variants: tuple[str, ...]) -> None:
        self.variants = variants
        self.lab = NsLab(PREFIX)
        self.servers: list[subprocess.Popen[bytes]] = []

    def ns(self, variant: str, role: str) -> str:
        return f"{PREFIX}{variant[:4]}-{role}"

    def build(self) -> None:
        sw = self.lab.ns("sw")
        for v in self.variants:
            cli, node, srv = (self.lab.ns(f"{v[:4]}-{r}") for r in ("cli", "fw", "srv"))
            for side, host, host_if in (("c", cli, "eth0"), ("c", node, "ethc"),
                                        ("s", node, "eths"), ("s", srv, "eth0")):  # fmt: skip
                bridge = f"{v[:4]}-{side}"
                if bridge not in sh("ip", "-o", "link", "show", ns=sw):
                    self.lab.bridge(sw, bridge)
                port = f"{v[:4]}{side}{host.rsplit('-', 1)[1]}"
                self.lab.veth(sw, port, host, host_if)
                self.lab.attach(sw, port, bridge)
            self.lab.addr(cli, "eth0", f"{CLIENT}/24")
            self.lab.route(cli, "198.18.1.0/24", CLIENT_GW)
            self.lab.addr(srv, "eth0", f"{SERVER}/24")
            self.lab.route(srv, "198.18.0.0/24", SERVER_GW)
            # The node's own addresses first (primary), as in the lab.
            self.lab.addr(node, "ethc", "198.18.0.11/24")
            self.lab.addr(node, "eths", "198.18.1.11/24")
            self._data_plane(v, node)
            self.servers.append(
                subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        srv,
                        "iperf3",
                        "-s",
                        "-B",
                        SERVER,
                        "-p",
                        str(PORT),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(1.0)  # the iperf3 servers bind

    def _data_plane(self, variant: str, node: str) -> None:
        with inside(node):
            if variant == "plain":
                sh("ip", "addr", "add", f"{CLIENT_GW}/24", "dev", "ethc")
                sh("ip", "addr", "add", f"{SERVER_GW}/24", "dev", "eths")
                sh("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
                subprocess.run(
                    ["nft", "-f", "-"], input=PLAIN_RULESET, text=True, check=True
                )
                return
            backend = _backend(variant)
            backend.install()
            backend.set_owned_buckets(frozenset(range(BUCKETS)))
            # Kernel state outlives the object: the namespace's deletion removes it.

    def destroy(self) -> None:
        for proc in self.servers:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.lab.destroy()


def iperf(chains: Chains, variant: str, udp: bool, seconds: float) -> dict[str, Any]:
    argv = ["iperf3", "-c", SERVER, "-p", str(PORT), "-t", f"{seconds:g}", "-J"]
    if udp:
        argv += ["-u", "-b", "0", "-l", "64"]
    node = chains.ns(variant, "fw")
    devices = tx_devices(variant)
    tx0 = {dev: iface_counters(node, dev) for dev in devices}
    j0 = env.Jiffies()
    out = ns_run(chains.ns(variant, "cli"), argv, check=False, timeout=seconds + 60)
    busy = env.Jiffies().busy_s_since(j0)
    # Bytes per transmitted packet towards the server: a GSO packet passed
    # whole counts once with up to 64 KiB; one segmented in software before
    # the device counts as MTU-sized packets.
    tx_size = {}
    for dev in devices:
        after = iface_counters(node, dev)
        sent = after[3] - tx0[dev][3]
        tx_size[dev] = (after[2] - tx0[dev][2]) / sent if sent else 0.0
    data = json.loads(out.stdout) if out.stdout.strip() else {}
    if out.returncode != 0 or "end" not in data:
        raise RuntimeError(
            f"iperf3 ({variant}): {data.get('error', out.stderr.strip())}"
        )
    end = data["end"]
    if not udp:
        return {
            "gbit_s": end["sum_received"]["bits_per_second"] / 1e9,
            "busy_cpu_s": busy,
            "tx_bytes_per_packet": tx_size,
        }
    s = end["sum"]
    received = s["packets"] - s["lost_packets"]
    return {
        "pps": received / s["seconds"],
        "sent_pps": s["packets"] / s["seconds"],
        "busy_cpu_s": busy,
        "cpu_ns_per_packet": busy * 1e9 / received if received else None,
    }


def tx_devices(variant: str) -> tuple[str, ...]:
    """The node's devices towards the server: the zone interface, and for
    clusterdev the link on it (whose transmit counts what reached it)."""
    if variant == "clusterdev":
        return (device_name(1, dataplane_config().zones[1]), "eths")
    return ("eths",)


def measure(variants: tuple[str, ...], rounds: int, seconds: float) -> dict[str, Any]:
    """Build the chains, alternate the variants `rounds` times, tear down."""
    for mod in ("nf_conntrack", "nf_conntrack_netlink", "veth", "bridge", "nf_tables"):
        subprocess.run(["modprobe", mod], capture_output=True, check=False)
    chains = Chains(variants)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    try:
        chains.build()
        for _ in range(rounds):
            for v in variants:
                runs[v].append(
                    {
                        "udp": iperf(chains, v, True, seconds),
                        "tcp": iperf(chains, v, False, seconds),
                    }
                )
    finally:
        chains.destroy()
    return {"variants": list(variants), "rounds": rounds, "seconds": seconds, "runs": runs,
            "kernel": os.uname().release, "cpus": os.cpu_count()}  # fmt: skip


# --- host side: boot the guest, write the section ---------------------------------------


def _median(values: list[float | None]) -> float:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else float("nan")


def summarize(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    out = {}
    for v in result["variants"]:
        runs = result["runs"][v]
        out[v] = {
            "pps": _median([r["udp"]["pps"] for r in runs]),
            "cpu_ns_per_packet": _median([r["udp"]["cpu_ns_per_packet"] for r in runs]),
            "gbit_s": _median([r["tcp"]["gbit_s"] for r in runs]),
            **{
                f"tx_size_{dev}": _median(
                    [r["tcp"].get("tx_bytes_per_packet", {}).get(dev) for r in runs]
                )
                for dev in tx_devices(v)
            },
        }
    return out


def section(
    result: dict[str, Any], facts: dict[str, str], load: str, where: str
) -> list[str]:
    med = summarize(result)
    lines = report.header("clusterdev backend: forwarding cost per packet", facts, load)
    lines += [
        (
            f"Measured {where}: kernel {result['kernel']}, {result['cpus']} vCPUs, "
            f"{result['rounds']} rounds of {result['seconds']:g} s per test, variants "
            "alternating."
        ),
        (
            "Three identical namespace chains (client - bridge - node - bridge - server), one "
            "per data plane; the backends are the agent's own classes owning all 256 buckets. "
            "UDP: iperf3, 64-byte datagrams, unlimited rate, never answered (each packet is NEW "
            "to conntrack); TCP: one iperf3 stream (established). CPU: the kernel's busy time "
            "per received UDP packet, sender and receiver included (the same in every variant)."
        ),
        "",
    ]
    rows = []
    for v in result["variants"]:
        m = med[v]
        each = ", ".join(f"{r['udp']['pps']:,.0f}" for r in result["runs"][v])
        tcp = ", ".join(f"{r['tcp']['gbit_s']:.3f}" for r in result["runs"][v])
        rows.append(
            [v, f"{m['pps']:,.0f} ({each})", f"{m['cpu_ns_per_packet']:,.0f}",
             f"{m['gbit_s']:.3f} ({tcp})"]
        )  # fmt: skip
    lines += report.table(
        ["data plane", "UDP packets/s: median (rounds)", "CPU ns/packet",
         "TCP Gbit/s: median (rounds)"], rows
    )  # fmt: skip
    lines.append("")
    if "clusterdev" in med and "nftables" in med:
        ratio = med["clusterdev"]["pps"] / med["nftables"]["pps"]
        met = "met" if ratio >= 1.0 else "NOT met"
        lines.append(
            f"clusterdev / nftables UDP packets per second: {ratio:.2f} (goal >= 1: {met})."
        )
        tcp_ratio = med["clusterdev"]["gbit_s"] / med["nftables"]["gbit_s"]
        lines.append(
            f"clusterdev / nftables TCP throughput: {tcp_ratio:.2f} (one stream; rounds vary by "
            "about 15 %, see the table)."
        )
    for v in result["variants"]:
        sizes = ", ".join(
            f"{dev} {med[v][f'tx_size_{dev}']:,.0f}" for dev in tx_devices(v)
        )
        lines.append(
            f"TCP, {v}: bytes per packet the node transmitted towards the server (median): "
            f"{sizes}."
        )
    lines.append(
        "The client's TCP sends GSO packets of up to 64 KiB that veth and the bridge pass "
        "whole; a node that segmented them in software before a device would transmit "
        "packets of at most the MTU (1500 bytes) there. A device with 0 transmitted "
        "nothing: forwarded packets leave by the route, which is the lower device's "
        "(the node's own address) in this topology, not cl0's transmit."
    )
    if where.startswith("in a TCG guest"):
        lines.append(
            "Under TCG every instruction is emulated: absolute numbers are far below real "
            "hardware and only the comparison between the variants, measured alike in the same "
            "guest, carries meaning. The host was shared with other work (load above)."
        )
    return lines


def plot(result: dict[str, Any], path: Path) -> None:
    plt = report.pyplot()
    med = summarize(result)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    names = list(med)
    axes[0].bar(names, [med[n]["pps"] for n in names], color="tab:blue")
    axes[0].set_title("UDP 64 B, packets/s (median)")
    axes[1].bar(names, [med[n]["cpu_ns_per_packet"] for n in names], color="tab:orange")
    axes[1].set_title("busy CPU ns per packet")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    report.add_common_options(parser)
    parser.add_argument("--in-guest", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print(f"{NAME}: skipped: needs root (network namespaces)")
        return 0
    if args.in_guest:
        print(
            "RESULT " + json.dumps(measure(VARIANTS, args.rounds, args.seconds)),
            flush=True,
        )
        return 0
    facts = env.machine_facts()
    with env.LoadSampler() as load:
        if args.quick:
            # Seconds, on the host: the module cannot load here, so the smoke
            # run checks the two module-free chains and the report path.
            result, where = (
                measure(VARIANTS[:2], 1, 1.0),
                "on the host (quick: no module)",
            )
        else:
            target = guest.target()
            if isinstance(target, str):
                print(f"{NAME}: skipped: {target}")
                return 0
            kver, ko = target
            print(f"{NAME}: booting {kver} under TCG, {args.rounds} rounds", flush=True)
            result = guest.run(
                kver, ko, Path(__file__),
                ["--rounds", str(args.rounds), "--seconds", f"{args.seconds:g}"],
            )  # fmt: skip
            where = f"in a TCG guest (virtme-ng --disable-kvm, kernel {kver})"
    d = report.out_dir(args, NAME)
    lines = section(result, facts, load.text(), where)
    plot(result, d / f"{NAME}.png")
    lines += ["", f"![clusterdev cost]({NAME}.png)"]
    report.write(d, NAME, lines, result)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
