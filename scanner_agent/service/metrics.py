"""Prometheus metrics for one agent, served on ``[metrics] listen`` (``/metrics``), off by default.

Counters and histograms move as the dispatcher finishes scans (``scan_finished``); everything else
(scans by state, held scans, the outbox backlog, the last stored time) is read from the journal
and the live parts when Prometheus scrapes, so it is never stale and costs nothing between scrapes.
Each agent has its own registry, not prometheus_client's global one: several agents (or tests)
in one process never collide. ``docs/metrics.md`` lists every name.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from scanner_agent.core.errors import ConfigError
from scanner_agent.core.hostport import parse_host_port
from scanner_agent.core.states import ScanState
from scanner_agent.service.bootstrap import Services

log = logging.getLogger(__name__)

PREFIX = "scanner_agent_"
#: Whole-slide images run from megabytes to tens of gigabytes: seconds from a blink to an hour.
SECONDS_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
#: From a slow share (1 MB/s) to a fast local disk (1 GB/s).
RATE_BUCKETS = tuple(mb * 1e6 for mb in (1, 5, 10, 25, 50, 100, 200, 400, 1000))


class AgentMetrics:
    """The agent's metrics registry; ``serve`` starts the HTTP endpoint, ``close`` stops it."""

    def __init__(self, services: Services, *, dispatcher: Any = None, watcher: Any = None) -> None:
        self.services = services
        self.registry = CollectorRegistry(auto_describe=True)
        self.scans_stored = Counter(
            PREFIX + "scans_stored", "Scans stored since the agent started.", registry=self.registry
        )
        self.bytes_stored = Counter(
            PREFIX + "bytes_stored", "Bytes of scans stored since the agent started.", registry=self.registry
        )
        self.transfer_seconds = Histogram(
            PREFIX + "transfer_seconds",
            "Time to copy and verify one scan into storage.",
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.transfer_rate = Histogram(
            PREFIX + "transfer_bytes_per_second",
            "Copy rate of one scan into storage.",
            buckets=RATE_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_Live(services, dispatcher, watcher))
        self._counted: set[int] = set()
        self._lock = threading.Lock()
        self._server: Any = None

    def scan_finished(self, scan_id: int) -> None:
        """Dispatcher: a scan's run ended. A stored scan moves the counters once, whatever re-runs it."""
        rec = self.services.journal.get(scan_id)
        if rec is None or rec.state != ScanState.STORED:
            return
        with self._lock:
            if scan_id in self._counted:
                return
            self._counted.add(scan_id)
        size = int(rec.details.get("bytes") or rec.size)
        self.scans_stored.inc()
        self.bytes_stored.inc(size)
        seconds = float(rec.details.get("transfer_seconds") or 0)
        if seconds > 0 and not rec.details.get("already_present"):
            self.transfer_seconds.observe(seconds)
            self.transfer_rate.observe(size / seconds)

    def serve(self, listen: str) -> None:
        """Listen on ``host:port``; a malformed or busy address is a ``ConfigError`` naming the key."""
        try:
            host, port = parse_host_port(listen)
        except ValueError as exc:
            raise ConfigError(f"metrics.listen: {exc}") from None
        try:
            self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            why = "the address is in use (another agent or program listens there)"
            if exc.errno != errno.EADDRINUSE:
                why = exc.strerror or str(exc)
            raise ConfigError(f"metrics.listen: cannot listen on {listen}: {why}") from None
        log.info("Prometheus metrics on http://%s/metrics", listen)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _Live(Collector):
    """Gauges computed at scrape time from the journal, the dispatcher, the watcher and the sheet."""

    def __init__(self, services: Services, dispatcher: Any, watcher: Any) -> None:
        self.services = services
        self.dispatcher = dispatcher
        self.watcher = watcher

    def describe(self) -> list[Metric]:
        return []  # names vary with what is known (a CSV sheet has no cache age): not pre-described

    def collect(self) -> Iterator[Metric]:
        j = self.services.journal
        now = time.time()
        by_state = GaugeMetricFamily(PREFIX + "scans", "Scans in the journal by state.", labels=["state"])
        for state, n in sorted(j.counts().items()):
            by_state.add_metric([state], n)
        yield by_state
        held = j.in_state(ScanState.HELD)
        yield GaugeMetricFamily(PREFIX + "held_scans", "Scans held waiting for their sheet row.", len(held))
        oldest = min((r.held_since or r.updated for r in held), default=None)
        yield GaugeMetricFamily(
            PREFIX + "oldest_held_seconds",
            "Age of the longest-held scan (0 when none is held).",
            0.0 if oldest is None else max(0.0, now - oldest),
        )
        if self.dispatcher is not None:
            yield GaugeMetricFamily(
                PREFIX + "queue_length", "Scans waiting for a worker.", self.dispatcher.queue_length
            )
            yield GaugeMetricFamily(
                PREFIX + "in_flight", "Scans being processed now.", len(self.dispatcher.in_flight)
            )
        if self.watcher is not None:
            yield GaugeMetricFamily(
                PREFIX + "watcher_healthy",
                "1 while the watch folder's observer runs and answers, else 0.",
                1.0 if self.watcher.healthy() else 0.0,
            )
        cache_age = getattr(self.services.sheet, "cache_age", None)
        age = cache_age() if callable(cache_age) else None
        if age is not None:
            yield GaugeMetricFamily(
                PREFIX + "sheet_cache_age_seconds", "Seconds since the sheet was last read.", age
            )
        outbox = getattr(self.services.alerter, "outbox", None)
        yield GaugeMetricFamily(
            PREFIX + "alert_outbox_backlog",
            "Alerts waiting for a channel (Slack, e-mail) to come back.",
            outbox.pending_count() if outbox is not None else 0,
        )
        last = j.last_stored()
        if last is not None and last.stored_at is not None:
            yield GaugeMetricFamily(
                PREFIX + "last_stored_timestamp_seconds",
                "Unix time the latest scan was stored.",
                last.stored_at,
            )
