"""The traffic generator over IPv6 on loopback (no namespaces): one server
process listening on 127.0.0.1 and ::1, one client per family, each summary
exact and counting only its own family's run (ICMPv6 echo too, as root)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from test_traffic_loopback import ROOT, free_port, run_client


def test_one_server_both_families_each_client_counts_its_own(tmp_path: Path) -> None:
    port = free_port()
    control = tmp_path / "server.sock"
    server = subprocess.Popen(
        [sys.executable, "-m", "fwcluster_lab.traffic_server", "--listen", "127.0.0.1",
         "--listen", "::1", "--port", str(port), "--control", str(control)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not control.exists():
            assert time.monotonic() < deadline and server.poll() is None, "server did not start"
            time.sleep(0.02)
        summaries = {}
        for family, address in (("4", "127.0.0.1"), ("6", "::1")):
            out = tmp_path / f"s{family}.json"
            opts = ["--tcp", str(5 * int(family)), "--udp", "3", "--duration", "0.6"]
            opts += ["--ping", "2"] if ROOT else []
            argv = [sys.executable, "-m", "fwcluster_lab.traffic", "--server", address,
                    "--port", str(port), "--json", str(out), "--drain", "1",
                    "--control", str(control), *opts]  # fmt: skip
            summaries[family] = run_client(argv, out)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)
    for family, s in summaries.items():
        streams = 5 * int(family)
        assert (s["connections"], s["established"], s["lost"], s["duplicates"]) == (
            streams,
            streams,
            0,
            0,
        ), family
        run = s["server"]["run"]
        # the server attributes exactly this client's streams and bytes to its run
        assert run["tcp_connections"] == streams
        assert s["tcp"]["bytes_sent"] == s["tcp"]["bytes_echoed"] == run["tcp_bytes_in"] > 0
        assert s["udp"]["sent"] == s["udp"]["replied"] == run["udp_unique_requests"] > 0
        if ROOT:  # ICMP echo (IPv4) and ICMPv6 echo, answered by the kernel
            assert s["ping"]["sent"] == s["ping"]["replied"] > 0, family
            assert s["ping"]["lost"] == 0 and s["ping"]["duplicates"] == 0
