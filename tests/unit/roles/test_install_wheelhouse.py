"""The role's node-side install (issue 15.11) on localhost, with stand-in
agent wheels: installed from the record of what is installed (not from
whether the copy changed), so a failed install is retried; a failed install
puts back the agent it replaced and fails saying so; the wheel directory is
replaced, not grown; availability_manager_rollback reinstalls the previous
agent."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from .test_inventory_validation import ansible_playbook, failure_text

PLAYBOOK = Path(__file__).with_name("install_playbook.yml")


def fake_wheel(directory: Path, version: str) -> Path:
    """A minimal wheel of a stand-in availability-manager (no build tools needed)."""
    dist = f"availability_manager-{version}.dist-info"
    files = {
        "availability_manager/__init__.py": f'VERSION = "{version}"\n',
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: availability-manager\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{name},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"availability_manager-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        for name, text in files.items():
            whl.writestr(name, text)
    return path


def fake_wheelhouse(work: Path, version: str, broken: bool = False) -> Path:
    """A packed wheelhouse holding one stand-in availability-manager wheel."""
    wheel = fake_wheel(work / f"wheels-{version}", version)
    if broken:
        wheel.write_bytes(b"not a zip file")
    tar = work / f"wheelhouse-{version}.tar"
    with tarfile.open(tar, "w") as out:
        out.add(wheel, arcname=wheel.name)
    return tar


def install(prefix: Path, tar: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return ansible_playbook(
        "-i", "localhost,", "-e", f"ansible_python_interpreter={sys.executable}",
        "-e", f"availability_manager_prefix={prefix}", "-e", f"wheelhouse_tar={tar}",
        *extra, str(PLAYBOOK),
    )


def installed_version(prefix: Path) -> str:
    out = subprocess.run(
        [str(prefix / "bin" / "python"), "-c", "import availability_manager as a; print(a.VERSION)"],
        capture_output=True, text=True, check=True,
    )
    return out.stdout.strip()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("install")


def test_upgrade_retry_and_rollback(work: Path) -> None:
    prefix = work / "opt" / "availability-manager"
    prefix.parent.mkdir(parents=True)
    v1, v2 = fake_wheelhouse(work, "1.0"), fake_wheelhouse(work, "2.0")
    v3_broken, v3 = fake_wheelhouse(work, "3.0", broken=True), None

    proc = install(prefix, v1)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert installed_version(prefix) == "1.0"

    again = install(prefix, v1)
    assert again.returncode == 0 and "pip_install.yml for localhost" not in again.stdout

    assert install(prefix, v2).returncode == 0 and installed_version(prefix) == "2.0"
    assert sorted(p.name for p in (prefix.parent / "availability-manager-wheels").iterdir()) == [
        "availability_manager-2.0-py3-none-any.whl"
    ], "the wheel directory keeps only the installed wheelhouse"

    # A failed install puts the agent it replaced back and says so ...
    failed = install(prefix, v3_broken)
    assert failed.returncode != 0
    assert "the agent installed before was reinstalled" in failure_text(failed.stdout + failed.stderr)
    assert installed_version(prefix) == "2.0"
    # ... and the next run tries again although the copy no longer changes
    # (it used to install only when the copy changed: "ok" with the old agent).
    retried = install(prefix, v3_broken)
    assert retried.returncode != 0 and "pip_install.yml for localhost" in retried.stdout
    v3 = fake_wheelhouse(work / "fixed", "3.0")
    v3_broken.write_bytes(v3.read_bytes())
    assert install(prefix, v3_broken).returncode == 0 and installed_version(prefix) == "3.0"

    # Rollback: the agent before the last upgrade, once.
    back = install(prefix, v3_broken, "-e", "availability_manager_rollback=true")
    assert back.returncode == 0, back.stdout + back.stderr
    assert installed_version(prefix) == "2.0"
    again = install(prefix, v3_broken, "-e", "availability_manager_rollback=true")
    assert "pip_install.yml for localhost" not in again.stdout
    assert install(prefix, v3_broken).returncode == 0 and installed_version(prefix) == "3.0"
