"""``Reports``: hands each scan outcome to every downstream sink (sheet write-back, Prefect events).

A sink queues and delivers on its own; one that raises is logged and skipped, so a broken sink
never stops another sink or the scan that reported.
"""

from __future__ import annotations

import logging

from scanner_agent.core.outcomes import ReportSink, ScanReport

log = logging.getLogger(__name__)


class Reports:
    """The agent's report sinks, called in order; never raises."""

    def __init__(self, sinks: list[ReportSink] | None = None) -> None:
        self.sinks: list[ReportSink] = list(sinks or [])

    def add(self, sink: ReportSink) -> None:
        self.sinks.append(sink)

    def report(self, outcome: ScanReport) -> None:
        for sink in self.sinks:
            try:
                sink.report(outcome)
            except Exception:
                log.exception("report sink %s could not take %s for %s", sink, outcome.event, outcome.barcode)
