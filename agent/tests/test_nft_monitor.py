import struct

import pytest

from availability_manager.dataplane import netlink_attrs as nl
from availability_manager.dataplane.nft_monitor import (
    NFNL_SUBSYS_NFTABLES,
    NFT_MSG_DELSETELEM,
    NFT_MSG_NEWGEN,
    NFT_MSG_NEWSETELEM,
    names_table,
)

NFT_MSG_DELTABLE, NFT_MSG_DELCHAIN, NFT_MSG_NEWRULE, NFT_MSG_DELRULE = 2, 5, 6, 8
NFPROTO_INET, NFPROTO_ARP = 1, 3


def notification(
    msg: int,
    family: int,
    table: str,
    subsys: int = NFNL_SUBSYS_NFTABLES,
    chain: str = "prerouting",
) -> bytes:
    # attribute 1 is the table; 2 is a rule's chain (a chain's own name is 3)
    payload = struct.pack("BBH", family, 0, 0) + nl.attr(1, table.encode() + b"\0")
    payload += nl.attr(
        2 if msg in (NFT_MSG_NEWRULE, NFT_MSG_DELRULE) else 3, chain.encode() + b"\0"
    )
    return nl.message(subsys << 8 | msg, 0, 0, payload)


@pytest.mark.parametrize("msg", [NFT_MSG_DELTABLE, NFT_MSG_DELCHAIN, NFT_MSG_NEWRULE])
@pytest.mark.parametrize("family", [NFPROTO_INET, NFPROTO_ARP])
def test_a_change_to_the_table_is_reported(msg: int, family: int) -> None:
    other = notification(NFT_MSG_DELTABLE, NFPROTO_INET, "filter")
    assert names_table(other + notification(msg, family, "fwcluster"), "fwcluster")


@pytest.mark.parametrize("msg", [NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM, NFT_MSG_NEWGEN])
def test_set_elements_and_generations_are_not(msg: int) -> None:
    assert not names_table(notification(msg, NFPROTO_INET, "fwcluster"), "fwcluster")


def test_other_tables_and_subsystems_are_not() -> None:
    assert not names_table(notification(NFT_MSG_DELTABLE, NFPROTO_INET, "fwcluster2"), "fwcluster")
    assert not names_table(notification(NFT_MSG_DELTABLE, NFPROTO_INET, "fwclust"), "fwcluster")
    ctnetlink = notification(NFT_MSG_DELTABLE, NFPROTO_INET, "fwcluster", subsys=1)
    assert not names_table(ctnetlink, "fwcluster")


def test_a_truncated_notification_is_malformed() -> None:
    short = nl.message(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_DELTABLE, 0, 0, b"\x01\x00")
    with pytest.raises(nl.Malformed):
        names_table(short, "fwcluster")


@pytest.mark.parametrize("msg", [NFT_MSG_NEWRULE, NFT_MSG_DELRULE])
def test_rules_of_a_quiet_chain_are_not(msg: int) -> None:
    quiet = frozenset({"handover"})
    assert not names_table(
        notification(msg, NFPROTO_INET, "fwcluster", chain="handover"), "fwcluster", quiet
    )
    # the same change elsewhere, or to the quiet chain itself, still counts
    assert names_table(
        notification(msg, NFPROTO_INET, "fwcluster", chain="cluster"), "fwcluster", quiet
    )
    assert names_table(notification(msg, NFPROTO_INET, "fwcluster", chain="handover"), "fwcluster")
    assert names_table(
        notification(NFT_MSG_DELCHAIN, NFPROTO_INET, "fwcluster", chain="handover"),
        "fwcluster",
        quiet,
    )


def test_anonymous_sets_are_not() -> None:
    NFT_MSG_NEWSET, NFT_MSG_DELSET = 9, 11

    def set_message(msg: int, name: str, flags: int | None) -> bytes:
        payload = struct.pack("BBH", NFPROTO_INET, 0, 0) + nl.attr(1, b"fwcluster\0")
        payload += nl.attr(2, name.encode() + b"\0")
        if flags is not None:
            payload += nl.attr(3, struct.pack("!I", flags))
        return nl.message(NFNL_SUBSYS_NFTABLES << 8 | msg, 0, 0, payload)

    # a rule's `{ ... }`: created flagged anonymous|constant, deleted by name only
    assert not names_table(set_message(NFT_MSG_NEWSET, "__set7", 0x3), "fwcluster")
    assert not names_table(set_message(NFT_MSG_DELSET, "__set7", None), "fwcluster")
    # a named set, created or deleted, is a change
    assert names_table(set_message(NFT_MSG_NEWSET, "owned", 0x0), "fwcluster")
    assert names_table(set_message(NFT_MSG_DELSET, "owned", None), "fwcluster")
