"""What the reconcile report read, as plain data: journal rows, rescan requests, storage's sidecars.

The report module fills a :class:`Sources` from the sheet, the journal and storage (each may be
missing: ``None``); :mod:`scanner_agent.core.reconcile` sorts it into categories.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scanner_agent.core.sheet_table import SheetTable


@dataclass(frozen=True)
class JournalScan:
    """One journal row, with the fields the report looks at."""

    id: int
    path: str
    state: str
    barcode: str | None = None
    kind: str | None = None
    reason: str | None = None
    dest: str | None = None
    attempts: int = 0
    first_seen: float = 0.0
    updated: float = 0.0
    ready_at: float | None = None
    stored_at: float | None = None
    held_since: float | None = None
    next_check: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RescanRequest:
    """One open rescan request from the journal."""

    barcode: str
    requested_at: float
    requested_by: str
    deadline: float
    reason: str | None = None
    alerted_at: float | None = None


@dataclass(frozen=True)
class Sidecar:
    """A sidecar found in storage whose image is there: the barcode, the image's path, when it was stored."""

    barcode: str
    image: str
    stored_at: str | None  # local ISO 8601, or the text as written when it is not ISO


@dataclass(frozen=True)
class StoredImages:
    """Storage's sidecars grouped by barcode: current images, and images moved to ``superseded/``."""

    current: Mapping[str, Sequence[Sidecar]]
    superseded: Mapping[str, Sequence[Sidecar]]


@dataclass(frozen=True)
class Sources:
    """Everything read for one report; ``None`` for a source that could not be read.

    ``present`` holds the paths (as the journal wrote them) that were found to exist: the
    journal's stored images and quarantine places.
    """

    sheet: SheetTable | None
    scans: Sequence[JournalScan] | None
    rescans: Sequence[RescanRequest] | None
    storage: StoredImages | None
    present: frozenset[str] = frozenset()
    barcode_regex: re.Pattern[str] | None = None

    def exists(self, path: str | None) -> bool:
        """Whether ``path`` was found when the sources were read."""
        return bool(path) and str(path) in self.present


def paths_to_check(scans: Iterable[JournalScan], *, storage: bool) -> set[str]:
    """The journal's paths whose existence the categories ask about.

    Stored images only when storage could be read (without it no category looks at them), and
    every quarantine place.
    """
    out: set[str] = set()
    for r in scans:
        if storage and r.state == "stored" and r.barcode and r.dest:
            out.add(r.dest)
        where = r.details.get("quarantined_to") if r.state == "quarantined" else None
        if where:
            out.add(str(where))
    return out
