"""``scanner-agent reconcile``: the sheet, the journal and storage compared barcode by barcode.

The lab manager's weekly report. Each of the three sources is read once and may be missing
(sheet unreachable, journal not created yet, storage share not mounted): the report then says
which part is missing and still gives everything the other sources can tell. A category that a
missing source makes unknowable is ``None`` (not an empty list), so "none found" and "could not
look" never read the same.

Storage is read from the sidecar JSON files ``transfer.place_scan`` writes beside every image
(``<stem>.json`` with ``barcode``, ``name``, ``stored_at``), and from ``superseded/`` folders
(sidecars with ``superseded_as``). The report is plain JSON-able data; ``render_reconcile``
turns it into text for an e-mail.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from scanner_agent.config import AgentConfig
from scanner_agent.core.barcode import barcode_from_name, compile_barcode_regex
from scanner_agent.core.sheet_table import MetadataSource, SheetTable
from scanner_agent.journal import Journal, ScanRecord
from scanner_agent.storage import SUPERSEDED_DIRNAME

log = logging.getLogger(__name__)

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

_IN_PROGRESS_STATES = ("seen", "ready", "processing")


# --------------------------------------------------------------------------- time helpers


def _iso(ts: float | None) -> str | None:
    """Local time with its UTC offset: readable in the e-mail, unambiguous in the JSON."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def _iso_from_text(text: Any) -> str | None:
    """A sidecar's ISO timestamp (UTC) in the same local form as the journal's times."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text).astimezone().isoformat(timespec="seconds")
    except ValueError:
        return text  # keep what was written rather than drop it


def _short_time(iso: str | None) -> str:
    if not iso:
        return "unknown time"
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return iso


# --------------------------------------------------------------------------- storage


@dataclass(frozen=True)
class _Sidecar:
    barcode: str
    sidecar: Path
    image: Path
    stored_at: str | None
    superseded: bool


@dataclass
class _Storage:
    root: Path
    current: dict[str, list[_Sidecar]] = field(default_factory=lambda: defaultdict(list))
    superseded: dict[str, list[_Sidecar]] = field(default_factory=lambda: defaultdict(list))
    problems: list[str] = field(default_factory=list)

    @property
    def images(self) -> int:
        return sum(len(v) for v in self.current.values())


def _read_sidecar(path: Path, superseded: bool, problems: list[str]) -> _Sidecar | None:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        problems.append(f"{path}: unreadable JSON ({exc})")
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("barcode"), str) or not meta["barcode"].strip():
        return None  # not one of our sidecars (some other tool's JSON): not ours to judge
    name = meta.get("superseded_as") if superseded else meta.get("name")
    image = path.parent / name if isinstance(name, str) and name else path.with_suffix("")
    if not os.path.lexists(image):
        # A record without its image is not a stored copy: it must not count as one (stored twice).
        problems.append(
            f"{path}: sidecar of barcode {meta['barcode'].strip()} but its image {image.name} is missing"
        )
        return None
    return _Sidecar(
        barcode=meta["barcode"].strip(),
        sidecar=path,
        image=image,
        stored_at=_iso_from_text(meta.get("stored_at")),
        superseded=superseded,
    )


def scan_storage(root: Path) -> _Storage:
    """Every sidecar under ``root``, grouped by barcode into current and superseded images.

    Dot-folders (``.incoming`` partials, but also NFS ``.snapshot`` copies that would make every
    image look stored twice) are skipped, and so are the images' own folders (MIRAX data,
    DICOM series), which hold no sidecars and can hold thousands of files.
    """
    found = _Storage(root=root)

    def on_error(exc: OSError) -> None:
        found.problems.append(f"{exc.filename}: cannot be read ({exc.strerror})")

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
        here = Path(dirpath)
        in_superseded = here.name == SUPERSEDED_DIRNAME and here != root
        stems: set[str] = set()
        for fn in sorted(filenames):
            if not fn.endswith(".json"):
                continue
            car = _read_sidecar(here / fn, in_superseded, found.problems)
            if car is None:
                continue
            stems.add(fn[: -len(".json")])
            (found.superseded if in_superseded else found.current)[car.barcode].append(car)
        if in_superseded:
            dirnames[:] = []  # only superseded images' data folders below
        else:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in stems)
    return found


# --------------------------------------------------------------------------- reading the sources


@dataclass
class _Sources:
    sheet: SheetTable | None
    rows: list[ScanRecord] | None
    rescans: list[dict[str, Any]] | None
    storage: _Storage | None
    barcode_regex: re.Pattern[str] | None
    _exists: dict[str, bool] = field(default_factory=dict)

    def exists(self, path: str | Path | None) -> bool:
        """Whether ``path`` is there, asked once per report (several categories ask; shares are slow)."""
        if not path:
            return False
        key = str(path)
        if key not in self._exists:
            self._exists[key] = os.path.lexists(key)
        return self._exists[key]


def _read_sheet(cfg: AgentConfig, sheet: MetadataSource | None) -> tuple[SheetTable | None, dict[str, Any]]:
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
        read_at=_iso(table.fetched_at),
        available=True,
        barcodes=len(table.rows),
        problems=list(table.problems),
    )
    # A Google source serves its last good copy while Google is down: say the copy may be old.
    last_error = getattr(sheet, "last_error", None)
    if isinstance(last_error, str) and last_error:
        info["warning"] = (
            f"latest read failed, using the copy read {_short_time(info['read_at'])}: {last_error}"
        )
    return table, info


def _read_journal(
    cfg: AgentConfig, journal: Journal | None
) -> tuple[list[ScanRecord] | None, list[dict[str, Any]] | None, dict[str, Any]]:
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
    return rows, rescans, info


def _read_storage(root: Path) -> tuple[_Storage | None, dict[str, Any]]:
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


# --------------------------------------------------------------------------- journal views


def _latest_per_path(rows: Iterable[ScanRecord]) -> set[int]:
    """Ids of the newest row for each path: older rows at a path were replaced by a rewrite."""
    newest: dict[str, int] = {}
    for r in rows:
        newest[r.path] = max(newest.get(r.path, r.id), r.id)
    return set(newest.values())


def _stored_by_barcode(rows: Iterable[ScanRecord]) -> dict[str, list[ScanRecord]]:
    out: dict[str, list[ScanRecord]] = defaultdict(list)
    for r in rows:
        if r.state == "stored" and r.barcode:
            out[r.barcode].append(r)
    for v in out.values():
        v.sort(key=lambda r: (r.stored_at or 0, r.id))
    return out


def _norm(path: str | Path) -> str:
    return os.path.normpath(str(path))


def _sort_key(entry: dict[str, Any]) -> tuple[bool, str, str]:
    b = entry.get("barcode")
    return (b is None, b or "", str(entry.get("file") or ""))


# --------------------------------------------------------------------------- categories


def _stored(src: _Sources) -> list[dict[str, Any]] | None:
    if src.rows is None and src.storage is None:
        return None
    by_bc = _stored_by_barcode(src.rows or [])
    barcodes = set(by_bc) | (set(src.storage.current) if src.storage else set())
    out = []
    for b in barcodes:
        jrows = by_bc.get(b, [])
        live = [r for r in jrows if src.exists(r.dest)] if src.storage else jrows
        cars = src.storage.current.get(b, []) if src.storage else []
        if live:
            dest, at = live[-1].dest, _iso(live[-1].stored_at)
        elif cars:
            car = max(cars, key=lambda c: c.stored_at or "")
            dest, at = str(car.image), car.stored_at
        else:
            continue  # the journal says stored but the image is gone: missing_from_storage
        out.append(
            {
                "barcode": b,
                "dest": dest,
                "stored_at": at,
                "in_journal": bool(jrows),
                "in_storage": bool(live or cars) if src.storage else None,
                "in_sheet": (b in src.sheet.rows) if src.sheet else None,
            }
        )
    return sorted(out, key=_sort_key)


def _missing_from_storage(src: _Sources) -> list[dict[str, Any]] | None:
    if src.rows is None or src.storage is None:
        return None
    out = []
    for b, jrows in _stored_by_barcode(src.rows).items():
        if any(src.exists(r.dest) for r in jrows) or src.storage.current.get(b):
            continue
        last = jrows[-1]
        out.append({"barcode": b, "dest": last.dest, "stored_at": _iso(last.stored_at), "file": last.path})
    return sorted(out, key=_sort_key)


def _rows_in(src: _Sources, state: str) -> list[ScanRecord]:
    assert src.rows is not None
    latest = _latest_per_path(src.rows)
    return [r for r in src.rows if r.state == state and r.id in latest]


def _held(src: _Sources) -> list[dict[str, Any]] | None:
    if src.rows is None:
        return None
    return sorted(
        (
            {
                "barcode": r.barcode,
                "file": r.path,
                "kind": r.kind,
                "reason": r.reason,
                "since": _iso(r.held_since or r.updated),
                "in_sheet": (r.barcode in src.sheet.rows) if src.sheet and r.barcode else None,
            }
            for r in _rows_in(src, "held")
        ),
        key=_sort_key,
    )


def _failed(src: _Sources) -> list[dict[str, Any]] | None:
    if src.rows is None:
        return None
    stored = _stored_by_barcode(src.rows)
    return sorted(
        (
            {
                "barcode": r.barcode,
                "file": r.path,
                "kind": r.kind,
                "reason": r.reason,
                "since": _iso(r.updated),
                "attempts": r.attempts,
                "retrying": r.next_check is not None,
                # a later scan of the same barcode was stored: this one is only disk to free
                "barcode_stored_since": bool(r.barcode and r.barcode in stored),
            }
            for r in _rows_in(src, "failed")
        ),
        key=_sort_key,
    )


def _quarantined(src: _Sources) -> list[dict[str, Any]] | None:
    if src.rows is None:
        return None
    out = []
    for r in src.rows:  # every quarantined scan, even if the scanner later rewrote its path
        if r.state != "quarantined":
            continue
        where = r.details.get("quarantined_to")
        out.append(
            {
                "barcode": r.barcode,
                "file": r.path,
                "kind": r.kind,
                "reason": r.reason,
                "since": _iso(r.updated),
                "where": where,
                "where_exists": src.exists(where) if where else None,
            }
        )
    return sorted(out, key=_sort_key)


def _in_progress(src: _Sources) -> list[dict[str, Any]] | None:
    if src.rows is None:
        return None
    out = []
    latest = _latest_per_path(src.rows)
    for r in src.rows:
        if r.state not in _IN_PROGRESS_STATES or r.id not in latest:
            continue
        guessed = None if r.barcode else _guess_barcode(r.path, src.barcode_regex)
        out.append(
            {
                "barcode": r.barcode or guessed,
                "barcode_from_file_name": guessed is not None,
                "file": r.path,
                "state": r.state,
                "since": _iso(r.ready_at or r.first_seen),
            }
        )
    return sorted(out, key=_sort_key)


def _guess_barcode(path: str, regex: re.Pattern[str] | None) -> str | None:
    """The barcode the flow will most likely find (it reads the file name first); only a hint."""
    if regex is None:
        return None
    try:
        return barcode_from_name(Path(path).name, regex)
    except ValueError:
        return None


def _missing_rescans(src: _Sources, now: float) -> list[dict[str, Any]] | None:
    if src.rescans is None:
        return None
    out = [
        {
            "barcode": r["barcode"],
            "requested_at": _iso(r["requested_at"]),
            "requested_by": r["requested_by"],
            "reason": r.get("reason"),
            "deadline": _iso(r["deadline"]),
            "overdue": r["deadline"] <= now,
            "alerted": r.get("alerted_at") is not None,
            "in_sheet": (r["barcode"] in src.sheet.rows) if src.sheet else None,
        }
        for r in src.rescans
    ]
    return sorted(out, key=_sort_key)


def _scanned_not_in_sheet(src: _Sources) -> list[dict[str, Any]] | None:
    if src.sheet is None or (src.rows is None and src.storage is None):
        return None
    states: dict[str, set[str]] = defaultdict(set)
    files: dict[str, set[str]] = defaultdict(set)
    for r in src.rows or []:
        if r.barcode and r.barcode not in src.sheet.rows:
            states[r.barcode].add(r.state)
            files[r.barcode].add(r.path)
    for b, cars in src.storage.current.items() if src.storage else ():
        if b not in src.sheet.rows:
            states[b].add("in storage")
            files[b].update(str(c.image) for c in cars)
    return [{"barcode": b, "states": sorted(states[b]), "files": sorted(files[b])} for b in sorted(states)]


def _in_sheet_never_scanned(src: _Sources) -> list[dict[str, Any]] | None:
    # Without the journal every held or failed barcode would wrongly read as never scanned.
    if src.sheet is None or src.rows is None:
        return None
    seen = {r.barcode for r in src.rows if r.barcode}
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


def _rescanned(src: _Sources, stored: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if src.rows is None and src.storage is None:
        return None
    by_bc = _stored_by_barcode(src.rows or [])
    old_cars = src.storage.superseded if src.storage else {}
    current = {e["barcode"]: e["dest"] for e in stored or []}
    out = []
    for b in set(by_bc) | set(old_cars):
        jrows = by_bc.get(b, [])
        if len(jrows) < 2 and not old_cars.get(b):
            continue
        paths = {_norm(p) for r in jrows for p in (r.details.get("superseded") or [])}
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


def _stored_twice(src: _Sources) -> list[dict[str, Any]] | None:
    if src.storage is None:
        return None
    paths: dict[str, set[str]] = defaultdict(set)
    found_by: dict[str, set[str]] = defaultdict(set)
    for b, jrows in _stored_by_barcode(src.rows or []).items():
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


# --------------------------------------------------------------------------- the report


def reconcile(
    cfg: AgentConfig, *, sheet: MetadataSource | None = None, journal: Journal | None = None
) -> dict[str, Any]:
    """Compare sheet, journal and storage per barcode. Never raises for a missing source.

    ``sheet`` and ``journal`` default to the ones ``cfg`` names; a journal passed in is left open.
    """
    now = time.time()
    table, sheet_info = _read_sheet(cfg, sheet)
    rows, rescans, journal_info = _read_journal(cfg, journal)
    storage, storage_info = _read_storage(Path(cfg.storage.root))
    try:
        regex: re.Pattern[str] | None = compile_barcode_regex(cfg.scanner.barcode_regex)
    except Exception:
        regex = None
    src = _Sources(sheet=table, rows=rows, rescans=rescans, storage=storage, barcode_regex=regex)

    stored = _stored(src)
    cats: dict[str, list[dict[str, Any]] | None] = {
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
    return {
        "scanner": cfg.scanner.name,
        "generated_at": _iso(now),
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
    return Path(path).name if path else "?"


def _line_stored(e: dict[str, Any], root: str) -> str:
    extra = "" if e.get("in_journal", True) else "  [not in this agent's journal]"
    if e.get("in_sheet") is False:
        extra += "  [not in the sheet]"
    return f"{_rel(e['dest'], root)}  (stored {_short_time(e['stored_at'])}){extra}"


def _line_held(e: dict[str, Any], root: str) -> str:
    return f"{_name(e['file'])}  held since {_short_time(e['since'])}  {e['kind']}: {e['reason']}"


def _line_failed(e: dict[str, Any], root: str) -> str:
    notes = ["retrying" if e["retrying"] else "waiting for a person"]
    if e["barcode_stored_since"]:
        notes.append("a later scan of this barcode is stored")
    return f"{_name(e['file'])}  {e['kind']}: {e['reason']}  (since {_short_time(e['since'])}; {'; '.join(notes)})"


def _line_quarantined(e: dict[str, Any], root: str) -> str:
    where = e["where"] or "(not moved)"
    gone = "  [no longer there]" if e["where_exists"] is False else ""
    return f"{_name(e['file'])} -> {where}{gone}  {e['kind']}: {e['reason']}"


def _line_missing_rescan(e: dict[str, Any], root: str) -> str:
    due = (
        f"OVERDUE since {_short_time(e['deadline'])}" if e["overdue"] else f"due {_short_time(e['deadline'])}"
    )
    return f"{due}; requested by {e['requested_by']} on {_short_time(e['requested_at'])}: {e['reason'] or 'no reason given'}"


def _line_not_in_sheet(e: dict[str, Any], root: str) -> str:
    return f"{', '.join(e['states'])}: {', '.join(_rel(f, root) for f in e['files'])}"


def _line_never_scanned(e: dict[str, Any], root: str) -> str:
    return f"sheet row {e['row']}" + (f"  (scanner: {e['scanner']})" if e["scanner"] else "")


def _line_rescanned(e: dict[str, Any], root: str) -> str:
    old = ", ".join(_rel(p, root) for p in e["superseded"]) or "none in superseded/"
    return f"{e['scans']} scans; current {_rel(e['current'], root) if e['current'] else '(none)'}; superseded: {old}"


def _line_stored_twice(e: dict[str, Any], root: str) -> str:
    return " | ".join(_rel(p, root) for p in e["paths"]) + f"  (found in {' and '.join(e['found_by'])})"


def _line_missing(e: dict[str, Any], root: str) -> str:
    return f"{_rel(e['dest'], root)}  (stored {_short_time(e['stored_at'])}) is not there any more"


def _line_in_progress(e: dict[str, Any], root: str) -> str:
    hint = " (from the file name)" if e["barcode_from_file_name"] else ""
    return f"{_name(e['file'])}{hint}  {e['state']} since {_short_time(e['since'])}"


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
    sh, jr, st = report["sheet"], report["journal"], report["storage"]
    out = [f"Reconcile report for scanner {report['scanner']}, {_short_time(report['generated_at'])}", ""]
    if sh["available"]:
        out.append(f"Sheet:   {sh['source']} (read {_short_time(sh['read_at'])}, {sh['barcodes']} barcodes)")
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
    width = max(len(k) for k in CATEGORIES)
    out = ["", "Summary"]
    for k in CATEGORIES:
        n = report["summary"].get(k)
        out.append(f"  {k:<{width}}  {'unknown' if n is None else n}")
    return out


def _problems(title: str, problems: list[str]) -> list[str]:
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
