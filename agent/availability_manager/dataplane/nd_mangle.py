"""IPv6 neighbour discovery mangling: the IPv6 twin of the ARP rules.

Neighbour advertisements (and solicitations) this node sends for an IPv6
cluster address must name the zone's multicast MAC, so that neighbours send
every frame to all nodes. The link-layer address sits in an ND option at a
fixed place for the packets Linux sends (option right after the 16-byte
target, i.e. ICMPv6 bytes 24.. = type, length, MAC), and nft can overwrite
it with a raw payload write.

The surprising part: nft 1.0.6 does not update the ICMPv6 checksum for a raw
`@th` write. Instead of fixing the checksum, the rule keeps the ones'
complement sum of the message unchanged: it also writes, into ICMPv6 bytes
6-7, the difference between the MAC the kernel put there (the interface's
own address, known when the rules are rendered) and the cluster MAC. Those
bytes are part of a reserved field (RFC 4861: zero on send, ignored on
receipt) in both neighbour solicitations and advertisements, and Linux sends
them as zero.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from .base import DataPlaneConfig

ND_SOLICIT_OPTION_SOURCE = 1  # source link-layer address option (in solicitations)
ND_ADVERT_OPTION_TARGET = 2  # target link-layer address option (in advertisements)


def _mac_bytes(mac: str) -> bytes:
    raw = bytes.fromhex(mac.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"{mac!r} is not a MAC address")
    return raw


def _ones_sum(data: bytes) -> int:
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def nd_compensation(old_mac: str, new_mac: str) -> int:
    """The 16-bit value that, written into a zero field, keeps the ones'
    complement sum (hence the checksum) of a message valid after its MAC
    bytes changed from old_mac to new_mac."""
    value = _ones_sum(_mac_bytes(old_mac)) + (~_ones_sum(_mac_bytes(new_mac)) & 0xFFFF)
    while value > 0xFFFF:
        value = (value & 0xFFFF) + (value >> 16)
    return value


def render_nd_rules(config: DataPlaneConfig, interface_macs: Mapping[str, str]) -> list[str]:
    """Output-hook rules for every IPv6 cluster address of every zone whose
    interface MAC is known."""
    rules = []
    for zone in config.zones:
        own = interface_macs.get(zone.interface)
        v6 = [ip.ip for ip in zone.cluster_ips if ip.version == 6]
        if own is None or not v6:
            continue
        mac = "0x" + _mac_bytes(zone.cluster_mac).hex()
        comp = f"{nd_compensation(own, zone.cluster_mac):#06x}"
        rewrite = f"@th,208,48 set {mac} @th,48,16 set {comp}"
        for addr in v6:
            assert isinstance(addr, ipaddress.IPv6Address)
            target = "0x" + addr.packed.hex()
            rules.append(
                f'oif "{zone.interface}" icmpv6 type nd-neighbor-advert @th,64,128 {target} '
                f"@th,192,8 {ND_ADVERT_OPTION_TARGET} {rewrite}"
            )
            rules.append(
                f'oif "{zone.interface}" icmpv6 type nd-neighbor-solicit ip6 saddr {addr} '
                f"@th,192,8 {ND_SOLICIT_OPTION_SOURCE} {rewrite}"
            )
    return rules
