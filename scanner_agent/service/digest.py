"""The daily Slack digest per scanner (``[alerts] digest_time``): sent once a day, even across restarts.

The daemon's slow timers call ``send_digest_if_due``. The day's counts are the daily artifact's
(``orchestration.daily_report.daily_rows``: each scan once per outcome per local day), the oldest
held scan is the journal's; ``core.digest`` decides when and words it. The day it last went out is
kept in the alert outbox (``alert_digest``), so a restart after 17:00 does not send it twice, and a
digest Slack did not take is tried again on the next pass.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from scanner_agent.alerts import AlertDeliveryError, SlackChannel
from scanner_agent.core.digest import DigestCounts, OldestHeld, digest_due, digest_lines, parse_digest_time
from scanner_agent.core.states import ScanState
from scanner_agent.orchestration.daily_report import daily_rows
from scanner_agent.service.bootstrap import Services

log = logging.getLogger(__name__)


def send_digest_if_due(services: Services, now: float) -> bool:
    """Post today's digest to Slack once ``digest_time`` has passed; True when one went out now."""
    at = parse_digest_time(services.cfg.alerts.digest_time)
    outbox = services.alerter.outbox
    if at is None or outbox is None:
        return False
    local = datetime.fromtimestamp(now)
    day = local.date().isoformat()
    if not digest_due(local, at, outbox.last_digest(services.name)):
        return False
    slacks = [c for c in services.alerter.channels if isinstance(c, SlackChannel)]
    if not slacks:
        log.warning("[alerts] digest_time is set but no Slack channel is configured; no digest today")
        outbox.record_digest(services.name, day, now)  # once a day, not every 30 s
        return False
    if any((outbox.next_try_for(c.name) or 0) > now for c in slacks):
        return False  # Slack failed recently and alerts wait for it; the digest waits with them
    head, lines = build_digest(services, local)
    for channel in slacks:
        try:
            channel.post_text(head, lines)
        except AlertDeliveryError as exc:
            log.warning(
                "Daily digest not delivered via %s: %s; trying again on the next pass", channel.name, exc
            )
            return False
    outbox.record_digest(services.name, day, now)
    log.info("Daily digest sent for %s, %s", services.name, day)
    return True


def build_digest(services: Services, local: datetime) -> tuple[str, list[str]]:
    """The digest's headline and lines for the (local) day of ``local``, from the journal."""
    [row] = daily_rows(services.cfg.journal.path, days=1, today=local.date())
    counts = DigestCounts(
        stored=row["Stored"], held=row["Held"], failed=row["Failed"], quarantined=row["Quarantined"]
    )
    held = [r for r in services.journal.in_state(ScanState.HELD) if r.held_since]
    oldest = None
    if held:
        rec = min(held, key=lambda r: r.held_since or 0.0)
        name = Path(rec.path).name
        oldest = OldestHeld(
            subject=rec.barcode or name,
            file=name,
            held_seconds=max(0.0, local.timestamp() - (rec.held_since or 0.0)),
            reason=rec.reason,
        )
    return digest_lines(services.name, local.date().isoformat(), counts, oldest, len(held))
