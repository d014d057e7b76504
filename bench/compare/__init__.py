"""Side-by-side benchmarks: fwcluster against keepalived + conntrackd.

Both clusters are built from the lab's topology code (lab/fwcluster_lab) with
the same clients, servers, traffic generator and counters; only what runs on
the firewall nodes differs. `baseline_cluster` runs Debian's keepalived and
conntrackd with the configs in bench/baselines/, `fwcluster_cluster` runs the
availability-manager agents through the lab itself. The bench/compare_*.py
scripts drive both through the interface in `cluster.py`.
"""
