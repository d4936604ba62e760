"""Durations said the way a person reads them, in logs, alerts and ``status``."""

from __future__ import annotations


def age_text(seconds: float) -> str:
    """How old something is, in the unit a person would use: ``45 s``, ``12 min``, ``3.5 h``, ``4.0 days``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
