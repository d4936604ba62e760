"""How long an HTTP ``Retry-After`` header asks a client to wait, in seconds.

The header holds either delta-seconds (``"120"``) or an HTTP-date (``"Wed, 21 Oct 2026 07:28:00 GMT"``).
Both Slack's rate-limit handler and the Google Sheets reader decide with it whether to wait in the
same call or to give up until later, so a header that is absent or unreadable says "no advice"
(``None``) and each caller applies its own default.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Mapping
from datetime import UTC

__all__ = ["retry_after_from_headers", "retry_after_seconds"]

# RFC 9110 says 1*DIGIT; a decimal is accepted too, as some servers send one.
_DELTA = re.compile(r"\d+(?:\.\d+)?", re.ASCII)


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds to wait from ``now`` (epoch seconds), or None when ``value`` is absent or garbage.

    An HTTP-date in the past means "now" (0.0), never a negative wait.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _DELTA.fullmatch(text):
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" parses naive; HTTP dates are always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def retry_after_from_headers(headers: Mapping[str, object] | None, now: float) -> float | None:
    """``retry_after_seconds`` of the ``Retry-After`` header in ``headers`` (any case; a list's first
    value), or None when there is none."""
    for name, raw in (headers or {}).items():
        if str(name).lower() != "retry-after":
            continue
        first = raw[0] if isinstance(raw, list | tuple) and raw else raw
        return retry_after_seconds(first if isinstance(first, str) else None, now)
    return None
