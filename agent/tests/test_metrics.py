"""Prometheus metrics: the snapshot a loop publishes is what a scrape reads."""

from __future__ import annotations

import socket
import urllib.request

from prometheus_client import CollectorRegistry, start_http_server

from availability_manager.daemon.metrics import SnapshotCollector


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_scrape_shows_gauges_counters_and_drop_reasons() -> None:
    collector = SnapshotCollector()
    registry = CollectorRegistry()
    registry.register(collector)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        collector.publish(
            {
                "members": 3,
                "owned_buckets": 86,
                "naks": 7,
                "stable": True,
                "drops": {"bad-tag": 2, "replayed": 5},
            },
            {"node": "198.51.100.11"},
        )
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        body = text.decode()
        assert 'fwcluster_members{node="198.51.100.11"} 3.0' in body
        assert 'fwcluster_owned_buckets{node="198.51.100.11"} 86.0' in body
        assert "# TYPE fwcluster_members gauge" in body
        assert 'fwcluster_naks_total{node="198.51.100.11"} 7.0' in body
        assert 'fwcluster_stable{node="198.51.100.11"} 1.0' in body
        assert 'fwcluster_drops_total{node="198.51.100.11",reason="replayed"} 5.0' in body
        # a new snapshot replaces the old one entirely
        collector.publish({"members": 2}, {"node": "198.51.100.11"})
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert b'fwcluster_members{node="198.51.100.11"} 2.0' in body
        assert b"fwcluster_naks_total" not in body
    finally:
        server.shutdown()
        thread.join(5)
