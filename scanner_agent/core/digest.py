"""The daily digest: when it is due (``[alerts] digest_time``) and what it says, with no I/O.

The counts come from the journal (``orchestration.daily_report.daily_rows``, the same numbers as the
Prefect artifact) and the oldest held scan from the journal's held scans; this module only decides
and words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time

from scanner_agent.core.humanize import age_text

__all__ = ["DigestCounts", "OldestHeld", "digest_due", "digest_lines", "parse_digest_time"]

_HHMM = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")


def parse_digest_time(value: str | None) -> time | None:
    """``"17:00"`` -> 17:00; empty or None -> None (no digest). Anything else raises ValueError."""
    text = (value or "").strip()
    if not text:
        return None
    m = _HHMM.fullmatch(text)
    if m is None:
        raise ValueError(
            f'[alerts] digest_time must be "HH:MM" (24-hour local time, e.g. "17:00"), got {value!r}'
        )
    return time(int(m.group(1)), int(m.group(2)))


def digest_due(now_local: datetime, at: time | None, last_day: str | None) -> bool:
    """True once ``at`` has passed today (host local time) and today's digest was not sent yet.

    A daemon that was down at ``at`` sends that day's digest when it comes back the same day; a day
    it was down for entirely gets none (yesterday's numbers at 09:00 would read as today's).
    """
    if at is None:
        return False
    return now_local.time() >= at and last_day != now_local.date().isoformat()


@dataclass(frozen=True)
class DigestCounts:
    """One day's outcomes on one scanner: each scan counted once per outcome (as in the daily artifact)."""

    stored: int = 0
    held: int = 0
    failed: int = 0
    quarantined: int = 0


@dataclass(frozen=True)
class OldestHeld:
    """The scan that has waited longest for its sheet row."""

    subject: str  # the barcode, else the file name
    file: str
    held_seconds: float
    reason: str | None = None


def digest_lines(
    scanner: str, day: str, counts: DigestCounts, oldest: OldestHeld | None, held_now: int
) -> tuple[str, list[str]]:
    """The digest's headline and its lines (plain text; the channel adds its own markup)."""
    head = f"Daily digest for {scanner}, {day}"
    lines = [
        f"Stored: {counts.stored}",
        f"Held: {counts.held}",
        f"Failed: {counts.failed}",
        f"Quarantined: {counts.quarantined}",
    ]
    if oldest is None:
        lines.append("No scan is held now.")
    else:
        what = oldest.subject if oldest.subject == oldest.file else f"{oldest.subject} ({oldest.file})"
        why = f": {oldest.reason}" if oldest.reason else ""
        lines.append(f"Held now: {held_now}; the oldest, {what}, for {age_text(oldest.held_seconds)}{why}")
    return head, lines
