"""Data-plane backends (what the kernel does with packets) and conntrack access."""
