"""``core.alerts``: the words of every alert kind, an alert's title and facts, and its dedupe key."""

from __future__ import annotations

import pytest

from scanner_agent.core import errors
from scanner_agent.core.alerts import KINDS, RECOVERED_ACTION, Alert, AlertKind, kind_info

NON_ERROR_KINDS = {
    "held_too_long",
    "watcher_unhealthy",
    "scan_never_finished",
    "missing_rescan",
    "qc_failed",
    "rescan_requested",
    "rescan_received",
    "stored_file_changed",
    "stored_file_missing",
    "recovered",
}


def test_every_error_kind_is_worded_by_its_first_class() -> None:
    first: dict[str, type[errors.ScanError]] = {}
    for cls in errors.kind_classes():
        first.setdefault(cls.kind, cls)
    assert set(KINDS) == set(first) | NON_ERROR_KINDS
    for kind, cls in first.items():
        assert KINDS[kind] == AlertKind(cls.title, cls.default_action), kind


def test_a_subclass_keeping_its_parents_kind_does_not_reword_it() -> None:
    # LinkedScan and UnreadableSource keep ScanError's kind; SourceRewritten keeps SourceChanged's.
    assert KINDS["scan_error"].action == errors.ScanError.default_action
    assert KINDS["source_changed"].action == errors.SourceChanged.default_action
    assert KINDS["storage_full"].title == "Storage full for {subject}"


def test_unknown_kind_reads_as_a_generic_scan_problem() -> None:
    info = kind_info("disk_on_fire")
    assert info.title == "Disk on fire for {subject}"
    assert info.action == errors.ScanError.default_action


def test_title_names_the_subject_and_scanner() -> None:
    a = Alert(kind="unknown_barcode", scanner="Cardinal", message="m", barcode="545891", file="/s/x.svs")
    assert a.title == "Unknown barcode 545891 on Cardinal"
    assert a.action == errors.UnknownBarcode.default_action
    by_file = Alert(kind="corrupt_slide", scanner="Raven", message="m", file="/scans/Raven/a b.svs")
    assert by_file.title == "Unreadable slide a b.svs on Raven"


@pytest.mark.parametrize(
    ("kind", "title"),
    [
        ("watcher_unhealthy", "Scanner folder watch unhealthy on Raven"),
        ("unknown_barcode", "Unknown barcode on Raven"),
        ("storage_unavailable", "Storage unavailable on Raven"),
        ("recovered", "Recovered on Raven"),
    ],
)
def test_title_without_a_subject_drops_the_placeholder(kind: str, title: str) -> None:
    assert Alert(kind=kind, scanner="Raven", message="m").title == title


def test_recovery_title_action_and_keys() -> None:
    problem = Alert(kind="storage_full", scanner="Raven", message="full", file="/s/a.svs", scan="7")
    fixed = Alert(
        kind="storage_full", scanner="Raven", message="ok", file="/s/a.svs", scan="7", recovery=True
    )
    assert fixed.title == "Resolved: Storage full for a.svs on Raven"
    assert fixed.action == RECOVERED_ACTION
    assert problem.key() == problem.problem_key() == "storage_full|Raven||/s/a.svs|7"
    assert fixed.key() == problem.recovery_key() == "recovered|storage_full|Raven||/s/a.svs|7"
    assert Alert(kind="recovered", scanner="Raven", message="m").recovery


def test_key_tells_scans_and_barcodes_apart() -> None:
    def key(scan: str | None = None, barcode: str | None = None) -> str:
        return Alert(
            kind="held", scanner="Raven", message="m", file="/s/a.svs", scan=scan, barcode=barcode
        ).key()

    assert len({key(), key(scan="1"), key(scan="2"), key(barcode="545891")}) == 4


def test_from_error_takes_the_errors_words() -> None:
    err = errors.IncompleteRow(
        "Row 9 lacks Study.", missing=["Study"], barcode="545891", path="/s/545891.svs"
    )
    a = Alert.from_error(err, scanner="Raven", run_url="http://p/run/1", details={"row": "9"})
    assert (a.kind, a.message, a.action) == ("incomplete_row", "Row 9 lacks Study.", err.default_action)
    assert (a.barcode, a.file, a.run_url) == ("545891", "/s/545891.svs", "http://p/run/1")
    custom = errors.SheetUnavailable("Sheet down.", action="Wait for Google.")
    assert Alert.from_error(custom, scanner="Raven", file="/s/b.svs").action == "Wait for Google."


def test_facts_and_json_round_trip() -> None:
    a = Alert(
        kind="qc_failed",
        scanner="Raven",
        message="blurry",
        barcode="545891",
        file="/s/545891.svs",
        thumbnail_png=b"\x89PNG\r\n",
        details={"Focus": "0.12"},
        scan="3",
    )
    assert a.facts() == [
        ("Scanner", "Raven"),
        ("Barcode", "545891"),
        ("File", "/s/545891.svs"),
        ("Focus", "0.12"),
    ]
    assert Alert.from_json(a.to_json()) == a


def test_from_json_ignores_fields_from_a_newer_version() -> None:
    text = Alert(kind="held", scanner="Raven", message="m").to_json().replace("{", '{"colour": "red", ', 1)
    assert Alert.from_json(text) == Alert(kind="held", scanner="Raven", message="m")
