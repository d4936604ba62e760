"""Tests for ``scanner-agent reconcile`` on a real journal, real storage written by ``place_scan``,
a real CSV sheet and a configuration read by ``load_config``."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from scanner_agent import storage
from scanner_agent.cli import main as cli_main
from scanner_agent.config import AgentConfig, load_config
from scanner_agent.journal import Journal
from scanner_agent.reports.reconcile import CATEGORIES, reconcile, render_reconcile
from scanner_agent.scanunit import ScanUnit
from scanner_agent.sheets import CsvSource

SHEET = """\
Include in Name?,REQUIRED,REQUIRED,REQUIRED,REQUIRED,,,
Barcode,Study,Experiment,Panel,Scanner,Scan Date,Rescan Requested,Notes
100001,Prec01,Run2,P1,Cardinal,,,
100002,Prec01,Run2,P1,Cardinal,,,
100003,Prec01,,P1,Cardinal,,,experiment not filled in yet
100004,Prec01,Run2,P1,Cardinal,,,
100005,Prec01,Run2,P1,Cardinal,,,
100006,Prec01,Run3,P2,Raven,,,
100007,Prec01,Run2,P1,Cardinal,,,
100008,Prec01,Run2,P1,Cardinal,,,
100009,Prec01,Run2,P1,Cardinal,,yes,blurry
100010,Prec01,Run2,P1,Cardinal,,,
100011,Prec01,Run2,P1,Cardinal,,,
 ,Prec01,Run9,P9,Cardinal,,,row without a barcode
"""

#: What the scenario puts in each category (barcodes; None = a scan without a barcode).
EXPECTED: dict[str, list[str]] = {
    "stored": ["100001", "100002", "100007", "100008", "100009"],
    "held": ["100003", "900001"],
    "failed": ["100004"],
    "quarantined": ["100005"],
    "in_sheet_never_scanned": ["100006"],
    "scanned_not_in_sheet": ["900001"],
    "rescanned": ["100002", "100007"],  # 100007: scanned twice, but nothing superseded (stored twice)
    "stored_twice": ["100007", "100008"],
    "missing_rescans": ["100001", "100009"],
    "missing_from_storage": ["100011"],
    "in_progress": ["100010"],
}


@dataclass
class Lab:
    """The scenario's folders, configuration and journal, with helpers that act as the flow does."""

    root: Path
    cfg: AgentConfig
    config_file: Path
    journal: Journal
    counter: int = 0
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def storage(self) -> Path:
        """The storage root."""
        return self.cfg.storage.root

    def scan_file(self, barcode: str, data: bytes | None = None) -> ScanUnit:
        """A small real file on the 'scanner' (content differs per scan, like a real rescan)."""
        self.counter += 1
        path = self.cfg.scanner.watch / f"{barcode}_{self.counter}.svs"
        path.write_bytes(data if data is not None else f"slide {barcode} scan {self.counter}".encode() * 50)
        return ScanUnit.from_path(path)

    def place(
        self,
        barcode: str,
        folder: str = "Prec01/Run2",
        *,
        supersede: Path | None = None,
        prefix: str = "Prec01_Run2_P1",
    ) -> tuple[ScanUnit, storage.TransferResult]:
        """Place a new scan in storage as ``place_scan`` does, without recording it in the journal."""
        unit = self.scan_file(barcode)
        result = storage.place_scan(
            unit,
            self.storage / folder,
            f"{prefix}_{barcode}.svs",
            sidecar={"barcode": barcode, "scanner": "cardinal"},
            supersede=supersede,
            storage_root=self.storage,
            margin=0,
        )
        return unit, result

    def record(self, unit: ScanUnit) -> int:
        """Record the scan ready in the journal; its row id."""
        st = unit.primary.stat()
        rec, _ = self.journal.record_ready(str(unit.primary), st.st_size, st.st_mtime_ns)
        return rec.id

    def store(
        self,
        barcode: str,
        folder: str = "Prec01/Run2",
        *,
        supersede: Path | None = None,
        prefix: str = "Prec01_Run2_P1",
    ) -> tuple[int, storage.TransferResult]:
        """What the flow does for a stored scan: place it, then record it stored in the journal."""
        unit, result = self.place(barcode, folder, supersede=supersede, prefix=prefix)
        sid = self.record(unit)
        self.journal.transition(sid, "processing")
        self.journal.transition(
            sid,
            "stored",
            reason="stored",
            dest=str(result.dest),
            sha256=result.sha256,
            barcode=barcode,
            details={"superseded": [str(p) for p in result.superseded]},
        )
        return sid, result

    def fail(self, barcode: str, state: str, kind: str, reason: str, *, unit: ScanUnit | None = None) -> int:
        """Record a scan that ended ``state`` (held, failed) with ``kind`` and ``reason``."""
        sid = self.record(unit or self.scan_file(barcode))
        self.journal.transition(sid, "processing")
        self.journal.transition(
            sid,
            state,
            reason=reason,
            kind=kind,
            barcode=barcode,
            next_check=time.time() + 300 if state == "held" else None,
        )
        return sid


def write_config(tmp: Path, *, journal: Path | None = None, storage: Path | None = None) -> Path:
    """A scanner configuration file under ``tmp``; ``journal`` and ``storage`` may point elsewhere."""
    sheet = tmp / "sheet.csv"
    toml = tmp / "cardinal.toml"
    toml.write_text(
        '[scanner]\nname = "cardinal"\n'
        f'watch = "{tmp / "watch"}"\n'
        "[storage]\n"
        f'root = "{storage or tmp / "storage"}"\n'
        'layout = "{Study}/{Experiment}"\n'
        f'[sheet]\ncsv = "{sheet}"\n'
        f'[journal]\npath = "{journal or tmp / "state" / "journal.sqlite"}"\n'
    )
    return toml


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """The whole scenario of EXPECTED, built through the real journal and the real transfer."""
    (tmp_path / "watch").mkdir()
    (tmp_path / "storage").mkdir()
    (tmp_path / "sheet.csv").write_text(SHEET, encoding="utf-8")
    config_file = write_config(tmp_path)
    cfg = load_config(config_file)
    lab = Lab(root=tmp_path, cfg=cfg, config_file=config_file, journal=Journal(cfg.journal.path))
    j = lab.journal

    lab.store("100001")
    # A backup snapshot and a crashed transfer's leftovers must not read as second copies.
    snap = lab.storage / ".snapshot" / "hourly" / "Prec01" / "Run2"
    shutil.copytree(lab.storage / "Prec01" / "Run2", snap, ignore=shutil.ignore_patterns(".incoming"))
    incoming = lab.storage / "Prec01" / "Run2" / ".incoming"
    shutil.copy(lab.storage / "Prec01" / "Run2" / "Prec01_Run2_P1_100001.json", incoming / "stray.json")

    first_id, first = lab.store("100002")
    _, second = lab.store("100002", supersede=first.dest)  # a rescan: same name, old one to superseded/
    j.update(first_id, details={"superseded_by": str(second.dest)})
    lab.results["100002"] = second

    lab.fail(
        "100003",
        "held",
        "incomplete_row",
        "Barcode 100003 (row 5) has no value in REQUIRED column(s) 'Experiment'.",
    )
    lab.fail("900001", "held", "unknown_barcode", "No row for barcode 900001 in sheet.csv.")

    # The scanner rewrote 100004's file before it was processed: the older row is noise, not a failure.
    unit = lab.scan_file("100004")
    lab.record(unit)
    unit.primary.write_bytes(b"rewritten" * 100)
    os.utime(unit.primary, ns=(time.time_ns(), time.time_ns() + 10**9))
    lab.fail(
        "100004",
        "failed",
        "destination_collision",
        "Prec01_Run2_P1_100004.svs already holds a different scan",
        unit=unit,
    )

    bad = lab.scan_file("100005", b"not a slide")
    sid = lab.record(bad)  # as the flow does: recorded, then moved aside, then marked quarantined
    j.transition(sid, "processing")
    where = storage.quarantine(bad, lab.cfg.quarantine_dir, "corrupt_slide: cannot open", margin=0)
    j.transition(
        sid,
        "quarantined",
        reason=f"{bad.name} is not a readable slide",
        kind="corrupt_slide",
        barcode="100005",
        details={"quarantined_to": str(where)},
    )
    lab.results["quarantine"] = where

    lab.store("100007")
    lab.store("100007", "Prec01/Run3", prefix="Prec01_Run3_P1")  # the sheet was edited between two scans
    lab.place("100008")  # stored twice by another host sharing this storage: only storage knows
    lab.place("100008", "Prec01/Run3", prefix="Prec01_Run3_P1")
    lab.store("100009")

    lab.record(lab.scan_file("100010"))  # ready, barcode not read yet

    _, gone = lab.store("100011")
    gone.dest.unlink()  # someone deleted the image; its sidecar is left behind
    lab.results["gone"] = gone

    now = time.time()
    j.request_rescan("100001", by="qc", reason="blur score 3.1 below 10", deadline=now + 72 * 3600)
    j.request_rescan("100009", by="sheet", reason="Rescan Requested: yes", deadline=now - 3600)
    yield lab
    j.close()


def barcodes(entries: list[dict[str, Any]] | None) -> list[str | None]:
    """The barcodes of a known category, in report order."""
    assert entries is not None
    return [e["barcode"] for e in entries]


def test_every_category(lab: Lab) -> None:
    report = reconcile(lab.cfg)
    for key, want in EXPECTED.items():
        assert barcodes(report[key]) == want, key
        assert report["summary"][key] == len(want), key
    assert set(report["summary"]) == set(CATEGORIES)


def test_details_per_category(lab: Lab) -> None:
    report = reconcile(lab.cfg)
    by = {k: {e["barcode"]: e for e in report[k]} for k in CATEGORIES}

    s = by["stored"]["100001"]
    assert s["dest"] == str(lab.storage / "Prec01/Run2/Prec01_Run2_P1_100001.svs")
    assert s["stored_at"] and s["in_journal"] and s["in_storage"] and s["in_sheet"]
    assert by["stored"]["100008"]["in_journal"] is False

    held = by["held"]["100003"]
    assert held["kind"] == "incomplete_row" and "Experiment" in held["reason"] and held["since"]
    assert by["held"]["900001"]["in_sheet"] is False

    failed = by["failed"]["100004"]
    assert failed["kind"] == "destination_collision" and "already holds" in failed["reason"]

    q = by["quarantined"]["100005"]
    assert q["where"] == str(lab.results["quarantine"]) and q["where_exists"] is True
    assert q["reason"] and q["kind"] == "corrupt_slide"

    r = by["rescanned"]["100002"]
    rescan = lab.results["100002"]
    assert r["scans"] == 2 and r["current"] == str(rescan.dest)
    assert r["superseded"] == [str(rescan.superseded[0])] and rescan.superseded[0].exists()
    assert "superseded" in rescan.superseded[0].parent.name

    twice = by["stored_twice"]
    assert twice["100007"]["found_by"] == ["journal", "storage"]
    assert twice["100008"]["found_by"] == ["storage"]
    assert twice["100007"]["paths"] == sorted(
        [
            str(lab.storage / "Prec01/Run2/Prec01_Run2_P1_100007.svs"),
            str(lab.storage / "Prec01/Run3/Prec01_Run3_P1_100007.svs"),
        ]
    )

    rescans = by["missing_rescans"]
    assert rescans["100009"]["overdue"] is True and rescans["100001"]["overdue"] is False
    assert rescans["100001"]["deadline"] and rescans["100001"]["requested_by"] == "qc"

    assert by["missing_from_storage"]["100011"]["dest"] == str(lab.results["gone"].dest)
    assert by["in_sheet_never_scanned"]["100006"] == {"barcode": "100006", "row": 8, "scanner": "Raven"}
    assert by["scanned_not_in_sheet"]["900001"]["states"] == ["held"]
    assert by["in_progress"]["100010"]["barcode_from_file_name"] is True

    assert report["storage_root"] == str(lab.storage)
    assert report["sheet"]["available"] and report["sheet"]["source"] == str(lab.root / "sheet.csv")
    assert report["sheet"]["read_at"] and report["sheet"]["barcodes"] == 11
    assert any("no barcode" in p for p in report["sheet"]["problems"])  # the blank-barcode row
    assert any("Prec01_Run2_P1_100011.json" in p for p in report["storage"]["problems"])


def test_report_is_json(lab: Lab) -> None:
    report = reconcile(lab.cfg)
    assert json.loads(json.dumps(report)) == report  # no default=: every value is plain JSON


def test_render_mentions_every_barcode_in_sorted_sections(lab: Lab) -> None:
    report = reconcile(lab.cfg)
    text = render_reconcile(report)
    for key, want in EXPECTED.items():
        assert f"({len(want)})" in text
        for b in want:
            assert b in text, (key, b)
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Stored twice"))
    assert [line.split()[0] for line in lines[start + 1 : start + 3]] == ["100007", "100008"]
    assert "Prec01/Run2/Prec01_Run2_P1_100007.svs" in text  # relative to the storage root
    assert "OVERDUE" in text and str(lab.root / "sheet.csv") in text and str(lab.storage) in text


def test_unreachable_sheet_still_reports_journal_and_storage(lab: Lab) -> None:
    (lab.root / "sheet.csv").unlink()
    report = reconcile(lab.cfg)
    assert report["sheet"]["available"] is False
    assert "sheet.csv" in report["sheet"]["error"]
    assert report["in_sheet_never_scanned"] is None and report["scanned_not_in_sheet"] is None
    assert report["summary"]["in_sheet_never_scanned"] is None
    for key in (
        "stored",
        "held",
        "failed",
        "quarantined",
        "rescanned",
        "stored_twice",
        "missing_rescans",
        "missing_from_storage",
        "in_progress",
    ):
        assert barcodes(report[key]) == EXPECTED[key], key
    json.dumps(report)
    text = render_reconcile(report)
    assert "Sheet:   MISSING" in text and "sheet.csv" in text
    assert "in_sheet_never_scanned  unknown" in text


def test_sheet_passed_in_and_journal_left_open(lab: Lab) -> None:
    report = reconcile(lab.cfg, sheet=CsvSource(lab.root / "sheet.csv"), journal=lab.journal)
    assert barcodes(report["stored_twice"]) == EXPECTED["stored_twice"]
    assert lab.journal.all()  # still usable: reconcile closes only what it opened


def test_missing_journal_and_storage_are_reported_not_created(tmp_path: Path) -> None:
    (tmp_path / "watch").mkdir()
    (tmp_path / "sheet.csv").write_text(SHEET, encoding="utf-8")
    journal = tmp_path / "nowhere" / "journal.sqlite"
    cfg = load_config(write_config(tmp_path, journal=journal, storage=tmp_path / "unmounted"))
    report = reconcile(cfg)
    assert not journal.exists() and not journal.parent.exists()
    assert report["journal"]["available"] is False and "does not exist" in report["journal"]["error"]
    assert report["storage"]["available"] is False and "unmounted" in report["storage"]["error"]
    assert all(report[k] is None for k in CATEGORIES)
    text = render_reconcile(report)
    assert "Journal: MISSING" in text and "Storage: MISSING" in text


def test_clean_storage_has_nothing_twice(tmp_path: Path) -> None:
    (tmp_path / "watch").mkdir()
    (tmp_path / "storage").mkdir()
    (tmp_path / "sheet.csv").write_text(SHEET, encoding="utf-8")
    cfg = load_config(write_config(tmp_path))
    lab = Lab(
        root=tmp_path, cfg=cfg, config_file=tmp_path / "cardinal.toml", journal=Journal(cfg.journal.path)
    )
    try:
        _, first = lab.store("100001")
        lab.store("100001", supersede=first.dest)
        report = reconcile(cfg)
    finally:
        lab.journal.close()
    assert report["stored_twice"] == [] and report["summary"]["stored_twice"] == 0
    assert barcodes(report["rescanned"]) == ["100001"]
    assert barcodes(report["stored"]) == ["100001"]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefect variables the CLI sets, restored after the test."""
    # The CLI sets these for Prefect; pinning them here gives them back afterwards.
    monkeypatch.setenv("PREFECT_LOGGING_EXTRA_LOGGERS", "scanner_agent")
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def test_cli_exit_code_and_json(lab: Lab, clean_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["reconcile", "--config", str(lab.config_file), "--json"]) == 1  # stored twice
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["stored_twice"] == 2
    for path in (
        lab.storage / "Prec01/Run3/Prec01_Run3_P1_100007.svs",
        lab.storage / "Prec01/Run3/Prec01_Run3_P1_100007.json",
        lab.storage / "Prec01/Run3/Prec01_Run3_P1_100008.svs",
        lab.storage / "Prec01/Run3/Prec01_Run3_P1_100008.json",
    ):
        path.unlink()  # the lab manager removed the extra copies
    assert cli_main(["reconcile", "--config", str(lab.config_file)]) == 0
    assert "Reconcile report for scanner cardinal" in capsys.readouterr().out


def test_malformed_sheet_is_reported_as_missing(lab: Lab) -> None:
    # The header pasted into row 1: no flags row, so no name can be trusted and no row either.
    (lab.root / "sheet.csv").write_text(SHEET.split("\n", 1)[1], encoding="utf-8")
    report = reconcile(lab.cfg)
    assert report["sheet"]["available"] is False and "flags row is missing" in report["sheet"]["error"]
    assert report["summary"]["scanned_not_in_sheet"] is None
    assert barcodes(report["held"]) == EXPECTED["held"]
