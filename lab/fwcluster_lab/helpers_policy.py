"""The user's helper policy of the helper tests: one nftables table per node,
beside the agent's own, as an operator (or the Ansible dataplane role's
`dataplane_helpers`) would load it. The agent never touches it.

nftables assigns no helper by itself (the kernel's automatic assignment is
gone): a `ct helper` object and a `ct helper set` rule do it, on the first
packet of the control connection (FTP: TCP 21, TFTP: UDP 69), in the
forward hook, before the entry is confirmed.

The forward chain also admits data connections *only* as RELATED. That is
what keeps them on one node: on the owner of the control connection the
data connection matches the helper's expectation, is RELATED and carries
its master's mark (so its bucket is the master's, owned here); on every
other node there is no expectation, the first packet is NEW and hashed on
its own tuple, and must not be accepted even where that bucket is owned.
"""

from __future__ import annotations

from .netns import nft
from .topology import Host

TABLE = "fwlab_helpers"
# (nft object name, kernel helper, protocol, port of the control connection)
HELPERS = (
    ("ftp-standard", "ftp", "tcp", 21),
    ("tftp-standard", "tftp", "udp", 69),
)


def ruleset() -> str:
    out = [f"table inet {TABLE} {{}}", f"delete table inet {TABLE}", f"table inet {TABLE} {{"]
    for name, kernel_name, proto, _port in HELPERS:
        out.append(f'  ct helper {name} {{ type "{kernel_name}" protocol {proto}; }}')
    out.append("  chain forward {")
    out.append("    type filter hook forward priority filter; policy drop;")
    out.append("    ct state established,related accept")
    for name, _kernel_name, proto, port in HELPERS:
        out.append(f'    ct state new {proto} dport {port} ct helper set "{name}" accept')
    out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"


def install(node: Host) -> None:
    nft(node.ns, ruleset())


def uninstall(node: Host) -> None:
    nft(node.ns, f"table inet {TABLE} {{}}\ndelete table inet {TABLE}\n")
