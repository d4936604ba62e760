"""The outcome report: status text for the sheet and the event payload (core.outcomes)."""

from __future__ import annotations

from scanner_agent.core.errors import CorruptSlide, IncompleteRow, StorageUnavailable, UnknownBarcode
from scanner_agent.core.outcomes import ReportKind, ScanReport, failure_kind, failure_status


def test_status_names_the_empty_required_columns() -> None:
    exc = IncompleteRow("row 4 lacks Panel", missing=["Panel"], barcode="B1")
    assert failure_status(exc, failure_kind("held")) == "held: REQUIRED Panel empty"


def test_status_short_words_per_kind() -> None:
    assert failure_status(CorruptSlide("bad tiles"), ReportKind.QUARANTINED) == "quarantined: corrupt"
    assert failure_status(UnknownBarcode("no row"), ReportKind.HELD) == "held: not in the sheet"
    assert failure_status(StorageUnavailable("nas"), ReportKind.FAILED) == "failed: storage unavailable"


def test_failure_kind_follows_the_journal_state() -> None:
    assert failure_kind("quarantined") is ReportKind.QUARANTINED
    assert failure_kind("failed") is ReportKind.FAILED


def test_event_name_and_payload_leave_out_empty_fields() -> None:
    r = ScanReport(ReportKind.STORED, "Cardinal", "B1", 0.0, "stored", stored_path="S/B1.svs", size=3)
    assert r.event == "scanner-agent.scan.stored"
    assert r.payload() == {
        "scanner": "Cardinal",
        "barcode": "B1",
        "status": "stored",
        "stored_path": "S/B1.svs",
        "size": 3,
    }
    assert (
        ScanReport(ReportKind.RESCAN_MISSING, "R", "B", 0.0, "x").event == "scanner-agent.scan.rescan-missing"
    )
