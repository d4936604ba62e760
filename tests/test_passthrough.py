"""Pass-through formats (``[scanner] passthrough_patterns``): files OpenSlide cannot read are stored with
the same verified copy, naming and journal, recorded as "not validated", never as corrupt.

Real parts throughout: the pipeline through a real Prefect server, real storage, the real watcher's
unit discovery. The pass-through files are built by ``scanner_agent.testing.passthrough``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scanner_agent.core.errors import SourceChanged
from scanner_agent.scanunit import ScanUnit
from scanner_agent.storage import place_scan
from scanner_agent.testing.passthrough import write_czi, write_isyntax, write_vsi
from scanner_agent.watch import discover_units
from tests.harness import Folders, make_agent, process, write_config

STORED = "Prec01_Run-2_P1_Cardinal_620995"
PATTERNS = ["*.isyntax", "*.czi", "*.vsi"]


@pytest.fixture
def site(tmp_path: Path, prefect_api: str) -> Iterator[tuple[Folders, Any]]:
    cfg = write_config(tmp_path, scanner={"passthrough_patterns": PATTERNS})
    agent = make_agent(cfg)
    yield Folders(tmp_path), agent
    agent.close()


def _stored_files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("writer", "ext", "fmt"),
    [(write_czi, ".czi", "Zeiss CZI"), (write_isyntax, ".isyntax", "Philips iSyntax")],
)
def test_passthrough_file_is_stored_verified_and_recorded_as_not_validated(
    site: tuple[Folders, Any], writer: Any, ext: str, fmt: str
) -> None:
    at, agent = site
    src = writer(at.watch / f"620995_scan{ext}")
    data = src.read_bytes()
    [rec] = process(agent, src)
    assert rec.state == "stored", rec.reason
    note = f"not validated: {fmt} is not readable by OpenSlide"
    assert rec.details["validation"] == note
    dest = at.storage / "Prec01" / "Run-2" / f"{STORED}{ext}"
    assert Path(rec.dest) == dest and dest.read_bytes() == data
    sidecar = json.loads((dest.parent / f"{STORED}.json").read_text())
    assert sidecar["slide"]["validated"] is False and sidecar["slide"]["note"] == note
    assert sidecar["qc"] is None  # nothing was decoded, so nothing was judged
    assert not src.exists()  # freed like any stored scan


def test_vsi_moves_as_one_unit_with_its_name_folder(site: tuple[Folders, Any]) -> None:
    at, agent = site
    vsi = write_vsi(at.watch, "620995_slide")
    folder = at.watch / "_620995_slide_"
    before = _stored_files(at.watch)
    assert before == {
        "620995_slide.vsi",
        "_620995_slide_/stack1/frame_t.ets",
        "_620995_slide_/stack10001/frame_t.ets",
    }
    # The watcher sees one scan, not a scan plus a stray folder.
    assert discover_units(at.watch, ["*.svs", *PATTERNS]) == [ScanUnit.from_path(vsi)]
    [rec] = process(agent, vsi)
    assert rec.state == "stored", rec.reason
    dest_dir = at.storage / "Prec01" / "Run-2"
    assert _stored_files(dest_dir) >= {
        f"{STORED}.vsi",
        f"_{STORED}_/stack1/frame_t.ets",
        f"_{STORED}_/stack10001/frame_t.ets",
    }
    assert rec.details["validation"] == "not validated: Olympus VSI is not readable by OpenSlide"
    assert not vsi.exists() and not folder.exists()


def test_passthrough_without_a_barcode_in_its_name_is_quarantined_naming_what_was_tried(
    site: tuple[Folders, Any],
) -> None:
    at, agent = site
    src = write_czi(at.watch / "scan_0001.czi")
    [rec] = process(agent, src)
    assert rec.state == "quarantined" and rec.kind == "no_barcode", rec.reason
    assert "scan_0001" in rec.reason and "corrupt" not in rec.reason.lower()


def test_passthrough_that_vanished_before_its_run_fails_as_source_changed_never_corrupt(
    site: tuple[Folders, Any],
) -> None:
    at, agent = site
    src = write_czi(at.watch / "620995_gone.czi")
    unit = ScanUnit.from_path(src)
    fp = unit.fingerprint()
    rec, _ = agent.journal.record_ready(str(src), fp.total_size, fp.newest_mtime_ns)
    src.unlink()
    [rec] = process(agent, src)
    assert rec.state == "failed" and rec.kind == "source_changed", (rec.state, rec.kind, rec.reason)
    assert str(src) in rec.reason
    assert not list(at.storage.rglob("*.czi"))


@pytest.fixture
def shm() -> Iterator[Path]:
    path = Path("/dev/shm") / f"test-passthrough-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_passthrough_file_vanishing_mid_copy_is_source_changed_and_nothing_is_left(
    shm: Path, tmp_path: Path
) -> None:
    """Across filesystems (scanner on /dev/shm, storage on disk) the copy is read in chunks: the
    scanner deletes the VSI's stack after the first one. Nothing is placed; the rest stays."""
    vsi = write_vsi(shm, "620995_v", stack_bytes=3_000_000)
    ets = shm / "_620995_v_" / "stack1" / "frame_t.ets"
    dest = tmp_path / "store"

    def scanner_deletes(path: Path, copied: int) -> None:
        if path == ets:
            path.unlink(missing_ok=True)

    with pytest.raises(SourceChanged) as exc:
        place_scan(
            ScanUnit.from_path(vsi),
            dest,
            f"{STORED}.vsi",
            sidecar={},
            bufsize=256 << 10,
            _on_chunk=scanner_deletes,
        )
    assert "620995_v" in str(exc.value)
    placed = [p for p in dest.rglob("*") if p.is_file() and ".incoming" not in p.parts]
    assert placed == [] or all(p.name == "SHA256SUMS" for p in placed), placed
    assert (
        not [p for p in (dest / ".incoming").rglob("*") if p.is_file()]
        if (dest / ".incoming").exists()
        else True
    )
    assert vsi.exists() and (shm / "_620995_v_" / "stack10001" / "frame_t.ets").exists()  # nothing else lost
    assert os.path.getsize(vsi) > 0
