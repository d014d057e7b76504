"""fwbench: the one benchmark core under bench/, shared by every benchmark.

`env` paths and machine facts (commit, load, CPU), `measure` the /proc and
namespace readers, `report` sections, tables, plots and per-run stamps,
`gen` the C new-connection generator, `labrun` a private lab for one
measurement, `traced_traffic`/`traced_client` the lab's traffic client with
per-flow gap times, `stalls` and `profile` what the daemon benchmarks add.
The comparisons with keepalived + conntrackd (bench/compare_*.py) drive both
clusters through `cluster` (`baseline_cluster`, `fwcluster_cluster`), with
their workloads in `failover`, `sync`, `syncloss`, `active` and the run loop
in `runloop`.
"""
