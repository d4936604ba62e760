"""A scan that changes after it was judged complete (the scanner resumed writing) is never stored
half-old: the change is caught by the size/mtime identity the journal recorded, or by the
transfer's own checks while it copies, and the scan is stored once it has settled again.

Real slides, the real flow through ``harness.process`` (the daemon's path), storage on another
filesystem (/dev/shm) so the transfer really copies and verifies.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scanner_agent.core.states import ScanState
from scanner_agent.orchestration.runs import run_scan
from scanner_agent.scanunit import ScanUnit
from scanner_agent.testing.synthetic import write_svs
from tests.daemon_helpers import sheet_csv
from tests.faults.tools import OnCreate, leftovers, sha256_bytes, sha256_file, stored_files
from tests.harness import make_agent, process, write_config

BARCODE = "620995"
EXTRA = b"\nmore lines of the scan, written after a pause\n" * 1000


@dataclass
class Scanner:
    watch: Path
    storage: Path
    agent: Any

    @property
    def dest_dir(self) -> Path:
        return self.storage / "Prec01" / "Run-2"


@pytest.fixture
def scanner(tmp_path: Path, prefect_api: str) -> Iterator[Scanner]:
    storage = Path("/dev/shm") / f"faults-storage-{uuid.uuid4().hex[:8]}"
    storage.mkdir()
    cfg = write_config(
        tmp_path,
        name=f"Changed-{uuid.uuid4().hex[:6]}",
        sheet=sheet_csv([BARCODE]),
        storage={"root": str(storage), "reserve_bytes": 0},
    )
    agent = make_agent(cfg)
    try:
        yield Scanner(tmp_path / "scanner", storage, agent)
    finally:
        agent.close()
        shutil.rmtree(storage, ignore_errors=True)


def judged_complete(agent: Any, path: Path) -> int:
    """Record the scan as the watcher does once it has settled; returns its journal id."""
    fp = ScanUnit.from_path(path).fingerprint()
    rec, new = agent.journal.record_ready(str(path), fp.total_size, fp.newest_mtime_ns)
    assert new
    return rec.id


def test_scan_written_to_again_after_it_was_judged_complete_is_not_stored_half_written(
    scanner: Scanner,
) -> None:
    src = write_svs(scanner.watch / f"{BARCODE}_scan.svs", barcode=BARCODE, width=1024, height=768)
    first = src.read_bytes()
    scan_id = judged_complete(scanner.agent, src)
    # The scanner resumes: it appends part of a new tile row and pauses with the file still open.
    with open(src, "ab") as scanner_handle:
        scanner_handle.write(EXTRA[: len(EXTRA) // 2])
        scanner_handle.flush()
        half_written = src.read_bytes()
        asyncio.run(run_scan(scanner.agent, scan_id))
        rec = scanner.agent.journal.get(scan_id)
        assert rec is not None and (rec.state, rec.kind) == (ScanState.FAILED, "source_changed"), (
            rec.state,
            rec.reason,
        )
        assert stored_files(scanner.storage) == [], "a half-written scan reached storage"
        assert leftovers(scanner.storage) == []
        assert src.read_bytes() == half_written
        scanner_handle.write(EXTRA[len(EXTRA) // 2 :])
    final = first + EXTRA
    # Settled again: the watcher reports the new version, which is stored whole, once.
    [rec2] = process(scanner.agent, src)
    assert rec2.id != scan_id and rec2.state == ScanState.STORED, rec2.reason
    dest = Path(rec2.dest or "")
    assert stored_files(scanner.storage) == sorted([dest, dest.with_suffix(".json")])
    assert sha256_file(dest) == sha256_bytes(final) == rec2.sha256
    old = scanner.agent.journal.get(scan_id)
    assert old is not None and old.state == ScanState.FAILED and old.next_check is None, (
        "the old version must not be retried"
    )
    assert not src.exists()


def test_scan_appended_to_during_the_copy_is_caught_and_stored_whole_once_it_settles(
    scanner: Scanner,
) -> None:
    # Big enough (~13 MB, two 8 MiB copy chunks) that the append lands while the copy runs.
    src = write_svs(scanner.watch / f"{BARCODE}_scan.svs", barcode=BARCODE, width=6144, height=4608)
    size = src.stat().st_size
    seen: dict[str, int] = {}

    def scanner_writes_more(partial: Path) -> None:
        seen["copied"] = partial.stat().st_size
        with open(src, "ab") as f:
            f.write(EXTRA)

    trigger = OnCreate(scanner.dest_dir / ".incoming", ".partial", scanner_writes_more)
    try:
        [rec] = process(scanner.agent, src)
    finally:
        trigger.close()
    if trigger.error is not None:
        raise trigger.error
    assert seen.get("copied", size) < size, "the append did not land while the copy was under way"
    assert (rec.state, rec.kind) == (ScanState.FAILED, "source_changed"), (rec.state, rec.reason)
    assert "changed" in (rec.reason or "") and str(src) in (rec.reason or "")
    assert stored_files(scanner.storage) == [] and leftovers(scanner.storage) == []
    assert src.stat().st_size == size + len(EXTRA)
    whole = sha256_file(src)
    [rec2] = process(scanner.agent, src)
    assert rec2.state == ScanState.STORED, rec2.reason
    dest = Path(rec2.dest or "")
    assert sha256_file(dest) == whole == rec2.sha256
    assert stored_files(scanner.storage) == sorted([dest, dest.with_suffix(".json")])
    assert not src.exists() and not os.listdir(scanner.dest_dir / ".incoming")
