"""The built collection tarball: licenses of each part, the users' README,
changelog config and fragments, the playbooks by their collection names; no
lab inventory (its fixed test key) and no tests of code the tarball leaves out."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAB_VARS = REPO / "inventories" / "lab" / "group_vars" / "firewalls.yml"


def lab_key() -> str:
    """The test hosts' fixed key, read from the clone's lab inventory."""
    import yaml

    key: str = yaml.safe_load(LAB_VARS.read_text())["availability_manager_key"]
    return key


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> tarfile.TarFile:
    out = tmp_path_factory.mktemp("build")
    galaxy = Path(sys.executable).parent / "ansible-galaxy"
    proc = subprocess.run(
        [str(galaxy), "collection", "build", "--output-path", str(out), str(REPO)],
        capture_output=True, text=True, timeout=300, check=False, cwd=REPO,
    )
    if proc.returncode != 0 and "No such file" in proc.stderr:
        pytest.skip("not in a clone: nothing to build")  # the installed copy (ansible-test)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = out.glob("fwcluster-cluster-*.tar.gz")
    return tarfile.open(path)


def names(tar: tarfile.TarFile) -> set[str]:
    return {m.name for m in tar.getmembers()}


def read(tar: tarfile.TarFile, name: str) -> str:
    member = tar.extractfile(name)
    assert member is not None, name
    return member.read().decode()


def test_licenses_match_each_part(tarball: tarfile.TarFile) -> None:
    assert "Version 3, 29 June 2007" in read(tarball, "LICENSE")
    assert "Version 2, June 1991" in read(tarball, "kmod/clusterdev/LICENSE")
    manifest = json.loads(read(tarball, "MANIFEST.json"))["collection_info"]
    assert manifest["license"] == ["GPL-3.0-or-later"]
    for name in names(tarball):
        if name.startswith("kmod/clusterdev/") and name.endswith((".c", ".h")):
            assert "SPDX-License-Identifier: GPL-2.0-only" in read(tarball, name), name


def test_users_readme_and_changelog(tarball: tarfile.TarFile) -> None:
    manifest = json.loads(read(tarball, "MANIFEST.json"))["collection_info"]
    assert manifest["readme"] == "meta/README.md"
    readme = read(tarball, "meta/README.md")
    assert "ansible-playbook -i inventory fwcluster.cluster.site" in readme
    present = names(tarball)
    assert "changelogs/config.yaml" in present
    assert any(n.startswith("changelogs/fragments/") and n.endswith(".yml") for n in present)


@pytest.mark.parametrize(
    "playbook", ["drain_node", "join_node", "remove_node", "rolling_upgrade", "rotate_key", "check_inventory"]
)
def test_playbooks_by_collection_name(tarball: tarfile.TarFile, playbook: str) -> None:
    assert f"playbooks/{playbook}.yml" in names(tarball)


def test_no_lab_key_and_no_tests_of_excluded_code(tarball: tarfile.TarFile) -> None:
    present = names(tarball)
    assert not any(n.startswith(("inventories/lab", "tests/unit/testhosts")) for n in present)
    assert "inventories/example/vault.yml.example" in present
    key = lab_key().encode()
    for member in tarball.getmembers():
        if member.isfile() and member.size < 1_000_000:
            data = tarball.extractfile(member)
            assert data is not None
            assert key not in data.read(), f"lab key in {member.name}"
