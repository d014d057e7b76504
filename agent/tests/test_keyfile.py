"""The key file: formats that load, mistakes named by line, never the key itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from availability_manager.daemon.keyfile import KeyFileError, load_keys, parse_keys

K1, K2 = "11" * 32, "22" * 32
P = Path("/k")


def test_single_key_is_id_zero() -> None:
    assert parse_keys(K1 + "\n", P) == ({0: bytes.fromhex(K1)}, 0)


def test_rotation_file_with_send_marker() -> None:
    keys, send = parse_keys(f"# rotation\n1 {K1}\n2 {K2} send\n", P)
    assert keys == {1: bytes.fromhex(K1), 2: bytes.fromhex(K2)} and send == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no key found"),
        ("abcd", "line 1: key must be 32 bytes"),
        ("zz" * 32, "line 1: key is not hexadecimal"),
        (f"1 {K1}\n2 {K2}\n", "exactly one key must be marked 'send' (found 0)"),
        (f"1 {K1} send\n1 {K2}\n", "line 2: key id 1 appears twice"),
        (f"300 {K1} send\n", "line 1: key id must be 0..255"),
        (f"1 {K1} sned\n", "line 1: expected '<id> <64 hex digits> [send]'"),
    ],
)
def test_mistakes_are_named(text: str, message: str) -> None:
    with pytest.raises(KeyFileError) as err:
        parse_keys(text, P)
    assert message in str(err.value)
    assert K1 not in str(err.value) and K2 not in str(err.value)


def test_open_permissions_refused(tmp_path: Path) -> None:
    f = tmp_path / "cluster.key"
    f.write_text(K1)
    f.chmod(0o644)
    with pytest.raises(KeyFileError, match="readable by group or others"):
        load_keys(f)
    f.chmod(0o600)
    assert load_keys(f)[1] == 0


# superscript two, Arabic-Indic three, fullwidth one: str.isdigit() says yes to each
@pytest.mark.parametrize("key_id", ["\u00b2", "\u0663", "\uff11"])
def test_non_ascii_digit_key_id_is_named_not_a_traceback(key_id: str) -> None:
    with pytest.raises(KeyFileError, match=r"line 1: key id must be 0\.\.255"):
        parse_keys(f"{key_id} {K1} send\n", P)


def test_symlink_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.key"
    real.write_text(K1)
    real.chmod(0o600)
    link = tmp_path / "cluster.key"
    link.symlink_to(real)
    with pytest.raises(KeyFileError, match="symbolic link"):
        load_keys(link)


def test_not_a_regular_file_refused(tmp_path: Path) -> None:
    d = tmp_path / "dir.key"
    d.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_keys(d)


def test_foreign_owner_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    f = tmp_path / "cluster.key"
    f.write_text(K1)
    f.chmod(0o600)
    os.chown(f, 65534, 65534)  # nobody: not root, not us
    with pytest.raises(KeyFileError, match="owned by uid 65534"):
        load_keys(f)
    os.chown(f, 0, 0)
    assert load_keys(f)[1] == 0


def test_oversized_file_refused(tmp_path: Path) -> None:
    f = tmp_path / "cluster.key"
    f.write_text("#" * 70_000 + "\n" + K1)
    f.chmod(0o600)
    with pytest.raises(KeyFileError, match="larger than"):
        load_keys(f)
