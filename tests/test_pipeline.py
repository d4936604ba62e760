"""The scan pipeline end to end: real slides, a real CSV sheet, a real Prefect server, real storage.

Every case goes through ``harness.process`` (the daemon's own path: journal row, then the flow
run) and checks the four things a lab relies on: the journal says what happened and why (naming
the file, row or column), the scan is never lost (the source stays unless a verified copy is in
storage), nothing half-written is left in storage, and a failed run in Prefect says what to do
and points at the task that failed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openslide
import pytest

from scanner_agent.core import errors
from scanner_agent.testing.synthetic import write_corrupt, write_mrxs, write_svs
from tests.daemon_helpers import final_task_runs
from tests.harness import SAMPLE_SHEET, Folders, make_agent, process, write_config
from tests.storage_listing import stored_files as files_under

W, H = 1024, 768
STORED_NAME = "Prec01_Run-2_P1_Cardinal_620995"
HEAD = (
    "Include in Name?,REQUIRED,REQUIRED,REQUIRED,REQUIRED,,,\n"
    "Barcode,Study,Experiment,Panel,Scanner,Scan Date,Rescan Requested,Notes\n"
)


# --------------------------------------------------------------------------- reading Prefect back


@dataclass
class RunView:
    """A flow run as the Prefect UI shows it: its state, its task runs and its artifacts."""

    flow_name: str
    name: str
    state_type: str
    state_name: str
    message: str
    tags: list[str]
    tasks: dict[str, tuple[str, str]] = field(default_factory=dict)  # task name -> (state type, message)
    artifacts: list[str] = field(default_factory=list)

    def failed_tasks(self) -> list[str]:
        return [name for name, (st, _msg) in self.tasks.items() if st == "FAILED"]


def read_run(flow_run_id: str | None) -> RunView:
    assert flow_run_id, "the journal has no flow run id for this scan"

    async def go() -> RunView:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            ArtifactFilter,
            ArtifactFilterFlowRunId,
        )

        async with get_client() as c:
            run = await c.read_flow_run(flow_run_id)
            flow = await c.read_flow(run.flow_id)
            trs = await final_task_runs(c, run.id)
            arts = await c.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            )
            arts.sort(key=lambda a: a.created)  # oldest first: a released or retried scan's run has several
        assert run.state is not None
        view = RunView(
            flow.name, run.name, run.state.type.value, run.state.name, run.state.message or "", list(run.tags)
        )
        for t in sorted(trs, key=lambda t: t.expected_start_time or t.created):
            assert t.state is not None
            # Task runs are named "<task name>-<suffix>"; a retried task keeps its run: its last state wins.
            view.tasks[t.name.rsplit("-", 1)[0]] = (t.state.type.value, t.state.message or "")
        view.artifacts = [str(a.data) for a in arts if a.type == "markdown"]
        return view

    return asyncio.run(go())


# --------------------------------------------------------------------------- storage invariants


def leftovers(*roots: Path) -> list[Path]:
    """Anything in an ``.incoming`` folder under ``roots``: partials a failed transfer left behind."""
    out: list[Path] = []
    for root in roots:
        for dirpath, _dirnames, _files in os.walk(root):
            if Path(dirpath).name == ".incoming":
                out += [Path(dirpath, n) for n in os.listdir(dirpath)]
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sheet_with(*rows: str) -> str:
    return HEAD + "".join(r + "\n" for r in rows)


@dataclass
class Scanner(Folders):
    """One scanner's folders, config and a real Services built from it."""

    cfg: Path
    agent: Any

    def svs(self, name: str, **kw: Any) -> Path:
        kw.setdefault("width", W)
        kw.setdefault("height", H)
        return write_svs(self.watch / name, **kw)

    def assert_clean(self) -> None:
        assert leftovers(self.storage, self.quarantine) == []


@pytest.fixture
def make_scanner(tmp_path: Path, prefect_api: str) -> Iterator[Any]:
    agents: list[Any] = []

    def build(sheet: str = SAMPLE_SHEET, **sections: dict[str, Any]) -> Scanner:
        base = tmp_path / f"site{len(agents)}"
        cfg = write_config(base, sheet=sheet, **sections)
        agent = make_agent(cfg)
        agents.append(agent)
        return Scanner(base, cfg, agent)

    yield build
    for a in agents:
        a.close()


@pytest.fixture
def scanner(make_scanner: Any) -> Scanner:
    return make_scanner()


def assert_failed_run(rec: Any, *, task: str, error: type[errors.ScanError], state_name: str) -> RunView:
    """The Prefect run failed, under the right name, at the right task, saying what to do."""
    run = read_run(rec.flow_run_id)
    assert run.state_type == "FAILED", run
    assert run.state_name == state_name
    assert error.default_action in run.message, run.message
    assert run.failed_tasks() == [task], run.tasks
    order = [
        "Identify Barcode",
        "Read Sheet Metadata",
        "Validate Slide",
        "Check Quality",
        "Build Name",
        "Move Image",
        "Move Rescanned Images",
        "Free Scanner Disk",
    ]
    later = order[order.index(task) + 1 :]
    assert not [t for t in run.tasks if t in later], f"tasks ran after {task} failed: {run.tasks}"
    assert run.artifacts and error.default_action in run.artifacts[-1]
    return run


# --------------------------------------------------------------------------- held: the sheet is not ready


def test_unknown_barcode_is_held_and_the_source_untouched(scanner: Scanner) -> None:
    src = scanner.svs("999999_a.svs", barcode="999999")
    before = (sha256(src), src.stat().st_mtime_ns)
    [rec] = process(scanner.agent, src)
    assert (rec.state, rec.kind) == ("held", "unknown_barcode")
    assert (
        "999999" in rec.reason and str(scanner.base / "sheet.csv") in rec.reason and "'Barcode'" in rec.reason
    )
    assert rec.next_check is not None and rec.held_since is not None
    assert (sha256(src), src.stat().st_mtime_ns) == before
    assert files_under(scanner.storage) == []
    scanner.assert_clean()
    assert_failed_run(rec, task="Read Sheet Metadata", error=errors.UnknownBarcode, state_name="Held")


def test_required_column_empty_is_held_naming_the_column_and_row(make_scanner: Any) -> None:
    s = make_scanner(sheet=sheet_with("620995,Prec01,,P1,Cardinal,,,"))
    src = s.svs("620995_a.svs", barcode="620995")
    [rec] = process(s.agent, src)
    assert (rec.state, rec.kind) == ("held", "incomplete_row")
    assert "'Experiment'" in rec.reason and "row 3" in rec.reason and "620995" in rec.reason
    assert src.exists() and files_under(s.storage) == []
    s.assert_clean()
    assert_failed_run(rec, task="Read Sheet Metadata", error=errors.IncompleteRow, state_name="Held")


def test_duplicate_barcode_rows_are_held_naming_the_rows(make_scanner: Any) -> None:
    s = make_scanner(
        sheet=sheet_with(
            "620995,Prec01,Run 2,P1,Cardinal,,,",
            "645750,Prec01,Run 2,P1,Cardinal,,,",
            "620995,Prec02,Run 9,P3,Cardinal,,,",
        )
    )
    src = s.svs("620995_a.svs", barcode="620995")
    [rec] = process(s.agent, src)
    assert (rec.state, rec.kind) == ("held", "sheet_malformed")
    assert "rows 3, 5" in rec.reason and "620995" in rec.reason
    assert src.exists() and files_under(s.storage) == []
    s.assert_clean()
    assert_failed_run(rec, task="Read Sheet Metadata", error=errors.SheetMalformed, state_name="Held")


def test_held_scan_is_released_once_the_row_is_filled(make_scanner: Any) -> None:
    from scanner_agent.service.dispatcher import Dispatcher
    from scanner_agent.service.maintenance import recheck_due

    s = make_scanner(sheet=sheet_with("645750,Prec01,Run 2,P1,Cardinal,,,"))
    src = s.svs("620995_a.svs", barcode="620995")
    data = src.read_bytes()
    [held] = process(s.agent, src)
    assert held.state == "held"

    # Still missing: a re-check keeps it held without starting a flow run.
    disp = Dispatcher(s.agent, 1)
    disp.start()
    try:
        assert recheck_due(s.agent, disp, time.time() + 2) == 0
        assert s.agent.journal.get(held.id).state == "held"
        (s.base / "sheet.csv").write_text(
            sheet_with("645750,Prec01,Run 2,P1,Cardinal,,,", "620995,Prec01,Run 2,P1,Cardinal,,,"),
            encoding="utf-8",
        )
        assert recheck_due(s.agent, disp, time.time() + 4) == 1
        assert disp.wait_idle(120)
    finally:
        disp.stop(10)

    rec = s.agent.journal.get(held.id)
    assert rec.state == "stored", rec.reason
    dest = s.storage / "Prec01" / "Run-2" / f"{STORED_NAME}.svs"
    assert Path(rec.dest) == dest and dest.read_bytes() == data and not src.exists()
    states = [e["state"] for e in s.agent.journal.events(rec.id)]
    assert states[:4] == ["ready", "processing", "held", "held"] and states[-2:] == ["processing", "stored"]
    assert any(e["reason"] == "sheet row complete" for e in s.agent.journal.events(rec.id))
    assert rec.flow_run_id == held.flow_run_id  # one run per scan: the hold is part of its history
    run = read_run(rec.flow_run_id)
    assert run.state_type == "COMPLETED"
    assert "Waited" in run.artifacts[-1] and "for its sheet row" in run.artifacts[-1]
    s.assert_clean()


# ----------------------------------------------------------------------- quarantined: the scan itself is bad


def test_no_barcode_in_name_or_metadata_is_quarantined_with_a_reason_file(scanner: Scanner) -> None:
    src = scanner.svs("slide_abc.svs")  # no barcode in the name, none in the slide
    digest = sha256(src)
    [rec] = process(scanner.agent, src)
    assert (rec.state, rec.kind) == ("quarantined", "no_barcode")
    assert "slide_abc" in rec.reason and "aperio.Barcode" in rec.reason
    moved = scanner.quarantine / "slide_abc.svs"
    assert rec.details["quarantined_to"] == str(moved)
    assert not src.exists() and sha256(moved) == digest  # moved, verified, not lost
    reason = (scanner.quarantine / "slide_abc.svs.reason.txt").read_text()
    assert "no_barcode" in reason and str(src) in reason
    assert files_under(scanner.storage) == []
    scanner.assert_clean()
    assert_failed_run(rec, task="Identify Barcode", error=errors.NoBarcode, state_name="Quarantined")


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_corrupt_slide_is_quarantined_never_stored(scanner: Scanner, kind: str) -> None:
    src = write_corrupt(scanner.watch / "620995_bad.svs", kind)
    digest = sha256(src)
    [rec] = process(scanner.agent, src)
    assert (rec.state, rec.kind) == ("quarantined", "corrupt_slide")
    assert str(src) in rec.reason
    moved = scanner.quarantine / "620995_bad.svs"
    assert not src.exists() and sha256(moved) == digest
    assert "corrupt_slide" in (scanner.quarantine / "620995_bad.svs.reason.txt").read_text()
    assert files_under(scanner.storage) == []
    scanner.assert_clean()
    assert_failed_run(rec, task="Validate Slide", error=errors.CorruptSlide, state_name="Quarantined")


def test_zero_byte_file_is_quarantined_as_corrupt(scanner: Scanner) -> None:
    src = scanner.watch / "620995_empty.svs"
    src.write_bytes(b"")
    [rec] = process(scanner.agent, src)
    assert (rec.state, rec.kind) == ("quarantined", "corrupt_slide")
    assert "zero bytes" in rec.reason and str(src) in rec.reason
    moved = scanner.quarantine / "620995_empty.svs"
    assert not src.exists() and moved.exists() and moved.stat().st_size == 0
    assert files_under(scanner.storage) == []
    scanner.assert_clean()
    assert_failed_run(rec, task="Validate Slide", error=errors.CorruptSlide, state_name="Quarantined")


# --------------------------------------------------------------------------- failed: storage says no


def test_name_collision_with_a_different_file_fails_and_touches_nothing(scanner: Scanner) -> None:
    other = scanner.storage / "Prec01" / "Run-2" / f"{STORED_NAME}.svs"
    other.parent.mkdir(parents=True)
    write_svs(other, barcode="620995", width=W, height=H, seed=7)
    other_before = (sha256(other), other.stat().st_mtime_ns, other.stat().st_ino)
    src = scanner.svs("620995_a.svs", barcode="620995")
    digest = sha256(src)
    [rec] = process(scanner.agent, src)
    assert (rec.state, rec.kind) == ("failed", "destination_collision")
    assert str(other) in rec.reason and str(src) in rec.reason
    assert rec.next_check is None  # a person must look; no timer retries it
    assert sha256(src) == digest
    assert (sha256(other), other.stat().st_mtime_ns, other.stat().st_ino) == other_before
    assert files_under(scanner.storage) == [other]  # no sidecar either
    scanner.assert_clean()
    assert_failed_run(rec, task="Move Image", error=errors.DestinationCollision, state_name="Failed")


@pytest.mark.parametrize("value", ["../../etc", "a/b", "x" * 300], ids=["dotdot-path", "slash", "300-chars"])
def test_unsafe_sheet_values_are_made_safe_inside_the_storage_root(make_scanner: Any, value: str) -> None:
    s = make_scanner(sheet=sheet_with(f"620995,{value},{value},P1,Cardinal,,,"))
    src = s.svs("620995_a.svs", barcode="620995")
    digest = sha256(src)
    outside_before = sorted(p.name for p in s.base.parent.iterdir())
    [rec] = process(s.agent, src)
    # These values can be made safe, so the scan is stored under a cleaned name rather than held.
    assert rec.state == "stored", rec.reason
    dest = Path(rec.dest)
    root = s.storage.resolve()
    assert root in dest.resolve().parents
    rel = dest.relative_to(s.storage)
    assert len(rel.parts) == 3 and all(p not in (".", "..") and "/" not in p for p in rel.parts)
    assert all(len(p.encode()) <= 200 for p in rel.parts)
    assert sha256(dest) == digest and not src.exists()
    assert all(root in p.resolve().parents for p in files_under(s.storage))
    assert sorted(p.name for p in s.base.parent.iterdir()) == outside_before
    assert not (s.base / "etc").exists() and not (s.base.parent / "etc").exists()
    s.assert_clean()


@pytest.mark.parametrize("value", ["..", "CON"])
def test_sheet_values_that_cannot_be_made_safe_hold_the_scan_naming_row_and_column(
    make_scanner: Any, value: str
) -> None:
    s = make_scanner(sheet=sheet_with(f"620995,{value},Run 2,P1,Cardinal,,,"))
    src = s.svs("620995_a.svs", barcode="620995")
    digest = sha256(src)
    [rec] = process(s.agent, src)
    assert (rec.state, rec.kind) == ("held", "sheet_malformed")
    assert "row 3" in rec.reason and "'Study'" in rec.reason and repr(value) in rec.reason
    assert sha256(src) == digest and files_under(s.storage) == []
    s.assert_clean()
    assert_failed_run(rec, task="Build Name", error=errors.SheetMalformed, state_name="Held")


def _mount_tmpfs(where: Path, options: str) -> None:
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
            check=True,
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs at {where} (needs root and CAP_SYS_ADMIN): {exc}")


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Any]:
    """``mount(path, options)`` mounts a tmpfs there; every mount is undone at teardown."""
    done: list[Path] = []

    def mount(path: Path, options: str) -> None:
        _mount_tmpfs(path, options)
        done.append(path)

    yield mount
    for p in reversed(done):
        subprocess.run(["umount", str(p)], check=False, capture_output=True, timeout=30)


def _assert_transient_storage_failure(s: Scanner, rec: Any, src: Path, digest: str, kind: str) -> None:
    assert (rec.state, rec.kind) == ("failed", kind)
    assert rec.next_check is not None and rec.next_check > rec.updated - 1
    assert sha256(src) == digest
    error = errors.StorageFull if kind == "storage_full" else errors.StorageUnavailable
    assert_failed_run(rec, task="Move Image", error=error, state_name="Failed")


@pytest.mark.slow  # the Move Image task retries a storage error twice (5 s, then 30 s) before giving up
def test_read_only_storage_fails_transiently_and_keeps_the_source(scanner: Scanner, mounted: Any) -> None:
    mounted(scanner.storage, "ro,size=1m")
    src = scanner.svs("620995_a.svs", barcode="620995")
    digest = sha256(src)
    [rec] = process(scanner.agent, src)
    assert "storage not writable" in rec.reason and str(scanner.storage) in rec.reason
    _assert_transient_storage_failure(scanner, rec, src, digest, "storage_unavailable")
    assert os.listdir(scanner.storage) == []
    scanner.assert_clean()


@pytest.mark.slow  # as above: two in-flow retries of Move Image
def test_missing_storage_root_fails_and_is_not_recreated(scanner: Scanner) -> None:
    # An unmounted share whose mount point is gone: local folders must not stand in for it.
    scanner.storage.rmdir()
    src = scanner.svs("620995_a.svs", barcode="620995")
    digest = sha256(src)
    [rec] = process(scanner.agent, src)
    assert "storage missing" in rec.reason and str(scanner.storage) in rec.reason
    _assert_transient_storage_failure(scanner, rec, src, digest, "storage_unavailable")
    assert not scanner.storage.exists()


@pytest.mark.slow  # as above: two in-flow retries of Move Image
def test_full_storage_fails_storage_full_and_keeps_the_source(scanner: Scanner, mounted: Any) -> None:
    mounted(scanner.storage, "size=256k")
    src = scanner.svs("620995_a.svs", barcode="620995")
    assert src.stat().st_size > 256 * 1024
    digest = sha256(src)
    [rec] = process(scanner.agent, src)
    assert "storage full" in rec.reason
    _assert_transient_storage_failure(scanner, rec, src, digest, "storage_full")
    assert files_under(scanner.storage) == []
    scanner.assert_clean()


def test_copy_to_another_filesystem_is_verified_and_honours_reserve_bytes(
    scanner: Scanner, mounted: Any
) -> None:
    # 4 MiB of room for a 0.8 MB scan with reserve_bytes = 0 (harness default): it fits.
    mounted(scanner.storage, "size=4m")
    src = scanner.svs("620995_a.svs", barcode="620995")
    digest = sha256(src)
    [rec] = process(scanner.agent, src)
    assert rec.state == "stored", rec.reason
    dest = Path(rec.dest)
    assert sha256(dest) == digest == rec.sha256 and not src.exists()
    assert rec.details["transfer_seconds"] >= 0 and os.stat(dest).st_dev != os.stat(scanner.watch).st_dev
    scanner.assert_clean()


# --------------------------------------------------------------------------- stored


def test_mirax_scan_is_stored_as_file_plus_folder_and_opens_at_the_destination(scanner: Scanner) -> None:
    mrxs = write_mrxs(scanner.watch, "620995_m", barcode="620995", images_x=4, images_y=3)
    data_dir = scanner.watch / "620995_m"
    digests = {p.name: sha256(p) for p in data_dir.iterdir()}
    [rec] = process(scanner.agent, mrxs)
    assert rec.state == "stored", rec.reason
    folder = scanner.storage / "Prec01" / "Run-2"
    dest = folder / f"{STORED_NAME}.mrxs"
    assert Path(rec.dest) == dest and dest.is_file() and (folder / STORED_NAME).is_dir()
    assert {p.name: sha256(p) for p in (folder / STORED_NAME).iterdir()} == digests
    with openslide.OpenSlide(str(dest)) as slide:
        assert slide.properties["openslide.vendor"] == "mirax"
        assert slide.dimensions == (4 * 256, 3 * 256)
        slide.read_region((0, 0), slide.level_count - 1, (32, 32))
    assert not mrxs.exists() and not data_dir.exists()
    sidecar = json.loads((folder / f"{STORED_NAME}.json").read_text())
    assert {f["rel"] for f in sidecar["files"]} == {f"{STORED_NAME}.mrxs"} | {
        f"{STORED_NAME}/{n}" for n in digests
    }
    scanner.assert_clean()


def test_barcode_is_read_from_slide_metadata_when_the_name_has_none(scanner: Scanner) -> None:
    src = scanner.svs("scan_0001.svs", barcode="620995")
    [rec] = process(scanner.agent, src)
    assert rec.state == "stored", rec.reason
    assert rec.barcode == "620995" and rec.details["barcode_source"] == "slide metadata (aperio.Barcode)"
    dest = scanner.storage / "Prec01" / "Run-2" / f"{STORED_NAME}.svs"
    assert Path(rec.dest) == dest
    assert (
        json.loads(dest.with_suffix(".json").read_text())["barcode_source"]
        == "slide metadata (aperio.Barcode)"
    )
    run = read_run(rec.flow_run_id)
    # Named by its file at creation; renamed to the barcode once Identify Barcode found it.
    assert run.state_type == "COMPLETED" and run.name == "620995"
    scanner.assert_clean()


def test_reprocessing_a_stored_scan_identity_is_a_no_op(scanner: Scanner) -> None:
    src = scanner.svs("620995_a.svs", barcode="620995")
    data, mtime = src.read_bytes(), src.stat().st_mtime_ns
    [first] = process(scanner.agent, src)
    assert first.state == "stored" and not src.exists()
    dest = Path(first.dest)
    stored_before = {
        p: (p.stat().st_mtime_ns, p.stat().st_ino, sha256(p)) for p in files_under(scanner.storage)
    }

    # The very same scan turns up again (same path, size and mtime): the same journal row, nothing redone.
    src.write_bytes(data)
    os.utime(src, ns=(mtime, mtime))
    [again] = process(scanner.agent, src)
    assert again.id == first.id and again.state == "stored" and again.dest == str(dest)
    assert again.attempts == first.attempts and again.stored_at == first.stored_at
    assert {
        p: (p.stat().st_mtime_ns, p.stat().st_ino, sha256(p)) for p in files_under(scanner.storage)
    } == stored_before
    assert len(scanner.agent.journal.all()) == 1
    assert scanner.agent.journal.counts()["stored"] == 1
    scanner.assert_clean()


def test_artifact_sums_up_the_run(scanner: Scanner) -> None:
    src = scanner.svs("620995_a.svs", barcode="620995")
    [rec] = process(scanner.agent, src)
    assert rec.state == "stored", rec.reason
    run = read_run(rec.flow_run_id)
    assert run.state_type == "COMPLETED" and run.flow_name == "Scan Image Flow: Cardinal"
    [md] = run.artifacts
    assert "620995" in md and rec.dest in md and rec.sha256 in md and str(src) in md
    assert rec.sha256 == sha256(Path(rec.dest))


def test_sidecar_records_where_the_scan_came_from_and_what_was_stored(scanner: Scanner) -> None:
    src = scanner.svs("620995_a.svs", barcode="620995")
    digest, size = sha256(src), src.stat().st_size
    [rec] = process(scanner.agent, src)
    assert rec.state == "stored", rec.reason
    dest = Path(rec.dest)
    side_path = dest.with_suffix(".json")
    assert stat.S_IMODE(side_path.stat().st_mode) == 0o640
    side = json.loads(side_path.read_text())
    assert side["barcode"] == "620995" and side["barcode_source"] == "file name"
    assert side["scanner"] == "Cardinal" and side["host"]
    assert side["source_path"] == str(src)
    assert side["sheet"]["source"] == str(scanner.base / "sheet.csv") and side["sheet"]["row"] == 3
    assert side["sheet"]["values"]["Study"] == "Prec01" and side["sheet"]["values"]["Experiment"] == "Run 2"
    assert side["slide"] == {
        "vendor": "aperio",
        "width": W,
        "height": H,
        "levels": side["slide"]["levels"],
        "mpp": 0.5,
    }
    assert side["slide"]["levels"] >= 1
    assert side["qc"] is not None and set(side["qc"]) == {
        "passed",
        "blur_score",
        "tissue_fraction",
        "reasons",
    }
    assert side["journal_scan_id"] == rec.id and side["flow_run_id"] == rec.flow_run_id
    assert side["scan_complete_at"]
    assert side["name"] == dest.name and side["size"] == size and side["sha256"] == digest == rec.sha256
    assert side["files"] == [{"rel": dest.name, "size": size, "sha256": digest}]
    assert side["stored_at"] and side["transfer_seconds"] >= 0


# --------------------------------------------------------------------------- storage marker


def test_storage_without_its_marker_file_is_never_written_and_the_scan_waits(make_scanner: Any) -> None:
    # An unmounted share leaves an empty, writable mount point: with storage.marker_file set,
    # the agent writes nothing there until the marker (on the real share) is visible again.
    scanner = make_scanner(storage={"marker_file": ".scanner-agent-storage"})
    src = scanner.svs("620995_a.svs", barcode="620995")
    digest = sha256(src)
    [rec] = process(scanner.agent, src)
    assert rec.state == "failed" and rec.kind == "storage_unavailable", (rec.state, rec.reason)
    assert ".scanner-agent-storage" in rec.reason and str(scanner.storage) in rec.reason
    assert rec.next_check is not None and sha256(src) == digest
    assert not [p for p in scanner.storage.rglob("*") if p.is_file()], "something was written to storage"
    (scanner.storage / ".scanner-agent-storage").touch()  # the share is back
    [rec] = process(scanner.agent, src)
    assert rec.state == "stored", rec.reason
    assert sha256(Path(rec.dest)) == digest and not src.exists()
