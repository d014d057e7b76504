"""Sysctl keys to /proc/sys paths, and changes restored, on a fake /proc/sys."""

from __future__ import annotations

from pathlib import Path

import pytest

from availability_manager.dataplane.sysctl import (
    SysctlChanges,
    SysctlError,
    interface_key,
    read_sysctl,
)


def test_a_dotted_interface_name_stays_one_path_part(tmp_path: Path) -> None:
    conf = tmp_path / "net/ipv4/conf/eth0.100"
    conf.mkdir(parents=True)
    (conf / "ignore_routes_with_linkdown").write_text("0\n")
    key = interface_key("ipv4", "eth0.100", "ignore_routes_with_linkdown")
    changes = SysctlChanges(tmp_path)
    changes.set(key, "1")
    assert read_sysctl(key, tmp_path) == "1"
    changes.restore()
    assert read_sysctl(key, tmp_path) == "0"


@pytest.mark.parametrize("key", ["", "net..ipv4", "net/../etc", "net/ipv4/", "/net/ipv4"])
def test_bad_keys_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(SysctlError, match="bad sysctl key"):
        read_sysctl(key, tmp_path)
