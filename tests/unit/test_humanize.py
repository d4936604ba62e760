"""Times and durations as a person reads them: the helpers in ``core.humanize``."""

from __future__ import annotations

from datetime import datetime

from scanner_agent.core.humanize import age_text, iso_local, iso_local_from_text, iso_utc, short_time

T = 1_772_366_400.0  # 2026-03-01T12:00:00Z


def test_iso_utc_to_the_second() -> None:
    assert iso_utc(T + 0.9) == "2026-03-01T12:00:00+00:00"
    assert iso_utc(None) is None


def test_iso_local_is_the_same_instant_with_the_hosts_offset() -> None:
    text = iso_local(T)
    assert text is not None and datetime.fromisoformat(text).timestamp() == T
    assert iso_local(None) is None


def test_iso_local_from_text_keeps_what_it_cannot_read() -> None:
    assert iso_local_from_text("2026-03-01T12:00:00+00:00") == iso_local(T)
    assert iso_local_from_text("last tuesday") == "last tuesday"
    assert iso_local_from_text("") is None and iso_local_from_text(5) is None


def test_short_time_and_age_text() -> None:
    assert short_time("2026-03-01T12:00:59+00:00") == "2026-03-01 12:00"
    assert short_time(None) == "unknown time" and short_time("soon") == "soon"
    assert [age_text(s) for s in (45, 720, 12600, 4 * 86400)] == ["45 s", "12 min", "3.5 h", "4.0 days"]
