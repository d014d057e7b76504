"""fwbench: what the four fwcluster daemon benchmarks share (failover,
sync_throughput, dataplane_cost, false_takeover_soak).

`env` makes the lab and agent packages importable and reads machine facts,
`labrun` brings a private lab up and always down again, `traced_traffic`
is the lab's traffic client with per-flow gap times, `newconn` runs the
C new-connection generator, `report` writes a section and its plot.
"""

import sys
from pathlib import Path

# lab/ and agent/ importable without installing them: every submodule and
# benchmark imports this package first, so fwcluster_lab imports resolve.
_ROOT = Path(__file__).resolve().parents[2]
for _p in (_ROOT / "lab", _ROOT / "agent"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
