"""Running a benchmark script inside a virtme-ng guest (TCG) with the
clusterdev module loaded: the host here cannot load kernel modules. The
guest shares the host's filesystem read-only; the script runs with
--in-guest and prints one `RESULT <json>` line."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from .env import ROOT

KMOD = ROOT / "kmod"
VNG = KMOD / ".venv" / "bin" / "vng"
KERNELS = ("6.12.95+deb12-amd64", "6.1.0-50-amd64")  # preferred first
GUEST_TIMEOUT = 1800  # seconds for a whole guest run


def target() -> tuple[str, Path] | str:
    """(kernel, module) to boot, or why a guest run cannot happen here."""
    if not VNG.exists():
        return f"{VNG} missing (kmod/tools/install-build-deps.sh installs virtme-ng)"
    for kver in KERNELS:
        ko = KMOD / "build" / kver / "clusterdev.ko"
        if Path(f"/boot/vmlinuz-{kver}").exists() and ko.exists():
            return kver, ko
    return f"no kernel with a built module among {KERNELS} (kmod/tools/build.sh)"


# QEMU's instruction counting: the guest's clock advances by the instructions
# it executes (2**3 ns each), not by host time, so CPU time measured inside
# is an instruction count that the host's other load cannot inflate (under
# plain TCG a vCPU thread descheduled by the host still accrues guest time).
ICOUNT = "-icount shift=3,sleep=off"


def run(kver: str, ko: Path, script: Path, args: list[str], icount: bool = False
        ) -> dict[str, Any]:  # fmt: skip
    """Boot `kver`, load `ko`, run `script --in-guest *args` with the project's
    Python; its RESULT line, parsed. `icount`: with ICOUNT (CPU figures as
    instruction counts; the guest runs single-threaded and slower)."""
    # The module needs conntrack loaded first (insmod resolves no dependencies).
    inner = (
        f"modprobe nf_conntrack && insmod {ko} && {ROOT / '.venv' / 'bin' / 'python'} "
        f"{script.resolve()} --in-guest {' '.join(args)}"
    )
    argv = [str(VNG), "--run", f"/boot/vmlinuz-{kver}", "--disable-kvm", "--memory", "1G",
            "--cpus", "2", *([f"--qemu-opts={ICOUNT}"] if icount else []), "--", inner]  # fmt: skip
    # vng runs its helpers (virtme-ng-init, ...) from its own venv's bin.
    path = {**os.environ, "PATH": f"{VNG.parent}:{os.environ.get('PATH', '')}"}
    out = subprocess.run(argv, capture_output=True, text=True, timeout=GUEST_TIMEOUT,
                         stdin=subprocess.DEVNULL, env=path, check=False)  # fmt: skip
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    raise RuntimeError(
        f"guest gave no result (exit {out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}"
    )
