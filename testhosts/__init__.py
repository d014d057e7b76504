"""Test hosts for the Ansible collection: systemd-booted Debian containers
(systemd-nspawn) in network namespaces wired like the lab, plus the lab's
client and server namespaces for traffic. Run as `.venv/bin/python -m
testhosts` (tools/bootstrap.sh installs the package into the venv).
"""
