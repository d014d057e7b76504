"""nft_batch.Batch framing, without a kernel (the kernel's view of the same
batches: test_nft_ruleset.py's lab tests, which apply them and read back)."""

from __future__ import annotations

from availability_manager.dataplane import netlink_attrs as nl
from availability_manager.dataplane.nft_batch import (
    NFNL_MSG_BATCH_BEGIN,
    NFNL_MSG_BATCH_END,
    NFNL_SUBSYS_NFTABLES,
    NFT_MSG_DELRULE,
    NFT_MSG_DELSETELEM,
    NFT_MSG_NEWRULE,
    NFT_MSG_NEWSETELEM,
    NFTA_RULE_CHAIN,
    NLM_F_APPEND,
    Batch,
    counter_accept,
    u32_key,
)

NFT = NFNL_SUBSYS_NFTABLES << 8


def framed(batch: Batch) -> list[tuple[int, int, int, dict[int, bytes]]]:
    data = bytes(batch)
    out = []
    for mtype, flags, seq, off, end in nl.messages(data):
        found = nl.attrs(data, off + 4, end)  # after the nfgenmsg
        out.append((mtype, flags, seq, {k: data[o : o + n] for k, (o, n) in found.items()}))
    return out


def test_a_batch_is_framed_numbered_and_acked_message_by_message() -> None:
    batch = Batch("fwcluster", 40)
    batch.replace_set("owned", [u32_key(1), u32_key(2)])
    batch.flush_chain("handover")
    batch.add_rule("handover", counter_accept())
    msgs = framed(batch)
    assert [m[0] for m in msgs] == [
        NFNL_MSG_BATCH_BEGIN,
        NFT | NFT_MSG_DELSETELEM,
        NFT | NFT_MSG_NEWSETELEM,
        NFT | NFT_MSG_DELRULE,
        NFT | NFT_MSG_NEWRULE,
        NFNL_MSG_BATCH_END,
    ]
    assert [m[2] for m in msgs] == list(range(40, 46))
    assert batch.acked == 4 and batch.next_seq == 46
    inner = msgs[1:-1]
    assert all(flags & nl.NLM_F_ACK for _t, flags, _s, _a in inner)
    assert not msgs[0][1] & nl.NLM_F_ACK and not msgs[-1][1] & nl.NLM_F_ACK
    # the chain flush names the chain and no rule handle (3): every rule goes
    _t, _f, _s, flush = inner[2]
    assert flush[NFTA_RULE_CHAIN] == b"handover\0" and 3 not in flush
    assert inner[3][1] & NLM_F_APPEND  # appended, as `nft add rule`


def test_an_empty_element_list_sends_no_message() -> None:
    batch = Batch("fwcluster", 1)
    batch.replace_set("owned", [])  # a flush only: NEWSETELEM needs elements
    assert [m[0] for m in framed(batch)][1:-1] == [NFT | NFT_MSG_DELSETELEM]


def test_without_ack_the_kernel_answers_errors_only() -> None:
    batch = Batch("fwcluster", 1, ack=False)
    batch.flush_set("alive")
    batch.add_elements("alive", [b"\x02"], timeout_ms=125)
    assert batch.acked == 0
    assert not any(flags & nl.NLM_F_ACK for _t, flags, _s, _a in framed(batch))
