"""The cluster key file: one or more pre-shared 256-bit keys.

Format (text, root-only): either a single line of 64 hex digits (key id 0,
used for sending), or one key per line as `<id> <64 hex digits> [send]`,
where exactly one line carries `send` when there are several. Rotation:
add the new key on every node (reload), then move `send` to it on every node
(reload), then remove the old key (reload). Comments start with `#`.

Key material is never logged; errors name the line, not its content.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


class KeyFileError(Exception):
    pass


def parse_keys(text: str, path: Path) -> tuple[dict[int, bytes], int]:
    """Return ({key id: key}, send key id)."""
    keys: dict[int, bytes] = {}
    send: list[int] = []
    lines = [
        (n, line.split("#", 1)[0].strip())
        for n, line in enumerate(text.splitlines(), 1)
        if line.split("#", 1)[0].strip()
    ]
    if not lines:
        raise KeyFileError(f"{path}: no key found")
    if len(lines) == 1 and len(lines[0][1].split()) == 1:
        n, hexkey = lines[0]
        return {0: _decode(hexkey, path, n)}, 0
    for n, line in lines:
        parts = line.split()
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "send"):
            raise KeyFileError(f"{path}: line {n}: expected '<id> <64 hex digits> [send]'")
        # ASCII only: str.isdigit() also admits digits int() cannot read ("²")
        if not (parts[0].isascii() and parts[0].isdigit()) or not 0 <= int(parts[0]) <= 255:
            raise KeyFileError(f"{path}: line {n}: key id must be 0..255")
        key_id = int(parts[0])
        if key_id in keys:
            raise KeyFileError(f"{path}: line {n}: key id {key_id} appears twice")
        keys[key_id] = _decode(parts[1], path, n)
        if len(parts) == 3:
            send.append(key_id)
    if len(keys) == 1 and not send:
        send = list(keys)
    if len(send) != 1:
        raise KeyFileError(f"{path}: exactly one key must be marked 'send' (found {len(send)})")
    return keys, send[0]


def _decode(hexkey: str, path: Path, line: int) -> bytes:
    try:
        key = bytes.fromhex(hexkey)
    except ValueError:
        raise KeyFileError(f"{path}: line {line}: key is not hexadecimal") from None
    if len(key) != 32:
        raise KeyFileError(f"{path}: line {line}: key must be 32 bytes (64 hex digits)")
    return key


MAX_KEY_FILE = 64 * 1024


def load_keys(path: Path) -> tuple[dict[int, bytes], int]:
    """Checks the file that is read, not the name: opened once without
    following a symlink, then owner and mode taken from the open descriptor,
    so no swap between the check and the read goes unnoticed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise KeyFileError(f"{path}: is a symbolic link; name the key file itself") from None
        raise KeyFileError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{path}: not a regular file")
        if st.st_uid not in (0, os.geteuid()):
            raise KeyFileError(
                f"{path}: owned by uid {st.st_uid}, not by root or this user; chown it"
            )
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(f"{path}: readable by group or others; chmod 600 it")
        data = os.read(fd, MAX_KEY_FILE + 1)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE:
        raise KeyFileError(f"{path}: larger than {MAX_KEY_FILE} bytes; not a key file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not UTF-8 text") from None
    return parse_keys(text, path)
