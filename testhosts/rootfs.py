"""The test hosts' root file system: a Debian root built once with mmdebstrap
and cached under .cache/testhosts/, keyed by a hash of the package list, so a
changed list builds a new root and an unchanged one is never rebuilt.

The root is built into a temporary directory and renamed into place only when
mmdebstrap succeeded, so a crash never leaves a half-built root that looks done.
Nodes never modify it: each boots from an overlay with the root as lower layer.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

SUITE = "bookworm"
VARIANT = "minbase"
# What a firewall node needs to run the agent and be managed by Ansible over
# SSH, offline: python3-apt lets ansible.builtin.package/apt check installed
# packages without a network; python3-venv holds the agent's virtualenv.
PACKAGES = (
    "conntrack",
    "dbus",
    "iproute2",
    "iputils-ping",
    "nftables",
    "openssh-server",
    "procps",
    "python3",
    "python3-apt",
    "python3-venv",
    "sudo",
    "systemd",
    "systemd-sysv",
)
BUILD_TIMEOUT_S = 1200.0


class RootfsError(Exception):
    """Building or finding the root failed; the message says what to do."""


def cache_key(packages: tuple[str, ...] = PACKAGES) -> str:
    text = "\n".join([SUITE, VARIANT, *sorted(packages)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def rootfs_dir(cache: Path, packages: tuple[str, ...] = PACKAGES) -> Path:
    return cache / f"rootfs-{cache_key(packages)}"


def is_built(root: Path) -> bool:
    # The marker is written inside the root only after mmdebstrap succeeded.
    return (root / ".testhosts-complete").is_file()


def ensure_rootfs(cache: Path, packages: tuple[str, ...] = PACKAGES) -> Path:
    """The cached root for `packages`, built first if it is missing."""
    root = rootfs_dir(cache, packages)
    if is_built(root):
        return root
    if shutil.which("mmdebstrap") is None:
        raise RootfsError("mmdebstrap not found: apt-get install mmdebstrap")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(root.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    argv = [
        "mmdebstrap",
        f"--variant={VARIANT}",
        "--include=" + ",".join(sorted(packages)),
        SUITE,
        str(tmp),
    ]
    print(f"testhosts: building the root ({' '.join(argv)}), a few minutes", file=sys.stderr)
    started = time.monotonic()
    log = cache / f"mmdebstrap-{cache_key(packages)}.log"
    with open(log, "w") as out:
        try:
            proc = subprocess.run(
                argv, stdout=out, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RootfsError(f"mmdebstrap took over {BUILD_TIMEOUT_S:.0f}s; see {log}") from None
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RootfsError(f"mmdebstrap failed ({proc.returncode}); see {log}")
    (tmp / ".testhosts-complete").write_text(" ".join(sorted(packages)) + "\n")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    print(f"testhosts: root built in {time.monotonic() - started:.0f}s: {root}", file=sys.stderr)
    return root
