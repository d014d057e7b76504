"""clusterctl: the control CLI."""
