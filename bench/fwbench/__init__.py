"""fwbench: what the four fwcluster daemon benchmarks share (failover,
sync_throughput, dataplane_cost, false_takeover_soak).

`env` reads machine facts,
`labrun` brings a private lab up and always down again, `traced_traffic`
is the lab's traffic client with per-flow gap times, `newconn` runs the
C new-connection generator, `report` writes a section and its plot.
"""
