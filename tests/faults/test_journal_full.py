"""The journal's disk fills up under a running daemon.

What happens (and what this test holds the agent to): the journal is the record of what was done,
so without it nothing may be done that cannot be undone.

- A scan copied to storage while the journal fills cannot be recorded as stored, so its source
  stays on the scanner; the verified copy in storage is found again (same bytes: "already
  present") when the scan is resumed, so it is never stored twice.
- A scan that finishes while the journal is full cannot be recorded at all: it stays on the
  scanner untouched and is offered again by the watcher's next full listing.
- The daemon stops with a clear error naming the journal (exit status 1; systemd restarts it) the
  first time it cannot write its own record; once there is space again the restarted agent
  resumes what was cut short.
- SQLite's WAL keeps the journal consistent throughout (``PRAGMA integrity_check``).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanner_agent.core.states import ScanState
from scanner_agent.testing.synthetic import write_svs
from tests.daemon_helpers import DaemonProcess, records, sheet_csv, wait_for
from tests.faults.tools import (
    OnCreate,
    fill,
    journal_integrity,
    leftovers,
    mount_tmpfs,
    scans_left,
    sha256_bytes,
    sha256_file,
    stored_files,
    umount,
)
from tests.harness import write_config

A, B, C = "620995", "645750", "317335"


@pytest.fixture
def site(tmp_path: Path, prefect_api: str) -> Iterator[tuple[Path, Path, Path]]:
    """(config, journal folder on a 1 MiB tmpfs, storage on another filesystem)."""
    state = tmp_path / "state"
    mount_tmpfs(state, "size=1m")
    storage = Path("/dev/shm") / f"faults-journal-{uuid.uuid4().hex[:8]}"
    storage.mkdir()
    cfg = write_config(
        tmp_path,
        name=f"Journal-{uuid.uuid4().hex[:6]}",
        sheet=sheet_csv([A, B, C]),
        storage={"root": str(storage), "reserve_bytes": 0},
        scanner={"rescan_seconds": 2},
    )
    try:
        yield cfg, state, storage
    finally:
        umount(state)
        shutil.rmtree(storage, ignore_errors=True)


def test_journal_disk_full_loses_nothing_stores_nothing_twice_and_resumes(
    site: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    cfg, state, storage = site
    watch = tmp_path / "scanner"
    slides = {
        b: write_svs(tmp_path / f"{b}.svs", barcode=b, width=1024, height=768, seed=i).read_bytes()
        for i, b in enumerate((A, B, C))
    }
    with DaemonProcess(cfg) as daemon:
        daemon.wait_watching()
        journal = daemon.cfg.journal.path
        (watch / f"{A}.svs").write_bytes(slides[A])
        wait_for(
            lambda: [r for r in records(journal) if r.state == ScanState.STORED and r.source_removed],
            120,
            "scan A stored",
            alive=daemon,
        )

        # The journal's disk fills the moment B's copy into storage begins.
        filler: list[Path] = []
        trigger = OnCreate(
            storage / "Prec01" / "Run-2" / ".incoming", ".partial", lambda _p: filler.append(fill(state))
        )
        (watch / f"{B}.svs").write_bytes(slides[B])
        wait_for(lambda: filler, 120, "B's copy to start", alive=daemon)
        trigger.close()
        (watch / f"{C}.svs").write_bytes(slides[C])
        code = daemon.wait(120)
        log = daemon.log_text()

    # The daemon stopped itself, saying why and naming the journal, rather than carrying on unrecorded.
    assert code == 1, log[-3000:]
    assert "journal" in log and str(journal) in log and "full" in log, log[-3000:]
    # Nothing was lost: B (copied, not recorded) and C (never recorded) are still on the scanner.
    assert sorted(p.name for p in scans_left(watch)) == sorted([f"{B}.svs", f"{C}.svs"])
    assert sha256_file(watch / f"{B}.svs") == sha256_bytes(slides[B])
    assert sha256_file(watch / f"{C}.svs") == sha256_bytes(slides[C])
    assert journal_integrity(journal) == "ok"

    # Space again: the restarted agent (systemd would do it) finishes B and C, each once.
    filler[0].unlink()
    with DaemonProcess(cfg) as daemon:
        daemon.wait_watching()
        wait_for(
            lambda: (
                len([r for r in records(journal) if r.state == ScanState.STORED and r.source_removed]) == 3
            ),
            180,
            "B and C stored after the restart",
            alive=daemon,
        )
        assert daemon.terminate(60) == 0
    rows = records(journal)
    stored = {r.barcode: r for r in rows if r.state == ScanState.STORED}
    assert sorted(stored) == sorted([A, B, C]) and len([r for r in rows if r.state == ScanState.STORED]) == 3
    for barcode, rec in stored.items():
        assert sha256_file(Path(rec.dest or "")) == sha256_bytes(slides[barcode]) == rec.sha256
    assert len(stored_files(storage)) == 6, stored_files(storage)  # three scans, three sidecars
    assert leftovers(storage) == [] and scans_left(watch) == []
    assert journal_integrity(journal) == "ok"
    assert os.path.getsize(journal) > 0
