"""Notice at once when someone changes the agent's nftables tables.

`nft flush ruleset` (Debian's /etc/nftables.conf starts with it, so does
`systemctl restart nftables`) deletes the agent's tables: the node then
forwards nothing of its buckets. nf_tables announces every committed change
to the NFNLGRP_NFTABLES netlink group, as `nft monitor` shows; this socket
listens there and says when a change names one of the agent's tables, so the
runtime compares the tables with what it installed (DataPlane.check) and
restores them. Waiting costs nothing; a periodic check would run `nft` again
and again whether or not anything happened.

Set element changes are left out: the agent's own `set_owned_buckets` makes
them on every handover. Everything else naming the table is reported, the
agent's own re-install included (the check after it finds nothing).

Message layout: nlmsghdr, type = NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_*; then
nfgenmsg (family u8, version u8, res_id be16); then attributes, where
attribute 1 is the table's name for tables, chains, rules, sets and objects.
"""

from __future__ import annotations

import errno
import socket

from . import netlink_attrs as nl

NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM, NFT_MSG_NEWGEN = 12, 14, 15
NFT_MSG_DESTROYSETELEM = 30
# Not about a table's objects: set elements (changed by the agent itself on
# every handover) and the generation message that closes every transaction.
_IGNORED = {NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM, NFT_MSG_DESTROYSETELEM, NFT_MSG_NEWGEN}
NFTA_TABLE_NAME = 1  # also NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE, NFTA_OBJ_TABLE
NFGENMSG_SIZE = 4


def names_table(data: bytes, table: str) -> bool:
    """True if a batch of notifications holds a change (other than set
    elements) to a table called `table`, of any family."""
    want = table.encode()
    for mtype, _flags, _seq, off, end in nl.messages(data):
        if mtype >> 8 != NFNL_SUBSYS_NFTABLES or mtype & 0xFF in _IGNORED:
            continue
        if end - off < NFGENMSG_SIZE:
            raise nl.Malformed("truncated-nfgenmsg")
        found = nl.attrs(data, off + NFGENMSG_SIZE, end).get(NFTA_TABLE_NAME)
        if found is not None and data[found[0] : found[0] + found[1]].rstrip(b"\0") == want:
            return True
    return False


class RulesetMonitor:
    """A non-blocking socket on the nftables notification group of this
    network namespace."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.lost = 0  # overruns: notifications lost, reported as a change
        self.malformed = 0
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._sock.bind((0, 1 << (NFNLGRP_NFTABLES - 1)))
        self._sock.setblocking(False)

    def fileno(self) -> int:
        return self._sock.fileno()

    def changed(self) -> bool:
        """Read every pending notification; True if one named the table (or
        some were lost, so that one may have)."""
        hit = False
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                return hit
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                self.lost += 1
                hit = True
                continue
            try:
                hit = names_table(data, self.table) or hit
            except nl.Malformed:
                self.malformed += 1
                hit = True

    def close(self) -> None:
        self._sock.close()
