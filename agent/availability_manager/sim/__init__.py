"""Deterministic cluster simulator: N `Node`s on a virtual clock with a
simulated network, kernels and workload, checked against the cluster's
invariants after every step. Entry points: `python -m availability_manager.sim`
(seed batches and replays) and `python -m availability_manager.sim.demo`.
"""
