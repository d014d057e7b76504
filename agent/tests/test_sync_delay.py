"""The sync delay: entries younger than `sync_delay` are not announced; those
that end young cost nothing; the rest are announced (latest state) once due,
and all at once when the node hands its buckets over."""

from __future__ import annotations

from test_conntrack_sync import A, B, Net, conn

from availability_manager.connection import TCP_ESTABLISHED, TCP_FIN_WAIT, TCP_SYN_SENT


def cached(net: Net, peer: int, of: int) -> dict[bytes, int]:
    """key -> state of what `peer` caches of `of`'s entries."""
    return {c.key: c.state for c in net.nodes[peer].cache_entries(of)}


def test_a_connection_that_ends_within_the_delay_is_never_sent() -> None:
    net = Net([A, B], sync_delay=2.0)
    net.join_all()
    c = conn(1, state=TCP_SYN_SENT)
    net.nodes[A].local_new(c, net.now)
    net.run(1.0)
    net.nodes[A].local_destroy(c, net.now)
    net.run(3.0)
    assert cached(net, B, A) == {}
    stats = net.nodes[A].stats
    assert stats.died_before_sync == 1 and stats.held_back == 0
    # only digests went out meanwhile: no CtNew, no CtDelete
    assert stats.sent.get("CtNew", 0) == 0 and stats.sent.get("CtDelete", 0) == 0


def test_a_connection_that_outlives_the_delay_is_sent_once_in_its_latest_state() -> None:
    net = Net([A, B], sync_delay=2.0)
    net.join_all()
    c = conn(2, state=TCP_SYN_SENT)
    net.nodes[A].local_new(c, net.now)
    net.run(0.5)
    net.nodes[A].local_update(c.with_state(TCP_ESTABLISHED, c.status), net.now)
    net.run(1.0)
    assert cached(net, B, A) == {}  # 1.5 s old: still held
    assert net.nodes[A].stats.held_back == 1
    net.run(1.0)
    assert cached(net, B, A) == {c.key: TCP_ESTABLISHED}
    assert net.nodes[A].stats.sent.get("CtNew", 0) == 1
    assert net.nodes[A].stats.sent.get("CtUpdate", 0) == 0
    # once announced, updates flow at once as without a delay
    net.nodes[A].local_update(c.with_state(TCP_FIN_WAIT, c.status), net.now)
    net.settle()
    assert cached(net, B, A) == {c.key: TCP_FIN_WAIT}


def test_a_handover_announces_every_held_entry_at_once() -> None:
    net = Net([A, B], sync_delay=60.0)
    net.join_all()
    conns = [conn(i) for i in range(5)]
    for c in conns:
        net.nodes[A].local_new(c, net.now)
    net.settle()
    assert cached(net, B, A) == {}
    net.nodes[A].announce_held()
    net.settle()
    assert set(cached(net, B, A)) == {c.key for c in conns}


def test_a_dump_forgets_held_entries_the_kernel_no_longer_has() -> None:
    net = Net([A, B], sync_delay=2.0)
    net.join_all()
    gone, alive = conn(3), conn(4)
    net.nodes[A].local_new(gone, net.now)
    net.nodes[A].local_new(alive, net.now)
    net.nodes[A].local_dump([alive], net.now)  # events were lost; `gone` ended
    net.run(2.5)
    assert set(cached(net, B, A)) == {alive.key}
    assert net.nodes[A].stats.died_before_sync == 1


def test_without_a_delay_entries_are_sent_at_once() -> None:
    net = Net([A, B])
    net.join_all()
    c = conn(5)
    net.nodes[A].local_new(c, net.now)
    net.settle()
    assert set(cached(net, B, A)) == {c.key}
    assert net.nodes[A].stats.held_back == 0
