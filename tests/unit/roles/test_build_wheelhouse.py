"""The role's wheelhouse build on the controller (issue 15.4): dependencies
are fetched as wheels for the nodes' Python and platform, not built with the
controller's Python; with the role's pinned, hashed list; and a wheelhouse
the nodes could not install offline is refused, naming what is missing.
Needs the package index (pip's configured one)."""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

from .test_inventory_validation import REPO, ansible_playbook, failure_text

PLAYBOOK = Path(__file__).with_name("build_playbook.yml")
LOCK = REPO / "roles" / "availability_manager" / "files" / "requirements-py311-x86_64.txt"


def fake_agent(tmp_path: Path, dependencies: list[str]) -> Path:
    src = tmp_path / "agent"
    (src / "availability_manager").mkdir(parents=True)
    (src / "availability_manager" / "__init__.py").write_text("")
    deps = ", ".join(f'"{d}"' for d in dependencies)
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "availability-manager"\nversion = "0.1.0"\ndependencies = [{deps}]\n'
    )
    return src


def build(tmp_path: Path, source: Path, *extra: str) -> tuple[int, str, list[str]]:
    wheelhouse = tmp_path / "wheelhouse"
    proc = ansible_playbook(
        "-i", "localhost,", "-e", f"ansible_python_interpreter={sys.executable}",
        "-e", f"availability_manager_source={source}", "-e", f"availability_manager_wheelhouse={wheelhouse}",
        *extra, str(PLAYBOOK),
    )
    tar = tmp_path / "wheelhouse.tar"
    packed = sorted(tarfile.open(tar).getnames()) if tar.exists() and proc.returncode == 0 else []
    return proc.returncode, proc.stdout + proc.stderr, packed


def test_dependencies_are_wheels_for_the_nodes_python(tmp_path: Path) -> None:
    """The controller runs 3.11; the nodes 3.12: the wheelhouse holds cp312 wheels."""
    rc, output, packed = build(
        tmp_path, fake_agent(tmp_path, ["pyyaml>=6"]),
        "-e", "availability_manager_target_python=3.12", "-e", "availability_manager_requirements=",
    )
    assert rc == 0, output
    assert any(n.startswith("./pyyaml-") and "-cp312-cp312-manylinux" in n for n in packed), packed
    assert not any("cp311" in n for n in packed), packed
    assert any(n.startswith("./availability_manager-0.1.0-py3-none-any") for n in packed), packed


def test_pinned_hashed_dependencies_from_the_roles_list(tmp_path: Path) -> None:
    source = fake_agent(tmp_path, ["pyyaml>=6", "cryptography>=41"])
    rc, output, packed = build(tmp_path, source)
    assert rc == 0, output
    tar = (tmp_path / "wheelhouse.tar").read_bytes()
    # A second build reports no change and packs the same bytes (nothing restarts).
    rc, output, _packed = build(tmp_path, source)
    assert rc == 0 and "changed=0" in output, output
    assert (tmp_path / "wheelhouse.tar").read_bytes() == tar
    pins = [line.split()[0] for line in LOCK.read_text().splitlines() if line and not line.startswith("#")]
    for pin in pins:
        name, version = pin.split("==")
        prefix = f"./{name.replace('-', '_')}-{version}-"
        assert any(n.lower().startswith(prefix) for n in packed), (pin, packed)


def test_a_dependency_missing_from_the_list_is_refused_by_name(tmp_path: Path) -> None:
    rc, output, _packed = build(tmp_path, fake_agent(tmp_path, ["pyyaml>=6", "six"]))
    assert rc != 0, output
    failure = failure_text(output)
    assert "does not install on Python 3.11" in failure and "six" in failure, failure
