"""Times and durations said the way a person reads them, in logs, alerts, reports and ``status``."""

from __future__ import annotations

from datetime import UTC, datetime


def age_text(seconds: float) -> str:
    """How old something is, in the unit a person would use: ``45 s``, ``12 min``, ``3.5 h``, ``4.0 days``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def iso_utc(t: float | None) -> str | None:
    """Unix time as ISO 8601 in UTC to the second: ``2026-03-01T12:00:00+00:00``; ``None`` stays ``None``."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="seconds")


def iso_local(t: float | None) -> str | None:
    """Unix time as ISO 8601 in the host's time zone with its offset, to the second; ``None`` stays ``None``.

    Readable in an e-mail to the lab and still unambiguous in JSON.
    """
    if t is None:
        return None
    return datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


def iso_local_from_text(text: object) -> str | None:
    """An ISO 8601 time written elsewhere (any offset) in the same local form as :func:`iso_local`.

    Not a string, or empty: ``None``. Not ISO 8601: the text as written, rather than dropping it.
    """
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text).astimezone().isoformat(timespec="seconds")
    except ValueError:
        return text


def short_time(iso: str | None) -> str:
    """An ISO 8601 time as ``YYYY-MM-DD HH:MM`` for a line of text; ``unknown time`` if none.

    Text that is not ISO 8601 is shown as it is.
    """
    if not iso:
        return "unknown time"
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return iso
