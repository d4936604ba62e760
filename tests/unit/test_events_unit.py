"""The Prefect event of each outcome, its durable outbox, and the ``--on-stored`` automation's shape
(no server: the delivery itself is tested against one in tests/test_events.py)."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest

from scanner_agent.core.outcomes import ReportKind, ScanReport
from scanner_agent.journal import EventOutbox
from scanner_agent.orchestration.automations import (
    SetupError,
    on_stored_automation,
    on_stored_parameters,
)
from scanner_agent.orchestration.events import event_fields, scan_name, validated


def _stored(**kw: object) -> ScanReport:
    fields: dict[str, object] = {
        "kind": ReportKind.STORED,
        "scanner": "Cardinal",
        "barcode": "620995",
        "at": 1_700_000_000.5,
        "status": "stored",
        "stored_path": "Prec01/Run-2/x.svs",
        "sha256": "ab" * 32,
        "size": 10,
        "sheet_row": 3,
        "study": "Prec01",
        "flow_run_id": "0b7e6f1c-1111-4222-8333-444455556666",
        "extra": {"path": "/mnt/slides/Prec01/Run-2/x.svs", "storage_root": "/mnt/slides"},
    }
    fields.update(kw)
    return ScanReport(**fields)  # type: ignore[arg-type]


def test_stored_event_names_the_scan_its_scanner_study_and_run() -> None:
    f = event_fields(_stored())
    assert f["event"] == "scanner-agent.scan.stored"
    assert f["resource"] == {
        "prefect.resource.id": "scanner-agent.scan.620995",
        "prefect.resource.name": "620995",
        "scanner-agent.barcode": "620995",
        "scanner-agent.scanner": "Cardinal",
        "scanner-agent.study": "Prec01",
    }
    assert [(r["prefect.resource.role"], r["prefect.resource.id"]) for r in f["related"]] == [
        ("scanner", "scanner-agent.scanner.Cardinal"),
        ("study", "scanner-agent.study.Prec01"),
        ("flow-run", "prefect.flow-run.0b7e6f1c-1111-4222-8333-444455556666"),
    ]
    assert f["payload"]["path"] == "/mnt/slides/Prec01/Run-2/x.svs" and f["payload"]["sheet_row"] == 3
    assert f["occurred"].startswith("2023-11-14T22:13:20.5")
    validated(f)  # Prefect's own Event model takes it


def test_each_kind_has_its_event_and_a_scan_without_barcode_is_named_by_its_file() -> None:
    for kind in ReportKind:
        assert event_fields(_stored(kind=kind))["event"] == f"scanner-agent.scan.{kind.value}"
    bare = _stored(kind=ReportKind.QUARANTINED, barcode=None, study=None, flow_run_id=None, file="/s/odd.svs")
    f = event_fields(bare)
    assert (
        scan_name(bare) == "odd.svs" and f["resource"]["prefect.resource.id"] == "scanner-agent.scan.odd.svs"
    )
    assert [r["prefect.resource.role"] for r in f["related"]] == ["scanner"]  # no study, no run: left out
    validated(f)


def test_outbox_keeps_order_and_ids_across_reopen_and_marks_only_what_was_sent(tmp_path: Path) -> None:
    db = tmp_path / "journal.sqlite"
    box = EventOutbox(db)
    ids = [str(uuid.uuid4()) for _ in range(3)]
    for i in ids:
        box.put(i, "scanner-agent.scan.stored", "{}")
    box.put(ids[0], "scanner-agent.scan.stored", "{}")  # the same event twice: queued once
    first = box.pending(2)
    box.failed(first, "ConnectError: refused")
    assert box.summary() == {"events": 3, "oldest": pytest.approx(box.summary()["oldest"]), "attempts": 1,
                             "last_error": "ConnectError: refused"}  # fmt: skip
    box.close()
    box = EventOutbox(db)  # a restart: the queue is still there, in order
    assert [q.event_id for q in box.pending()] == ids
    box.mark_sent(box.pending(2))
    assert [q.event_id for q in box.pending()] == ids[2:] and box.pending_count() == 1
    box.close()


def test_outbox_adds_its_table_to_a_journal_from_an_older_release(tmp_path: Path) -> None:
    fixture = Path(__file__).parent.parent / "fixtures" / "journal-v1.sqlite"
    db = tmp_path / "old.sqlite"
    db.write_bytes(fixture.read_bytes())
    EventOutbox(db).close()
    with sqlite3.connect(db) as c:
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"scans", "prefect_events"} <= tables and c.execute("SELECT COUNT(*) FROM scans").fetchone()[
            0
        ] == 9


def test_on_stored_passes_path_and_barcode_and_the_extras_the_flow_takes() -> None:
    schema = {"properties": {"path": {}, "barcode": {}, "sha256": {}, "other": {}}}
    params = on_stored_parameters("f/d", schema)
    assert params == {
        "path": "{{ event.payload.path }}",
        "barcode": "{{ event.payload.barcode }}",
        "sha256": "{{ event.payload.sha256 | default(none) }}",
    }
    with pytest.raises(SetupError, match="takes no 'barcode'"):
        on_stored_parameters("f/d", {"properties": {"path": {}}})


def test_on_stored_automation_reacts_to_each_stored_scan_of_the_study() -> None:
    dep = uuid.uuid4()
    a = on_stored_automation("f/d", dep, {"path": "{{ event.payload.path }}"}, study="Prec01")
    assert a.name == "scanner-agent: run f/d on stored scans of study Prec01"
    t = a.trigger
    assert t.expect == {"scanner-agent.scan.stored"} and t.posture == "Reactive" and t.threshold == 1
    assert t.match.model_dump() == {
        "prefect.resource.id": "scanner-agent.scan.*",
        "scanner-agent.study": "Prec01",
    }
    [action] = a.actions
    assert action.type == "run-deployment" and action.deployment_id == dep
    assert action.parameters == {"path": "{{ event.payload.path }}"}
    assert "scanner-agent.study" not in on_stored_automation("f/d", dep, {}).trigger.match.model_dump()
