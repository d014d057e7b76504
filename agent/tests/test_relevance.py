"""relevance.py: the one place that decides which conntrack entries are synced."""

from __future__ import annotations

import dataclasses

from test_config import GOOD, parse, with_change

from availability_manager.connection import (
    PROTO_TCP,
    PROTO_UDP,
    TCP_ESTABLISHED,
    TCP_SYN_SENT,
    Connection,
    make_tuple,
)
from availability_manager.crypto import Keyring
from availability_manager.daemon.runtime import node_config
from availability_manager.relevance import SYNCED_PROTOCOLS, SyncFilter, synced_connections

PROTO_GRE = 47


def conn(proto: int, mark: int = 0) -> Connection:
    orig = make_tuple("198.51.100.1", "203.0.113.10", 40000, 443)
    state = TCP_ESTABLISHED if proto == PROTO_TCP else 0
    return Connection(proto, orig, orig.inverse(), state=state, mark=mark)


def test_without_a_mark_mask_the_protocol_alone_decides() -> None:
    synced = synced_connections()
    assert synced(conn(PROTO_TCP)) and synced(conn(PROTO_UDP))
    assert not synced(conn(PROTO_GRE))
    assert synced_connections(frozenset({PROTO_UDP}))(conn(PROTO_UDP))
    assert not synced_connections(frozenset({PROTO_UDP}))(conn(PROTO_TCP))


def test_with_a_mark_mask_only_classified_entries_are_synced() -> None:
    synced = synced_connections(SYNCED_PROTOCOLS, 0x0000FFFF)
    assert synced(conn(PROTO_TCP, mark=0x00000005))
    assert not synced(conn(PROTO_TCP, mark=0))  # the node's own traffic: no bucket
    assert not synced(conn(PROTO_TCP, mark=0x00050000))  # a mark outside the mask
    assert not synced(conn(PROTO_GRE, mark=0x00000005))


def test_the_daemon_syncs_what_its_data_plane_classified() -> None:
    cfg = dataclasses.replace(parse(GOOD), mark_mask=0x0000FF00)
    synced = node_config(cfg, Keyring.single(bytes(32)), 1, 1).relevance()
    assert synced(conn(PROTO_TCP, mark=0x00000100))
    assert not synced(conn(PROTO_TCP, mark=0x00000001))
    assert not synced(conn(PROTO_TCP))


def test_the_operators_filter_narrows_by_tcp_state_and_network() -> None:
    cfg = parse(
        with_change(
            "sync_filter",
            {"tcp_states": ["established"], "ignore": ["198.51.100.0/24", "2001:db8:ff::/48"]},
        )
    )
    synced = node_config(cfg, Keyring.single(bytes(32)), 1, 1).relevance()
    marked = 0x00000005

    def tcp(src: str, dst: str, state: int) -> Connection:
        orig = make_tuple(src, dst, 40000, 443)
        return Connection(PROTO_TCP, orig, orig.inverse(), state=state, mark=marked)

    assert synced(tcp("192.0.2.1", "203.0.113.10", TCP_ESTABLISHED))
    assert not synced(tcp("192.0.2.1", "203.0.113.10", TCP_SYN_SENT))  # state not chosen
    assert not synced(tcp("198.51.100.7", "203.0.113.10", TCP_ESTABLISHED))  # ignored source
    assert not synced(tcp("192.0.2.1", "198.51.100.200", TCP_ESTABLISHED))  # ignored destination
    assert not synced(tcp("2001:db8:ff::1", "2001:db8::2", TCP_ESTABLISHED))
    assert synced(tcp("2001:db8:fe::1", "2001:db8::2", TCP_ESTABLISHED))
    udp = make_tuple("192.0.2.1", "203.0.113.10", 5000, 53)
    assert synced(Connection(PROTO_UDP, udp, udp.inverse(), mark=marked))  # states are TCP's


def test_without_a_filter_the_predicate_is_the_plain_one() -> None:
    # the common case must not pay for the filter: same function as before
    cfg = parse(with_change("sync_filter", {"delay_ms": 500}))
    assert cfg.sync_filter == SyncFilter() and cfg.sync_delay_s == 0.5
    synced = node_config(cfg, Keyring.single(bytes(32)), 1, 1).relevance()
    assert synced.__name__ == "classified"
