"""bin/lab end to end (root): the wrapper, the argument plumbing and the exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fwcluster_lab.netns import list_namespaces

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("nft") is None or not (REPO / ".venv").exists(),
        reason="needs root, nftables and the project venv",
    ),
]


RUN_DIR = Path("/run/fwcluster-lab-tests/fwb")  # not under pytest's tmp (see conftest)


def lab(tmp: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FWCLUSTER_LAB_PREFIX": "fwb-", "FWCLUSTER_LAB_RUN": str(RUN_DIR)}
    proc = subprocess.run(
        [str(REPO / "bin" / "lab"), *args], env=env, capture_output=True, text=True, timeout=120
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_bin_lab_round_trip(tmp_path: Path) -> None:
    lab(tmp_path, "down")
    try:
        assert "fw1 forwards alone" in lab(tmp_path, "up", "--nodes", "2", "--no-agent").stdout
        status = json.loads(lab(tmp_path, "status", "--json").stdout)
        assert status["hosts"]["fw1"]["links"] == {"out0": "UP", "in0": "UP", "sync0": "UP"}
        assert status["hosts"]["fw2"]["links"]["out0"] == "DOWN"
        assert all(p["alive"] for p in status["processes"].values())

        out = tmp_path / "t.json"
        line = lab(tmp_path, "traffic", "--tcp", "5", "--udp", "2", "--ping", "1",
                   "--duration", "0.5", "--json", str(out)).stdout  # fmt: skip
        assert "tcp 5/5 established, 0 lost" in line
        assert json.loads(out.read_text())["lost"] == 0

        lab(tmp_path, "partition", "zone", "--nodes", "fw1")
        assert "fw1-out" in lab(tmp_path, "faults").stdout
        lab(tmp_path, "heal")
        assert "fw1-out" not in lab(tmp_path, "faults").stdout

        assert lab(tmp_path, "exec", "fw1", "--", "ip", "-br", "addr").stdout.count("192.0.2.") == 2
        assert (
            lab(tmp_path, "exec", "server", "--", "sh", "-c", "exit 3", check=False).returncode == 3
        )
        bad = lab(tmp_path, "kill", "fw9", check=False)
        assert bad.returncode == 1 and "no host named 'fw9'" in bad.stderr
    finally:
        lab(tmp_path, "down")
    assert not [ns for ns in list_namespaces() if ns.startswith("fwb-")]
    assert "nothing to remove" in lab(tmp_path, "down").stdout
