"""Test hosts for the Ansible collection: systemd-booted Debian containers
(systemd-nspawn) in network namespaces wired like the lab, plus the lab's
client and server namespaces for traffic. Run as `python -m testhosts`
with the repository root on PYTHONPATH.
"""

import sys
from pathlib import Path

# The lab package (lab/fwcluster_lab) is not installed in the venv; the
# wiring and the traffic generator come from it, so make it importable.
_LAB = str(Path(__file__).resolve().parents[1] / "lab")
if _LAB not in sys.path:
    sys.path.append(_LAB)
