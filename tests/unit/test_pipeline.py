"""``process_scan`` driven through in-memory fakes: each decision the flow makes, without Prefect.

The journal is the real one on a temporary SQLite file; the scan is a small real file (the
pipeline checks it for links and presence); the sheet, slide reader, storage, alerts and run
are the fakes of ``tests.unit.fakes``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from scanner_agent.core import errors
from scanner_agent.core.policy import MAX_UNEXPECTED_ATTEMPTS
from scanner_agent.core.states import ScanState
from scanner_agent.journal import Journal, ScanRecord
from scanner_agent.pipeline import ScanOutcome, ScanServices, Settings, process_scan
from scanner_agent.scanunit import ScanUnit
from tests.unit.fakes import FakeAlerts, FakeRun, FakeSheet, FakeSlides, FakeStorage, Steps

RETRY_SECONDS = 30.0
RECHECK_SECONDS = 120.0


@dataclass
class Lab:
    """One scanner's services, every one a fake but the journal, and its folders under ``base``."""

    base: Path
    svc: ScanServices
    journal: Journal
    sheet: FakeSheet
    slides: FakeSlides
    storage: FakeStorage
    alerts: FakeAlerts

    def scan(self, name: str, data: bytes = b"slide bytes") -> Path:
        path = self.base / "scanner" / name
        path.write_bytes(data)
        return path

    def ready(self, path: Path) -> int:
        fp = ScanUnit.from_path(path).fingerprint()
        rec, _new = self.journal.record_ready(str(path), fp.total_size, fp.newest_mtime_ns)
        return rec.id

    def process(
        self, path: Path, scan_id: int | None = None
    ) -> tuple[ScanOutcome, ScanRecord, Steps, FakeRun]:
        sid = self.ready(path) if scan_id is None else scan_id
        steps, run = Steps(), FakeRun()
        outcome = asyncio.run(process_scan(self.svc, sid, path, run=run, steps_runner=steps))
        rec = self.journal.get(sid)
        assert rec is not None
        return outcome, rec, steps, run


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    (tmp_path / "scanner").mkdir()
    (tmp_path / "storage").mkdir()
    journal = Journal(tmp_path / "journal.sqlite")
    sheet = FakeSheet(["620995", "Prec01", "Run 2", ""], ["645750", "Prec01", "", ""])
    slides, storage, alerts = FakeSlides(), FakeStorage(journal), FakeAlerts()
    settings = Settings(
        scanner="Cardinal",
        barcode_regex=re.compile(r"(?<!\d)(?P<barcode>\d{6})(?!\d)"),
        storage_root=tmp_path / "storage",
        layout="{Study}/{Experiment}",
        marker_file="",
        reserve_bytes=0,
        quarantine_dir=tmp_path / "scanner" / ".quarantine",
        qc_enabled=True,
        blur_threshold=None,
        min_tissue_fraction=None,
        retry_seconds=RETRY_SECONDS,
        recheck_seconds=RECHECK_SECONDS,
        rescan_deadline_hours=72,
    )
    svc = ScanServices(settings, journal, sheet, slides, storage, alerts)
    yield Lab(tmp_path, svc, journal, sheet, slides, storage, alerts)
    journal.close()


STORED_DEST = Path("Prec01") / "Run-2" / "Prec01_Run-2_620995.svs"


def test_a_scan_is_stored_then_its_source_freed(lab: Lab) -> None:
    src = lab.scan("620995_a.svs")
    outcome, rec, steps, run = lab.process(src)
    assert outcome == ScanOutcome(True, f"Stored 620995 as {lab.base / 'storage' / STORED_DEST}")
    assert rec.state == ScanState.STORED and rec.dest == str(lab.base / "storage" / STORED_DEST)
    assert rec.source_removed and lab.storage.removed == [src]
    assert rec.details["planned_dest"] == rec.dest and rec.flow_run_id == "run-1"
    assert steps.ran == [
        "Identify Barcode",
        "Read Sheet Metadata",
        "Validate Slide",
        "Check Quality",
        "Build Name",
        "Move Image",
        "Free Scanner Disk",
    ]
    [placed] = lab.storage.placed
    assert placed["supersede"] is None and placed["sidecar"]["sheet"]["row"] == 3
    assert placed["sidecar"]["journal_scan_id"] == rec.id and placed["sidecar"]["flow_run_id"] == "run-1"
    assert run.tags == ["barcode:620995", "study:Prec01"] and run.name == "620995"
    [art] = run.artifacts
    assert art["key"] == "scan-620995" and rec.dest in art["markdown"]
    assert lab.alerts.sent == []


def test_a_rescan_supersedes_the_earlier_stored_image(lab: Lab) -> None:
    first_src = lab.scan("620995_a.svs")
    _, first, _, _ = lab.process(first_src)
    earlier = Path(first.dest or "")
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"the earlier image")  # still in storage: it is superseded
    again = lab.scan("620995_b.svs", b"a better scan")
    outcome, rec, steps, run = lab.process(again)
    assert outcome.completed and rec.state == ScanState.STORED and rec.reason == "stored (rescan)"
    assert "Move Rescanned Images" in steps.ran and "Move Image" not in steps.ran
    placed = lab.storage.placed[-1]
    assert placed["supersede"] == earlier and re.fullmatch(r"\d{8}T\d{6}", placed["label"])
    first_now = lab.journal.get(first.id)
    assert first_now is not None and first_now.details["superseded_by"] == rec.dest
    assert f"Rescan: the earlier image moved to {earlier}." in run.artifacts[-1]["markdown"]


@pytest.mark.parametrize(
    ("name", "kind", "missing"),
    [("999999_a.svs", "unknown_barcode", "999999"), ("645750_a.svs", "incomplete_row", "'Experiment'")],
)
def test_a_scan_without_a_complete_row_is_held_until_the_next_check(
    lab: Lab, name: str, kind: str, missing: str
) -> None:
    src = lab.scan(name)
    outcome, rec, steps, run = lab.process(src)
    assert outcome.name == "Held" and not outcome.completed
    assert (rec.state, rec.kind) == (ScanState.HELD, kind) and missing in (rec.reason or "")
    assert rec.next_check == pytest.approx(rec.updated + RECHECK_SECONDS, abs=2)
    assert rec.details["held_kind"] == kind and rec.held_since is not None
    assert steps.ran[-1] == "Read Sheet Metadata" and src.exists() and lab.storage.placed == []
    assert lab.alerts.kinds() == [kind] and "**Held**" in run.artifacts[-1]["markdown"]


def test_a_held_scan_stored_later_sends_the_recovery_of_its_alert(lab: Lab) -> None:
    src = lab.scan("645750_a.svs")
    _, held, _, _ = lab.process(src)
    lab.sheet.rows[1] = ["645750", "Prec01", "Run 2", ""]
    outcome, rec, _, run = lab.process(src, held.id)
    assert outcome.completed and rec.state == ScanState.STORED
    recovery = lab.alerts.sent[-1]
    assert recovery["kind"] == "incomplete_row" and recovery["recovery"] is True
    assert "for its sheet row" in run.artifacts[-1]["markdown"]


@pytest.mark.parametrize(
    ("name", "kind", "task"),
    [
        ("slide_abc.svs", "no_barcode", "Identify Barcode"),
        ("620995_bad.svs", "corrupt_slide", "Validate Slide"),
    ],
)
def test_a_bad_scan_is_quarantined(lab: Lab, name: str, kind: str, task: str) -> None:
    lab.slides.corrupt.add("620995_bad.svs")
    src = lab.scan(name)
    outcome, rec, steps, _ = lab.process(src)
    assert outcome.name == "Quarantined"
    assert (rec.state, rec.kind, rec.next_check) == (ScanState.QUARANTINED, kind, None)
    assert rec.details["quarantined_to"] == str(lab.svc.settings.quarantine_dir / name)
    assert lab.storage.quarantined == [src] and steps.ran[-1] == task and lab.storage.placed == []
    assert lab.alerts.sent[-1]["details"] == {"where": rec.details["quarantined_to"]}


def test_a_quarantine_that_cannot_move_the_scan_is_a_failure_for_a_person(lab: Lab) -> None:
    lab.storage.quarantine_fails = True
    src = lab.scan("slide_abc.svs")
    outcome, rec, _, _ = lab.process(src)
    assert outcome.name is None and not outcome.completed
    assert (rec.state, rec.kind, rec.next_check) == (ScanState.FAILED, "no_barcode", None)
    assert "No space left" in rec.details["quarantine_error"] and src.exists()


def test_storage_that_blinks_fails_the_scan_for_a_retry_with_backoff(lab: Lab) -> None:
    src = lab.scan("620995_a.svs")
    sid = lab.ready(src)
    waits = []
    for _ in range(3):
        lab.storage.fail_next.append(errors.StorageUnavailable("storage not writable", path="/storage"))
        outcome, rec, steps, _ = lab.process(src, sid)
        assert (rec.state, rec.kind) == (ScanState.FAILED, "storage_unavailable") and not outcome.completed
        assert steps.ran[-1] == "Move Image" and src.exists() and lab.storage.removed == []
        assert rec.next_check is not None
        waits.append(round(rec.next_check - rec.updated))
    assert waits == [RETRY_SECONDS, 2 * RETRY_SECONDS, 4 * RETRY_SECONDS]
    _, rec, _, _ = lab.process(src, sid)
    assert rec.state == ScanState.STORED


def test_an_unexpected_error_is_retried_a_few_times_then_failed(lab: Lab) -> None:
    lab.slides.broken.add("620995_a.svs")
    src = lab.scan("620995_a.svs")
    sid = lab.ready(src)
    for attempt in range(1, MAX_UNEXPECTED_ATTEMPTS + 1):
        outcome, rec, _, _ = lab.process(src, sid)
        assert rec.attempts == attempt and (rec.state, rec.kind) == (ScanState.FAILED, "scan_error")
        assert "RuntimeError: a bug in the slide reader" in (rec.reason or "") and not outcome.completed
        assert (rec.next_check is not None) == (attempt < MAX_UNEXPECTED_ATTEMPTS), attempt
    assert src.exists() and lab.storage.placed == []


def test_a_scan_rewritten_after_it_was_judged_complete_is_not_stored(lab: Lab) -> None:
    src = lab.scan("620995_a.svs")
    sid = lab.ready(src)
    src.write_bytes(b"the scanner wrote more")
    _, rec, _, _ = lab.process(src, sid)
    assert (rec.state, rec.kind, rec.next_check) == (ScanState.FAILED, "source_changed", None)
    assert lab.storage.placed == [] and src.exists()


def test_a_linked_scan_is_refused_before_anything_reads_it(lab: Lab) -> None:
    real = lab.base / "elsewhere.svs"
    real.write_bytes(b"x")
    link = lab.base / "scanner" / "620995_a.svs"
    link.symlink_to(real)
    _, rec, steps, _ = lab.process(link, lab.ready(link))
    assert (rec.state, rec.kind, rec.next_check) == (ScanState.FAILED, "scan_error", None)
    assert "symbolic link" in (rec.reason or "") and steps.ran == []


def test_a_stored_scan_is_not_processed_again(lab: Lab) -> None:
    src = lab.scan("620995_a.svs")
    _, rec, _, _ = lab.process(src)
    outcome, again, steps, _ = lab.process(src, rec.id)
    assert outcome.name == "Already stored" and steps.ran == [] and again.attempts == rec.attempts
