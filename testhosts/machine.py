"""Boot and stop one test host: an overlay of the cached root, and
systemd-nspawn booting it inside the node's network namespace.

`--register=no --keep-unit` are needed because this machine's PID 1 is not
systemd (no machined, no scope units). The container's init is a child of the
nspawn process: SIGTERM to nspawn is a clean shutdown of the container, and a
hard power-off is SIGKILL to that init, which takes its whole PID namespace
with it (killing nspawn alone would orphan the container).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from fwcluster_lab.netns import LabError, Proc, kill_pid, process_start_time, stop

from .layout import SSH_KEY, NodeLayout


def is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts)


def mounted_under(directory: Path) -> list[Path]:
    """Every mount point below `directory`, deepest first (for unmounting)."""
    prefix = str(directory).rstrip("/") + "/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    return [Path(p) for p in sorted((p for p in points if p.startswith(prefix)), reverse=True)]


def mount_overlay(node: NodeLayout, lower: Path) -> None:
    for d in (node.upper, node.work, node.merged):
        d.mkdir(parents=True, exist_ok=True)
    if is_mounted(node.merged):
        return
    options = f"lowerdir={lower},upperdir={node.upper},workdir={node.work}"
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", options, str(node.merged)],
        check=True,
        capture_output=True,
        text=True,
    )


def umount(path: Path) -> bool:
    if not is_mounted(path):
        return False
    proc = subprocess.run(["umount", str(path)], capture_output=True, check=False)
    if proc.returncode != 0:  # still busy (a dying container): detach it
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
    return True


def personalize(node: NodeLayout) -> None:
    """Hostname and the controller's key, written into the node's own layer."""
    root = node.merged
    (root / "etc" / "hostname").write_text(node.name + "\n")
    hosts = f"127.0.0.1 localhost\n127.0.1.1 {node.name}\n"
    (root / "etc" / "hosts").write_text(hosts)
    ssh = root / "root" / ".ssh"
    ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    pub = Path(str(SSH_KEY) + ".pub").read_text()
    keys = ssh / "authorized_keys"
    keys.write_text(pub)
    keys.chmod(0o600)


def nspawn_argv(node: NodeLayout) -> list[str]:
    return [
        "systemd-nspawn",
        "--quiet",
        "--directory",
        str(node.merged),
        "--machine",
        node.ns,
        "--register=no",
        "--keep-unit",
        f"--network-namespace-path=/run/netns/{node.ns}",
        # With the namespace path alone nspawn keeps CAP_NET_ADMIN away and
        # /proc/sys/net read-only; --private-network (the namespace is still the
        # one given) makes the node a router that can load nft and set sysctls.
        "--private-network",
        "--link-journal=no",
        "--resolv-conf=off",
        "--timezone=off",
        "--console=read-only",
        "--boot",
    ]


def boot(node: NodeLayout) -> Proc:
    """Start the container in the background; returns the recorded nspawn process."""
    return spawn_root(nspawn_argv(node), node.log, f"nspawn:{node.name}")


def spawn_root(argv: list[str], log: Path, what: str) -> Proc:
    # lab's spawn runs inside a namespace; nspawn itself must run in the root
    # namespace (it joins the node's namespace through --network-namespace-path).
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    for _ in range(200):
        start = process_start_time(popen.pid)
        if start is not None:
            return Proc(popen.pid, start, "", what)
        if popen.poll() is not None:
            break
        time.sleep(0.01)
    raise LabError(f"{what} exited at once ({popen.poll()}); see {log}")


def container_init(proc: Proc) -> int | None:
    """Host pid of the container's init (nspawn's child), None when there is none."""
    if not proc.alive():
        return None
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{proc.pid}/task"):
            text = Path(f"/proc/{proc.pid}/task/{task}/children").read_text()
            children += [int(p) for p in text.split()]
    return children[0] if children else None


def power_off(proc: Proc) -> None:
    """Pull the plug: SIGKILL the container's init, then reap nspawn."""
    init = container_init(proc)
    if init is not None:
        kill_pid(init, timeout=5.0)
    stop(proc, signal.SIGKILL, timeout=5.0)


def shutdown(proc: Proc, timeout: float = 20.0) -> None:
    """Clean shutdown (nspawn turns SIGTERM into a poweroff of the container);
    after `timeout`, power off."""
    if not proc.alive():
        return
    if not stop(proc, signal.SIGTERM, timeout=timeout):
        power_off(proc)
    if proc.alive():
        power_off(proc)


def wait_for_ssh(address: str, timeout: float = 90.0) -> None:
    """Until sshd answers with its banner and a login with our key works."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, 22), timeout=2.0) as s:
                s.settimeout(2.0)
                banner = s.recv(64)
            if banner.startswith(b"SSH-"):
                proc = subprocess.run(
                    ssh_argv(address, "systemctl is-system-running --wait"),
                    capture_output=True,
                    text=True,
                    timeout=max(1.0, deadline - time.monotonic()),
                    check=False,
                )
                state = proc.stdout.strip()
                if state in ("running", "degraded"):
                    return
                last = f"systemd state {state!r} {proc.stderr.strip()[:200]}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            last = str(exc)
        time.sleep(0.5)
    raise LabError(f"{address}: no SSH login within {timeout:.0f}s ({last})")


def ssh_argv(address: str, command: str) -> list[str]:
    return [
        "ssh",
        "-i",
        str(SSH_KEY),
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=5",
        f"root@{address}",
        command,
    ]


def ensure_ssh_key() -> None:
    if SSH_KEY.exists():
        return
    SSH_KEY.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "testhosts", "-f", str(SSH_KEY)],
        check=True,
    )
