"""The reconcile report's categories, worked out from what was read of the sheet, journal and storage.

Pure: the report module reads the three sources (each may be missing) into a
:class:`~scanner_agent.core.reconcile_sources.Sources` (re-exported here),
and :func:`categorize` sorts every barcode into the categories of :data:`CATEGORIES`. A category
that a missing source makes unknowable is ``None`` (not an empty list), so "none found" and
"could not look" never read the same. Entries are plain JSON-able dicts; times in them are local
ISO 8601 (:func:`~scanner_agent.core.humanize.iso_local`).
"""

from __future__ import annotations

import posixpath
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePath
from typing import Any

from scanner_agent.core.barcode import barcode_from_name
from scanner_agent.core.humanize import iso_local
from scanner_agent.core.reconcile_sources import (
    JournalScan,
    RescanRequest,
    Sidecar,
    Sources,
    StoredImages,
    paths_to_check,
)

__all__ = [
    "CATEGORIES",
    "Category",
    "Entry",
    "JournalScan",
    "RescanRequest",
    "Sidecar",
    "Sources",
    "StoredImages",
    "categorize",
    "paths_to_check",
]

#: Report order: what needs a person first, the good news last.
CATEGORIES = (
    "stored_twice",
    "missing_from_storage",
    "failed",
    "quarantined",
    "held",
    "missing_rescans",
    "scanned_not_in_sheet",
    "in_sheet_never_scanned",
    "rescanned",
    "in_progress",
    "stored",
)

IN_PROGRESS_STATES = ("seen", "ready", "processing")

Entry = dict[str, Any]
Category = list[Entry] | None


def categorize(src: Sources, now: float) -> dict[str, Category]:
    """Every category of :data:`CATEGORIES`, in that order: a sorted list of entries, or ``None``."""
    stored = _stored(src)
    return {
        "stored_twice": _stored_twice(src),
        "missing_from_storage": _missing_from_storage(src),
        "failed": _failed(src),
        "quarantined": _quarantined(src),
        "held": _held(src),
        "missing_rescans": _missing_rescans(src, now),
        "scanned_not_in_sheet": _scanned_not_in_sheet(src),
        "in_sheet_never_scanned": _in_sheet_never_scanned(src),
        "rescanned": _rescanned(src, stored),
        "in_progress": _in_progress(src),
        "stored": stored,
    }


# --------------------------------------------------------------------------- journal views


def _latest_per_path(rows: Iterable[JournalScan]) -> set[int]:
    """Ids of the newest row for each path: older rows at a path were replaced by a rewrite."""
    newest: dict[str, int] = {}
    for r in rows:
        newest[r.path] = max(newest.get(r.path, r.id), r.id)
    return set(newest.values())


def _stored_by_barcode(rows: Iterable[JournalScan]) -> dict[str, list[JournalScan]]:
    """The journal's stored rows per barcode, oldest first."""
    out: dict[str, list[JournalScan]] = defaultdict(list)
    for r in rows:
        if r.state == "stored" and r.barcode:
            out[r.barcode].append(r)
    for v in out.values():
        v.sort(key=lambda r: (r.stored_at or 0, r.id))
    return out


def _rows_in(scans: Sequence[JournalScan], state: str) -> list[JournalScan]:
    """Rows in ``state`` that are still the newest row of their path."""
    latest = _latest_per_path(scans)
    return [r for r in scans if r.state == state and r.id in latest]


def _norm(path: str) -> str:
    return posixpath.normpath(path)


def _sort_key(entry: Entry) -> tuple[bool, str, str]:
    """Entries by barcode (those without one last), then by file."""
    b = entry.get("barcode")
    return (b is None, b or "", str(entry.get("file") or ""))


def _in_sheet(src: Sources, barcode: str | None) -> bool | None:
    """Whether the sheet has a row for ``barcode``; ``None`` without a sheet or a barcode."""
    return (barcode in src.sheet.rows) if src.sheet and barcode else None


# --------------------------------------------------------------------------- categories


def _stored(src: Sources) -> Category:
    """Barcodes with a current image: the journal's newest image still there, else storage's newest."""
    if src.scans is None and src.storage is None:
        return None
    by_bc = _stored_by_barcode(src.scans or [])
    barcodes = set(by_bc) | (set(src.storage.current) if src.storage else set())
    out = []
    for b in barcodes:
        jrows = by_bc.get(b, [])
        live = [r for r in jrows if src.exists(r.dest)] if src.storage else jrows
        cars = src.storage.current.get(b, []) if src.storage else []
        if live:
            dest, at = live[-1].dest, iso_local(live[-1].stored_at)
        elif cars:
            car = max(cars, key=lambda c: c.stored_at or "")
            dest, at = car.image, car.stored_at
        else:
            continue  # the journal says stored but the image is gone: missing_from_storage
        out.append(
            {
                "barcode": b,
                "dest": dest,
                "stored_at": at,
                "in_journal": bool(jrows),
                "in_storage": bool(live or cars) if src.storage else None,
                "in_sheet": _in_sheet(src, b),
            }
        )
    return sorted(out, key=_sort_key)


def _missing_from_storage(src: Sources) -> Category:
    """Barcodes the journal stored whose images are all gone, with no current sidecar either."""
    if src.scans is None or src.storage is None:
        return None
    out = []
    for b, jrows in _stored_by_barcode(src.scans).items():
        if any(src.exists(r.dest) for r in jrows) or src.storage.current.get(b):
            continue
        last = jrows[-1]
        out.append(
            {"barcode": b, "dest": last.dest, "stored_at": iso_local(last.stored_at), "file": last.path}
        )
    return sorted(out, key=_sort_key)


def _held(src: Sources) -> Category:
    """Scans held for the sheet (the newest row of each path only)."""
    if src.scans is None:
        return None
    return sorted(
        (
            {
                "barcode": r.barcode,
                "file": r.path,
                "kind": r.kind,
                "reason": r.reason,
                "since": iso_local(r.held_since or r.updated),
                "in_sheet": _in_sheet(src, r.barcode),
            }
            for r in _rows_in(src.scans, "held")
        ),
        key=_sort_key,
    )


def _failed(src: Sources) -> Category:
    """Scans that failed (the newest row of each path only): waiting for a person or retrying."""
    if src.scans is None:
        return None
    stored = _stored_by_barcode(src.scans)
    return sorted(
        (
            {
                "barcode": r.barcode,
                "file": r.path,
                "kind": r.kind,
                "reason": r.reason,
                "since": iso_local(r.updated),
                "attempts": r.attempts,
                "retrying": r.next_check is not None,
                # a later scan of the same barcode was stored: this one is only disk to free
                "barcode_stored_since": bool(r.barcode and r.barcode in stored),
            }
            for r in _rows_in(src.scans, "failed")
        ),
        key=_sort_key,
    )


def _quarantined(src: Sources) -> Category:
    """Every scan moved aside, and whether its quarantine place is still there."""
    if src.scans is None:
        return None
    out = []
    for r in src.scans:  # every quarantined scan, even if the scanner later rewrote its path
        if r.state != "quarantined":
            continue
        where = r.details.get("quarantined_to")
        out.append(
            {
                "barcode": r.barcode,
                "file": r.path,
                "kind": r.kind,
                "reason": r.reason,
                "since": iso_local(r.updated),
                "where": where,
                "where_exists": src.exists(where) if where else None,
            }
        )
    return sorted(out, key=_sort_key)


def _in_progress(src: Sources) -> Category:
    """Scans found on the scanner and not finished, with the barcode guessed from the name if needed."""
    if src.scans is None:
        return None
    out = []
    latest = _latest_per_path(src.scans)
    for r in src.scans:
        if r.state not in IN_PROGRESS_STATES or r.id not in latest:
            continue
        guessed = None if r.barcode else _guess_barcode(r.path, src.barcode_regex)
        out.append(
            {
                "barcode": r.barcode or guessed,
                "barcode_from_file_name": guessed is not None,
                "file": r.path,
                "state": r.state,
                "since": iso_local(r.ready_at or r.first_seen),
            }
        )
    return sorted(out, key=_sort_key)


def _guess_barcode(path: str, regex: re.Pattern[str] | None) -> str | None:
    """The barcode the flow will most likely find (it reads the file name first); only a hint."""
    if regex is None:
        return None
    try:
        return barcode_from_name(PurePath(path).name, regex)
    except ValueError:
        return None


def _missing_rescans(src: Sources, now: float) -> Category:
    """Open rescan requests, overdue when their deadline is at or before ``now``."""
    if src.rescans is None:
        return None
    out = [
        {
            "barcode": r.barcode,
            "requested_at": iso_local(r.requested_at),
            "requested_by": r.requested_by,
            "reason": r.reason,
            "deadline": iso_local(r.deadline),
            "overdue": r.deadline <= now,
            "alerted": r.alerted_at is not None,
            "in_sheet": (r.barcode in src.sheet.rows) if src.sheet else None,
        }
        for r in src.rescans
    ]
    return sorted(out, key=_sort_key)


def _scanned_not_in_sheet(src: Sources) -> Category:
    """Barcodes in the journal or in storage that no sheet row has."""
    if src.sheet is None or (src.scans is None and src.storage is None):
        return None
    states: dict[str, set[str]] = defaultdict(set)
    files: dict[str, set[str]] = defaultdict(set)
    for r in src.scans or []:
        if r.barcode and r.barcode not in src.sheet.rows:
            states[r.barcode].add(r.state)
            files[r.barcode].add(r.path)
    for b, cars in src.storage.current.items() if src.storage else ():
        if b not in src.sheet.rows:
            states[b].add("in storage")
            files[b].update(c.image for c in cars)
    return [{"barcode": b, "states": sorted(states[b]), "files": sorted(files[b])} for b in sorted(states)]


def _in_sheet_never_scanned(src: Sources) -> Category:
    """Sheet barcodes that no journal row, scan in progress or storage image has."""
    # Without the journal every held or failed barcode would wrongly read as never scanned.
    if src.sheet is None or src.scans is None:
        return None
    seen = {r.barcode for r in src.scans if r.barcode}
    seen |= {e["barcode"] for e in _in_progress(src) or [] if e["barcode"]}
    if src.storage:  # another host sharing this storage may have stored it
        seen |= set(src.storage.current) | set(src.storage.superseded)
    scanner_col = next((c for c in src.sheet.columns if c.casefold() == "scanner"), None)
    out = []
    for b, row in src.sheet.rows.items():
        if b not in seen:
            out.append(
                {
                    "barcode": b,
                    "row": row.row_number,
                    "scanner": (row.values.get(scanner_col) or None) if scanner_col else None,
                }
            )
    return sorted(out, key=_sort_key)


def _rescanned(src: Sources, stored: Category) -> Category:
    """Barcodes stored more than once: the current image and the superseded ones."""
    if src.scans is None and src.storage is None:
        return None
    by_bc = _stored_by_barcode(src.scans or [])
    old_cars: Mapping[str, Sequence[Sidecar]] = src.storage.superseded if src.storage else {}
    current = {e["barcode"]: e["dest"] for e in stored or []}
    out = []
    for b in set(by_bc) | set(old_cars):
        jrows = by_bc.get(b, [])
        if len(jrows) < 2 and not old_cars.get(b):
            continue
        paths = {_norm(str(p)) for r in jrows for p in (r.details.get("superseded") or [])}
        paths |= {_norm(c.image) for c in old_cars.get(b, [])}
        out.append(
            {
                "barcode": b,
                "scans": max(len(jrows), 1 + len(old_cars.get(b, []))),
                "current": current.get(b),
                "superseded": sorted(paths),
            }
        )
    return sorted(out, key=_sort_key)


def _stored_twice(src: Sources) -> Category:
    """Barcodes with more than one current image, by the journal's live images or by storage's sidecars."""
    if src.storage is None:
        return None
    paths: dict[str, set[str]] = defaultdict(set)
    found_by: dict[str, set[str]] = defaultdict(set)
    for b, jrows in _stored_by_barcode(src.scans or []).items():
        live = {_norm(r.dest) for r in jrows if r.dest and src.exists(r.dest)}
        if len(live) > 1:
            paths[b] |= live
            found_by[b].add("journal")
    for b, cars in src.storage.current.items():
        images = {_norm(c.image) for c in cars}
        if len(images) > 1:
            paths[b] |= images
            found_by[b].add("storage")
    return [{"barcode": b, "paths": sorted(paths[b]), "found_by": sorted(found_by[b])} for b in sorted(paths)]
