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
them on every handover. So are rule changes in the chains the caller names
(`quiet_chains`: the handover chain, whose timed switches the agent writes
and clears at every handover and which the check leaves out anyway), and
anonymous sets (a rule's `{ ... }`, created and deleted with its rule, whose
own notification is judged by its chain): each
such change cost a check of two `nft` processes, per node and per
membership change, which at 16 lab nodes was a good part of the churn that
kept the cluster from settling (issue 19). A deleted or flushed table or
chain is still reported. Everything else naming the table is reported, the
agent's own re-install included (the check after it finds nothing).

Message layout: nlmsghdr, type = NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_*; then
nfgenmsg (family u8, version u8, res_id be16); then attributes, where
attribute 1 is the table's name for tables, chains, rules, sets and objects.
"""

from __future__ import annotations

import errno
import socket

from . import netlink_attrs as nl
from .nft_batch import (
    NETLINK_NETFILTER,
    NFNL_SUBSYS_NFTABLES,
    NFT_MSG_DELRULE,
    NFT_MSG_DELSETELEM,
    NFT_MSG_NEWRULE,
    NFT_MSG_NEWSETELEM,
    NFTA_RULE_CHAIN,
)

NFNLGRP_NFTABLES = 7
NFT_MSG_DESTROYRULE, NFT_MSG_NEWGEN = 28, 15
NFT_MSG_DESTROYSETELEM = 30
NFT_MSG_NEWSET, NFT_MSG_DELSET, NFT_MSG_DESTROYSET = 9, 11, 29
_RULE_MESSAGES = {NFT_MSG_NEWRULE, NFT_MSG_DELRULE, NFT_MSG_DESTROYRULE}
_SET_MESSAGES = {NFT_MSG_NEWSET, NFT_MSG_DELSET, NFT_MSG_DESTROYSET}
# Not about a table's objects: set elements (changed by the agent itself on
# every handover) and the generation message that closes every transaction.
_IGNORED = {NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM, NFT_MSG_DESTROYSETELEM, NFT_MSG_NEWGEN}
NFTA_TABLE_NAME = 1  # also NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE, NFTA_OBJ_TABLE
NFTA_SET_NAME, NFTA_SET_FLAGS = 2, 3
NFT_SET_ANONYMOUS = 0x1
NFGENMSG_SIZE = 4


def _string(data: bytes, found: tuple[int, int] | None) -> bytes | None:
    return None if found is None else data[found[0] : found[0] + found[1]].rstrip(b"\0")


def _anonymous(data: bytes, found: dict[int, tuple[int, int]]) -> bool:
    """A set message about an anonymous set: flagged so when created; its
    deletion carries only the name, which nft gives as `__set<n>`."""
    flags = found.get(NFTA_SET_FLAGS)
    if flags is not None and flags[1] == 4:
        return bool(int.from_bytes(data[flags[0] : flags[0] + 4], "big") & NFT_SET_ANONYMOUS)
    name = _string(data, found.get(NFTA_SET_NAME))
    return name is not None and name.startswith(b"__set")


def names_table(data: bytes, table: str, quiet_chains: frozenset[str] = frozenset()) -> bool:
    """True if a batch of notifications holds a change (other than set
    elements, and rules of `quiet_chains`) to a table called `table`, of any
    family."""
    want = table.encode()
    quiet = {c.encode() for c in quiet_chains}
    for mtype, _flags, _seq, off, end in nl.messages(data):
        if mtype >> 8 != NFNL_SUBSYS_NFTABLES or mtype & 0xFF in _IGNORED:
            continue
        if end - off < NFGENMSG_SIZE:
            raise nl.Malformed("truncated-nfgenmsg")
        found = nl.attrs(data, off + NFGENMSG_SIZE, end)
        if _string(data, found.get(NFTA_TABLE_NAME)) != want:
            continue
        kind = mtype & 0xFF
        if kind in _RULE_MESSAGES and _string(data, found.get(NFTA_RULE_CHAIN)) in quiet:
            continue
        if kind in _SET_MESSAGES and _anonymous(data, found):
            continue  # a rule's own `{ ... }`: created and deleted with the rule
        return True
    return False


class RulesetMonitor:
    """A non-blocking socket on the nftables notification group of this
    network namespace."""

    def __init__(self, table: str, quiet_chains: frozenset[str] = frozenset()) -> None:
        self.table = table
        self.quiet_chains = quiet_chains
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
                hit = names_table(data, self.table, self.quiet_chains) or hit
            except nl.Malformed:
                self.malformed += 1
                hit = True

    def close(self) -> None:
        self._sock.close()
