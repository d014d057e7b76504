"""A socket filter that keeps conntrack events of unclassified connections
out of the agent: the kernel drops them before they are queued.

The agent syncs only connections whose conntrack mark carries a bucket
(`mark & mark_mask != 0`, daemon/runtime.cluster_relevance); the node's own
traffic (sync datagrams, SSH, DNS of the host) is unmarked. Without a filter
each of those costs a wakeup, a recv and a decode before Python throws it
away. conntrackd does the same with libnetfilter_conntrack's filter API.

The program (classic BPF, attached with SO_ATTACH_FILTER; netlink runs
socket filters on multicast delivery):

    ldb  [subsystem byte of nlmsg_type]   ; not ctnetlink (expectations, errors): keep
    jne  #NFNL_SUBSYS_CTNETLINK, keep
    ld   #20                              ; first attribute: nlmsghdr (16) + nfgenmsg (4)
    ldx  #CTA_MARK
    ld   [SKF_AD_NLATTR]                  ; A = offset of the top-level CTA_MARK, 0: none
    jeq  #0, drop                         ; no mark attribute: the mark is 0
    tax
    ld   [x + 4]                          ; the mark (network order, as BPF loads)
    jset #mark_mask, keep, drop

What a kernel filter cannot say is covered by the agent as before: the
protocol check stays in Python (`cluster_relevance`), and an entry whose mark
is *cleared* after it was synced sends an UPDATE the filter drops; the data
plane never clears a bucket mark, and a re-dump (after lost events) or the
DESTROY ends such an entry anyway. nfnetlink's CTA_FILTER and CTA_MARK_MASK
filter only dumps (ctnetlink_dump_table), not events, so on this kernel (6.18)
the socket filter is the only in-kernel event filter; per-conntrack event
masks (nft `ct event set`) are a data-plane choice that would also hide
the state changes the sync needs.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys

SO_ATTACH_FILTER = 26
NFNL_SUBSYS_CTNETLINK = 1
CTA_MARK = 8
_FIRST_ATTR = 16 + 4  # nlmsghdr + nfgenmsg
_SKF_AD_NLATTR = (-0x1000 + 12) & 0xFFFFFFFF  # SKF_AD_OFF + SKF_AD_NLATTR
# nlmsg_type (u16, host order) at offset 4: the subsystem is its high byte
_SUBSYS_BYTE = 5 if sys.byteorder == "little" else 4
_KEEP_ALL = 0xFFFFFFFF

# classic BPF opcodes (linux/filter.h)
_LD_B_ABS, _LD_IMM, _LDX_IMM, _LD_W_ABS, _LD_W_IND = 0x30, 0x00, 0x01, 0x20, 0x40
_JEQ_K, _JSET_K, _TAX, _RET_K = 0x15, 0x45, 0x07, 0x06
_INSN = struct.Struct("=HBBI")


def mark_filter(mark_mask: int) -> list[tuple[int, int, int, int]]:
    """The program as (code, jt, jf, k) instructions (see the module docstring)."""
    if not 0 < mark_mask <= 0xFFFFFFFF:
        raise ValueError(f"mark mask must be a non-zero 32-bit value, got {mark_mask:#x}")
    return [
        (_LD_B_ABS, 0, 0, _SUBSYS_BYTE),  # 0
        (_JEQ_K, 0, 7, NFNL_SUBSYS_CTNETLINK),  # 1: other subsystem -> 9 keep
        (_LD_IMM, 0, 0, _FIRST_ATTR),  # 2
        (_LDX_IMM, 0, 0, CTA_MARK),  # 3
        (_LD_W_ABS, 0, 0, _SKF_AD_NLATTR),  # 4
        (_JEQ_K, 4, 0, 0),  # 5: no CTA_MARK -> 10 drop
        (_TAX, 0, 0, 0),  # 6
        (_LD_W_IND, 0, 0, 4),  # 7
        (_JSET_K, 0, 1, mark_mask),  # 8: bucket bits set -> 9 keep, else 10 drop
        (_RET_K, 0, 0, _KEEP_ALL),  # 9
        (_RET_K, 0, 0, 0),  # 10
    ]


def attach_mark_filter(sock: socket.socket, mark_mask: int) -> None:
    """Deliver to `sock` only conntrack events of entries with bucket bits
    in their mark (and every non-conntrack message). Raises OSError if the
    kernel refuses the program."""
    insns = mark_filter(mark_mask)
    program = ctypes.create_string_buffer(b"".join(_INSN.pack(*i) for i in insns))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    fprog = struct.pack("HP", len(insns), ctypes.addressof(program))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
