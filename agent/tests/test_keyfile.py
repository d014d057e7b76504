"""The key file: formats that load, mistakes named by line, never the key itself."""

from __future__ import annotations

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
