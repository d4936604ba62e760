"""``scanner-agent reconcile``: the sheet, the journal and storage compared barcode by barcode.

The lab manager's weekly report. This module reads the three sources once, each of which may be
missing (sheet unreachable, journal not created yet, storage share not mounted), into plain data;
:mod:`scanner_agent.core.reconcile` sorts the barcodes into categories; ``render_reconcile`` turns
the JSON-able report into text for an e-mail. The report says which source is missing and still
gives everything the others can tell.

Storage is read from the sidecar JSON files ``place_scan`` writes beside every image
(``<stem>.json`` with ``barcode``, ``name``, ``stored_at``), and from ``superseded/`` folders
(sidecars with ``superseded_as``).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scanner_agent.config import AgentConfig
from scanner_agent.core.barcode import compile_barcode_regex
from scanner_agent.core.humanize import iso_local, short_time
from scanner_agent.core.reconcile import (
    CATEGORIES,
    JournalScan,
    RescanRequest,
    Sources,
    StoredImages,
    categorize,
    paths_to_check,
)
from scanner_agent.core.sheet_table import SheetTable
from scanner_agent.journal import Journal, ScanRecord
from scanner_agent.reports.stored_sidecars import StorageScan, scan_storage
from scanner_agent.sheets import MetadataSource

__all__ = ["CATEGORIES", "TITLES", "reconcile", "render_reconcile", "scan_storage"]

log = logging.getLogger(__name__)

#: Section heading and what it means, for the text report.
TITLES = {
    "stored_twice": ("Stored twice", "two current images of one barcode; keep one, move the other away"),
    "missing_from_storage": (
        "Missing from storage",
        "stored according to the journal, but the image is gone",
    ),
    "failed": ("Failed", "need a person, or are being retried"),
    "quarantined": ("Quarantined", "moved aside, not stored"),
    "held": ("Held", "waiting for the sheet"),
    "missing_rescans": ("Rescans not received", "requested, no new scan yet"),
    "scanned_not_in_sheet": ("Scanned, not in the sheet", "no sheet row has this barcode"),
    "in_sheet_never_scanned": ("In the sheet, never scanned", "no scan of this barcode anywhere"),
    "rescanned": ("Rescanned", "scanned more than once; earlier images kept in superseded/"),
    "in_progress": ("In progress", "found on the scanner, not finished yet"),
    "stored": ("Stored", "current image in storage"),
}


# --------------------------------------------------------------------------- reading the sources


def _read_sheet(cfg: AgentConfig, sheet: MetadataSource | None) -> tuple[SheetTable | None, dict[str, Any]]:
    """The sheet's table (``None`` when it cannot be read) and the report's ``sheet`` section."""
    info: dict[str, Any] = {
        "source": None,
        "read_at": None,
        "available": False,
        "error": None,
        "warning": None,
        "barcodes": None,
        "problems": [],
    }
    try:
        if sheet is None:
            from scanner_agent.service.bootstrap import build_sheet

            sheet = build_sheet(cfg)
        info["source"] = sheet.describe()
        table = sheet.table()
    except Exception as exc:
        info["source"] = info["source"] or str(cfg.sheet.csv or f"Google Sheet {cfg.sheet.spreadsheet_key}")
        info["error"] = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        log.warning("reconcile: sheet unavailable: %s", info["error"])
        return None, info
    info.update(
        source=table.source,
        read_at=iso_local(table.fetched_at),
        available=True,
        barcodes=len(table.rows),
        problems=list(table.problems),
    )
    # A Google source serves its last good copy while Google is down: say the copy may be old.
    last_error = getattr(sheet, "last_error", None)
    if isinstance(last_error, str) and last_error:
        info["warning"] = (
            f"latest read failed, using the copy read {short_time(info['read_at'])}: {last_error}"
        )
    return table, info


def _journal_scan(r: ScanRecord) -> JournalScan:
    """A journal record as the plain data the categories read."""
    return JournalScan(
        id=r.id,
        path=r.path,
        state=r.state,
        barcode=r.barcode,
        kind=r.kind,
        reason=r.reason,
        dest=r.dest,
        attempts=r.attempts,
        first_seen=r.first_seen,
        updated=r.updated,
        ready_at=r.ready_at,
        stored_at=r.stored_at,
        held_since=r.held_since,
        next_check=r.next_check,
        details=r.details,
    )


def _rescan_request(r: dict[str, Any]) -> RescanRequest:
    """A journal ``rescans`` row as the plain data the categories read."""
    return RescanRequest(
        barcode=r["barcode"],
        requested_at=r["requested_at"],
        requested_by=r["requested_by"],
        deadline=r["deadline"],
        reason=r.get("reason"),
        alerted_at=r.get("alerted_at"),
    )


def _read_journal(
    cfg: AgentConfig, journal: Journal | None
) -> tuple[list[JournalScan] | None, list[RescanRequest] | None, dict[str, Any]]:
    """The journal's scans and open rescans (``None`` when unreadable) and the ``journal`` section.

    A journal passed in is left open; one opened here is closed, and one that does not exist is
    not created.
    """
    path = journal.path if journal is not None else cfg.journal.path
    info: dict[str, Any] = {"path": str(path), "available": False, "error": None, "scans": None}
    own = journal is None
    if own and not Path(path).exists():
        # Opening would create an empty journal: a typo in the path would then read as "nothing happened".
        info["error"] = f"journal {path} does not exist (has the agent run with this configuration?)"
        return None, None, info
    try:
        j = journal if journal is not None else Journal(path)
    except Exception as exc:
        info["error"] = f"cannot open journal {path}: {exc}"
        return None, None, info
    try:
        rows, rescans = j.all(), j.open_rescans()
    except Exception as exc:
        info["error"] = f"cannot read journal {path}: {exc}"
        return None, None, info
    finally:
        if own:
            j.close()
    info.update(available=True, scans=len(rows))
    return [_journal_scan(r) for r in rows], [_rescan_request(r) for r in rescans], info


def _read_storage(root: Path) -> tuple[StorageScan | None, dict[str, Any]]:
    """Storage's sidecars (``None`` when the root is not a folder) and the ``storage`` section."""
    info: dict[str, Any] = {
        "root": str(root),
        "available": False,
        "error": None,
        "images": None,
        "problems": [],
    }
    if not root.is_dir():
        info["error"] = f"storage root {root} is not a readable folder (share not mounted?)"
        return None, info
    storage = scan_storage(root)
    info.update(available=True, images=storage.images, problems=sorted(storage.problems))
    return storage, info


# --------------------------------------------------------------------------- the report


def reconcile(
    cfg: AgentConfig, *, sheet: MetadataSource | None = None, journal: Journal | None = None
) -> dict[str, Any]:
    """Compare sheet, journal and storage per barcode. Never raises for a missing source.

    ``sheet`` and ``journal`` default to the ones ``cfg`` names; a journal passed in is left open.
    The result is plain JSON-able data: where each source came from, a count per category (``None``
    when a missing source makes it unknowable), and each category's entries.
    """
    now = time.time()
    table, sheet_info = _read_sheet(cfg, sheet)
    scans, rescans, journal_info = _read_journal(cfg, journal)
    storage, storage_info = _read_storage(Path(cfg.storage.root))
    try:
        regex: re.Pattern[str] | None = compile_barcode_regex(cfg.scanner.barcode_regex)
    except Exception:
        regex = None
    # Each path is asked once per report: several categories ask, and shares are slow.
    present = frozenset(
        p for p in paths_to_check(scans or [], storage=storage is not None) if os.path.lexists(p)
    )
    src = Sources(
        sheet=table,
        scans=scans,
        rescans=rescans,
        storage=StoredImages(current=storage.current, superseded=storage.superseded) if storage else None,
        present=present,
        barcode_regex=regex,
    )
    cats = categorize(src, now)
    return {
        "scanner": cfg.scanner.name,
        "generated_at": iso_local(now),
        "storage_root": str(cfg.storage.root),
        "sheet": sheet_info,
        "journal": journal_info,
        "storage": storage_info,
        "summary": {k: (None if v is None else len(v)) for k, v in cats.items()},
        **cats,
    }


# --------------------------------------------------------------------------- rendering


def _rel(path: Any, root: str) -> str:
    """Paths under the storage root are shown relative to it: shorter lines in the e-mail."""
    if not path:
        return "?"
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _name(path: Any) -> str:
    """The file name of ``path``, or ``?``."""
    return Path(path).name if path else "?"


def _line_stored(e: dict[str, Any], root: str) -> str:
    """A stored image, and whether the journal and the sheet know it."""
    extra = "" if e.get("in_journal", True) else "  [not in this agent's journal]"
    if e.get("in_sheet") is False:
        extra += "  [not in the sheet]"
    return f"{_rel(e['dest'], root)}  (stored {short_time(e['stored_at'])}){extra}"


def _line_held(e: dict[str, Any], root: str) -> str:
    """A held scan: since when and why."""
    return f"{_name(e['file'])}  held since {short_time(e['since'])}  {e['kind']}: {e['reason']}"


def _line_failed(e: dict[str, Any], root: str) -> str:
    """A failed scan: why, since when, and whether it is retried."""
    notes = ["retrying" if e["retrying"] else "waiting for a person"]
    if e["barcode_stored_since"]:
        notes.append("a later scan of this barcode is stored")
    since = short_time(e["since"])
    return f"{_name(e['file'])}  {e['kind']}: {e['reason']}  (since {since}; {'; '.join(notes)})"


def _line_quarantined(e: dict[str, Any], root: str) -> str:
    """A quarantined scan: where it went and why."""
    where = e["where"] or "(not moved)"
    gone = "  [no longer there]" if e["where_exists"] is False else ""
    return f"{_name(e['file'])} -> {where}{gone}  {e['kind']}: {e['reason']}"


def _line_missing_rescan(e: dict[str, Any], root: str) -> str:
    """An open rescan request: due or overdue, by whom and why."""
    due = f"OVERDUE since {short_time(e['deadline'])}" if e["overdue"] else f"due {short_time(e['deadline'])}"
    on = short_time(e["requested_at"])
    return f"{due}; requested by {e['requested_by']} on {on}: {e['reason'] or 'no reason given'}"


def _line_not_in_sheet(e: dict[str, Any], root: str) -> str:
    """A barcode the sheet lacks: its states and files."""
    return f"{', '.join(e['states'])}: {', '.join(_rel(f, root) for f in e['files'])}"


def _line_never_scanned(e: dict[str, Any], root: str) -> str:
    """A sheet row never scanned, with its scanner if the sheet says."""
    return f"sheet row {e['row']}" + (f"  (scanner: {e['scanner']})" if e["scanner"] else "")


def _line_rescanned(e: dict[str, Any], root: str) -> str:
    """A rescanned barcode: how many scans, the current image and the superseded ones."""
    old = ", ".join(_rel(p, root) for p in e["superseded"]) or "none in superseded/"
    current = _rel(e["current"], root) if e["current"] else "(none)"
    return f"{e['scans']} scans; current {current}; superseded: {old}"


def _line_stored_twice(e: dict[str, Any], root: str) -> str:
    """The current images of one barcode, and which source found them."""
    return " | ".join(_rel(p, root) for p in e["paths"]) + f"  (found in {' and '.join(e['found_by'])})"


def _line_missing(e: dict[str, Any], root: str) -> str:
    """A stored image that is gone."""
    return f"{_rel(e['dest'], root)}  (stored {short_time(e['stored_at'])}) is not there any more"


def _line_in_progress(e: dict[str, Any], root: str) -> str:
    """A scan not finished yet: its state and since when."""
    hint = " (from the file name)" if e["barcode_from_file_name"] else ""
    return f"{_name(e['file'])}{hint}  {e['state']} since {short_time(e['since'])}"


_LINES: dict[str, Callable[[dict[str, Any], str], str]] = {
    "stored": _line_stored,
    "held": _line_held,
    "failed": _line_failed,
    "quarantined": _line_quarantined,
    "missing_rescans": _line_missing_rescan,
    "scanned_not_in_sheet": _line_not_in_sheet,
    "in_sheet_never_scanned": _line_never_scanned,
    "rescanned": _line_rescanned,
    "stored_twice": _line_stored_twice,
    "missing_from_storage": _line_missing,
    "in_progress": _line_in_progress,
}


def _header(report: dict[str, Any]) -> list[str]:
    """Where each source came from, or why it is missing."""
    sh, jr, st = report["sheet"], report["journal"], report["storage"]
    out = [f"Reconcile report for scanner {report['scanner']}, {short_time(report['generated_at'])}", ""]
    if sh["available"]:
        out.append(f"Sheet:   {sh['source']} (read {short_time(sh['read_at'])}, {sh['barcodes']} barcodes)")
        if sh.get("warning"):
            out.append(f"         warning: {sh['warning']}")
    else:
        out.append(f"Sheet:   MISSING from this report: {sh['error']}")
        out.append("         (in_sheet_never_scanned and scanned_not_in_sheet could not be worked out)")
    out.append(
        f"Journal: {jr['path']} ({jr['scans']} scans)"
        if jr["available"]
        else f"Journal: MISSING from this report: {jr['error']}"
    )
    out.append(
        f"Storage: {st['root']} ({st['images']} current images)"
        if st["available"]
        else f"Storage: MISSING from this report: {st['error']}"
    )
    return out


def _summary(report: dict[str, Any]) -> list[str]:
    """The count per category, ``unknown`` where a missing source makes it unknowable."""
    width = max(len(k) for k in CATEGORIES)
    out = ["", "Summary"]
    for k in CATEGORIES:
        n = report["summary"].get(k)
        out.append(f"  {k:<{width}}  {'unknown' if n is None else n}")
    return out


def _problems(title: str, problems: list[str]) -> list[str]:
    """A titled list of problems, or nothing when there are none."""
    if not problems:
        return []
    return ["", f"{title} ({len(problems)})"] + [f"  {p}" for p in problems]


def render_reconcile(report: dict[str, Any]) -> str:
    """The report as plain text for an e-mail: header, summary, then one section per non-empty category."""
    root = report["storage_root"]
    out = _header(report) + _summary(report)
    for key in CATEGORIES:
        entries = report.get(key)
        if not entries:
            continue
        heading, meaning = TITLES[key]
        out += ["", f"{heading} ({len(entries)}): {meaning}"]
        width = max(len(e["barcode"] or "(no barcode)") for e in entries)
        for e in entries:
            out.append(f"  {(e['barcode'] or '(no barcode)'):<{width}}  {_LINES[key](e, root)}")
    out += _problems("Sheet problems", report["sheet"].get("problems") or [])
    out += _problems("Storage problems", report["storage"].get("problems") or [])
    return "\n".join(out) + "\n"
