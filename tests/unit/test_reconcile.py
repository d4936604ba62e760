"""The reconcile categories worked out from plain data: no journal file, no storage, no sheet file."""

from __future__ import annotations

import re
from typing import Any

from scanner_agent.core.humanize import iso_local
from scanner_agent.core.reconcile import (
    CATEGORIES,
    JournalScan,
    RescanRequest,
    Sidecar,
    Sources,
    StoredImages,
    categorize,
    paths_to_check,
)
from scanner_agent.core.sheet_table import SheetTable, parse_table

NOW = 1_780_000_000.0
ROOT = "/storage"
REGEX = re.compile(r"^(?P<barcode>\d{6})")


def sheet(*barcodes: str) -> SheetTable:
    """A parsed sheet with one row per barcode (first data row is row 3)."""
    rows = [["REQUIRED", "REQUIRED", ""], ["Barcode", "Study", "Scanner"]]
    rows += [[b, "Prec01", "Raven"] for b in barcodes]
    return parse_table(rows, source="test sheet", fetched_at=NOW)


def stored(sid: int, barcode: str, dest: str, at: float, **kw: Any) -> JournalScan:
    """A journal row of a stored scan."""
    return JournalScan(
        id=sid,
        path=f"/watch/{barcode}_{sid}.svs",
        state="stored",
        barcode=barcode,
        dest=dest,
        stored_at=at,
        **kw,
    )


def car(barcode: str, image: str, at: str | None = "2026-01-01T00:00:00+00:00") -> Sidecar:
    """A sidecar found in storage."""
    return Sidecar(barcode=barcode, image=image, stored_at=at)


def images(
    current: dict[str, list[Sidecar]], superseded: dict[str, list[Sidecar]] | None = None
) -> StoredImages:
    """Storage's current and superseded sidecars."""
    return StoredImages(current=current, superseded=superseded or {})


def barcodes(entries: list[dict[str, Any]] | None) -> list[str | None]:
    """The barcodes of a known category, in report order."""
    assert entries is not None
    return [e["barcode"] for e in entries]


def test_missing_sources_make_categories_unknown_not_empty() -> None:
    cats = categorize(Sources(sheet=None, scans=None, rescans=None, storage=None), NOW)
    assert list(cats) == list(CATEGORIES)
    assert all(v is None for v in cats.values())


def test_without_sheet_only_the_sheet_categories_are_unknown() -> None:
    cats = categorize(Sources(sheet=None, scans=[], rescans=[], storage=images({})), NOW)
    unknown = {k for k, v in cats.items() if v is None}
    assert unknown == {"scanned_not_in_sheet", "in_sheet_never_scanned"}
    assert all(cats[k] == [] for k in CATEGORIES if k not in unknown)


def test_stored_prefers_the_journal_and_falls_back_to_storage() -> None:
    dest = f"{ROOT}/P/a_100001.svs"
    src = Sources(
        sheet=sheet("100001"),
        scans=[stored(1, "100001", dest, NOW - 60)],
        rescans=[],
        storage=images({"100001": [car("100001", dest)], "100002": [car("100002", f"{ROOT}/P/b.svs")]}),
        present=frozenset({dest}),
    )
    out = {e["barcode"]: e for e in categorize(src, NOW)["stored"] or []}
    assert out["100001"] == {
        "barcode": "100001",
        "dest": dest,
        "stored_at": iso_local(NOW - 60),
        "in_journal": True,
        "in_storage": True,
        "in_sheet": True,
    }
    assert out["100002"]["in_journal"] is False and out["100002"]["in_sheet"] is False
    assert out["100002"]["stored_at"] == "2026-01-01T00:00:00+00:00"  # as the sidecar had it


def test_image_gone_is_missing_from_storage_not_stored() -> None:
    dest = f"{ROOT}/P/a_100011.svs"
    src = Sources(
        sheet=None,
        scans=[stored(1, "100011", dest, NOW)],
        rescans=None,
        storage=images({}),
        present=frozenset(),
    )
    cats = categorize(src, NOW)
    assert cats["stored"] == []
    assert cats["missing_from_storage"] == [
        {"barcode": "100011", "dest": dest, "stored_at": iso_local(NOW), "file": "/watch/100011_1.svs"}
    ]


def test_stored_twice_found_by_journal_and_by_storage() -> None:
    a, b = f"{ROOT}/Run2/x_100007.svs", f"{ROOT}/Run3/x_100007.svs"
    c, d = f"{ROOT}/Run2/x_100008.svs", f"{ROOT}/Run3//x_100008.svs"
    src = Sources(
        sheet=None,
        scans=[stored(1, "100007", a, NOW - 10), stored(2, "100007", b, NOW)],
        rescans=None,
        storage=images(
            {"100007": [car("100007", a), car("100007", b)], "100008": [car("100008", c), car("100008", d)]}
        ),
        present=frozenset({a, b}),
    )
    twice = categorize(src, NOW)["stored_twice"]
    assert twice == [
        {"barcode": "100007", "paths": [a, b], "found_by": ["journal", "storage"]},
        {"barcode": "100008", "paths": [c, d.replace("//", "/")], "found_by": ["storage"]},
    ]


def test_only_the_newest_row_of_a_path_counts_for_failed_and_held() -> None:
    old = JournalScan(id=1, path="/watch/100004.svs", state="failed", barcode="100004", kind="x", updated=NOW)
    new = JournalScan(
        id=2, path="/watch/100004.svs", state="held", barcode="100004", kind="y", held_since=NOW - 5
    )
    cats = categorize(Sources(sheet=sheet("100004"), scans=[old, new], rescans=None, storage=None), NOW)
    assert cats["failed"] == []
    assert cats["held"] == [
        {
            "barcode": "100004",
            "file": "/watch/100004.svs",
            "kind": "y",
            "reason": None,
            "since": iso_local(NOW - 5),
            "in_sheet": True,
        }
    ]


def test_failed_notes_a_later_stored_scan_and_retrying() -> None:
    failed = JournalScan(
        id=1,
        path="/watch/a.svs",
        state="failed",
        barcode="100004",
        attempts=3,
        next_check=NOW + 60,
        updated=NOW,
    )
    src = Sources(
        sheet=None, scans=[failed, stored(2, "100004", "/s/b.svs", NOW)], rescans=None, storage=None
    )
    (entry,) = categorize(src, NOW)["failed"] or []
    assert entry["retrying"] is True and entry["barcode_stored_since"] is True and entry["attempts"] == 3


def test_quarantined_says_whether_its_place_is_still_there() -> None:
    rows = [
        JournalScan(id=1, path="/w/a.svs", state="quarantined", details={"quarantined_to": "/q/a.svs"}),
        JournalScan(id=2, path="/w/b.svs", state="quarantined", details={"quarantined_to": "/q/b.svs"}),
        JournalScan(id=3, path="/w/c.svs", state="quarantined"),
    ]
    src = Sources(sheet=None, scans=rows, rescans=None, storage=None, present=frozenset({"/q/a.svs"}))
    out = {e["file"]: e["where_exists"] for e in categorize(src, NOW)["quarantined"] or []}
    assert out == {"/w/a.svs": True, "/w/b.svs": False, "/w/c.svs": None}


def test_paths_to_check_asks_about_stored_images_only_with_storage() -> None:
    rows = [
        stored(1, "100001", "/s/a.svs", NOW),
        JournalScan(id=2, path="/w/b.svs", state="quarantined", details={"quarantined_to": "/q/b.svs"}),
    ]
    assert paths_to_check(rows, storage=True) == {"/s/a.svs", "/q/b.svs"}
    assert paths_to_check(rows, storage=False) == {"/q/b.svs"}


def test_in_progress_guesses_the_barcode_from_the_file_name() -> None:
    rows = [
        JournalScan(id=1, path="/watch/100010_1.svs", state="ready", ready_at=NOW - 30),
        JournalScan(id=2, path="/watch/odd name.svs", state="seen", first_seen=NOW - 40),
    ]
    src = Sources(sheet=sheet("100010"), scans=rows, rescans=None, storage=None, barcode_regex=REGEX)
    cats = categorize(src, NOW)
    assert [(e["barcode"], e["barcode_from_file_name"]) for e in cats["in_progress"] or []] == [
        ("100010", True),
        (None, False),
    ]
    assert cats["in_sheet_never_scanned"] == []  # the guessed barcode counts as seen


def test_sheet_barcodes_never_scanned_and_scans_not_in_sheet() -> None:
    rows = [JournalScan(id=1, path="/w/900001.svs", state="held", barcode="900001")]
    storage = images(
        {"900002": [car("900002", "/s/x.svs")]}, {"100002": [car("100002", "/s/superseded/y.svs")]}
    )
    src = Sources(sheet=sheet("100001", "100002"), scans=rows, rescans=None, storage=storage)
    cats = categorize(src, NOW)
    assert cats["in_sheet_never_scanned"] == [{"barcode": "100001", "row": 3, "scanner": "Raven"}]
    assert cats["scanned_not_in_sheet"] == [
        {"barcode": "900001", "states": ["held"], "files": ["/w/900001.svs"]},
        {"barcode": "900002", "states": ["in storage"], "files": ["/s/x.svs"]},
    ]


def test_rescanned_joins_the_journal_and_superseded_folders() -> None:
    dest = f"{ROOT}/P/a_100002.svs"
    old_image = f"{ROOT}/P/superseded/a_100002__1.svs"
    rows = [
        stored(1, "100002", dest, NOW - 100),
        stored(2, "100002", dest, NOW, details={"superseded": [f"{ROOT}/P/./superseded/a_100002__1.svs"]}),
    ]
    src = Sources(
        sheet=None,
        scans=rows,
        rescans=None,
        storage=images({"100002": [car("100002", dest)]}, {"100002": [car("100002", old_image)]}),
        present=frozenset({dest}),
    )
    assert categorize(src, NOW)["rescanned"] == [
        {"barcode": "100002", "scans": 2, "current": dest, "superseded": [old_image]}
    ]


def test_missing_rescans_overdue_against_now() -> None:
    rescans = [
        RescanRequest(barcode="100009", requested_at=NOW - 7200, requested_by="sheet", deadline=NOW - 1),
        RescanRequest(
            barcode="100001", requested_at=NOW, requested_by="qc", deadline=NOW + 3600, alerted_at=NOW
        ),
    ]
    out = categorize(Sources(sheet=None, scans=None, rescans=rescans, storage=None), NOW)["missing_rescans"]
    assert [(e["barcode"], e["overdue"], e["alerted"], e["in_sheet"]) for e in out or []] == [
        ("100001", False, True, None),
        ("100009", True, False, None),
    ]
    assert (out or [])[1]["deadline"] == iso_local(NOW - 1)
