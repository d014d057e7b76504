"""Prometheus metrics, served by prometheus_client's HTTP server thread.

The event loop publishes a snapshot (`publish`) after it processed input;
the collector only reads the last snapshot, so a scrape never touches the
protocol objects from another thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "fwcluster_"

# Node.stats() keys exported as gauges; everything else numeric is a counter.
GAUGES = {
    "members",
    "owned_buckets",
    "cache_size",
    "local_connections",
    "sync_lag_seconds",
    "ready",
    "stable",
    "links_up",
    "ruleset_restore_last_ms",  # how long the last restore of the flushed tables took
    "wire_version",
}


class SnapshotCollector(Collector):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: dict[str, Any] = {}
        self._labels: dict[str, str] = {}

    def publish(self, stats: Mapping[str, Any], labels: Mapping[str, str]) -> None:
        with self._lock:
            self._stats = dict(stats)
            self._labels = dict(labels)

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        with self._lock:
            stats, labels = self._stats, self._labels
        names, values = list(labels), list(labels.values())
        for key, value in sorted(stats.items()):
            name = PREFIX + key.replace("-", "_").replace(".", "_")
            if isinstance(value, Mapping):  # e.g. drops by reason
                family: GaugeMetricFamily | CounterMetricFamily = CounterMetricFamily(
                    name, f"{key} by reason", labels=[*names, "reason"]
                )
                for reason, n in sorted(value.items()):
                    family.add_metric([*values, str(reason)], float(n))
                yield family
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                if key in GAUGES:
                    family = GaugeMetricFamily(name, key, labels=names)
                else:
                    family = CounterMetricFamily(name, key, labels=names)
                family.add_metric(values, float(value))
                yield family
            elif isinstance(value, bool):
                family = GaugeMetricFamily(name, key, labels=names)
                family.add_metric(values, 1.0 if value else 0.0)
                yield family


def serve(address: str, port: int) -> SnapshotCollector:
    collector = SnapshotCollector()
    REGISTRY.register(collector)
    start_http_server(port, addr=address)
    return collector
