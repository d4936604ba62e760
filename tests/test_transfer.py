"""Tests for verified placement, rescans, quarantine and cleanup, on real files and real mounts.

Cross-filesystem cases copy between /dev/shm (tmpfs) and pytest's tmp_path (disk). Read-only
and full storage are real tmpfs mounts (tests run as root, which ignores permission bits).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanner_agent.core.errors import DestinationCollision, SourceChanged, StorageUnavailable
from scanner_agent.scanunit import ScanUnit
from scanner_agent.storage import (
    TransferGate,
    clean_incoming,
    free_space,
    place_scan,
    quarantine,
    remove_source,
)

META = {"barcode": "620995", "study": "Prec01", "scanner": "Cardinal"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_mirax(folder: Path, stem: str = "slide", seed: bytes = b"") -> ScanUnit:
    write(folder / f"{stem}.mrxs", b"[GENERAL]\nmrxs" + seed)
    write(folder / stem / "Slidedat.ini", b"[GENERAL]\nSLIDE_CREATION_FINISHED = True\n" + seed)
    write(folder / stem / "Index.dat", os.urandom(1000) + seed)
    write(folder / stem / "Data0000.dat", os.urandom(300_000) + seed)
    write(folder / stem / "Data0001.dat", os.urandom(200_000) + seed)
    return ScanUnit.from_path(folder / f"{stem}.mrxs")


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes, for before/after comparisons."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def sums_check(folder: Path) -> None:
    """The folder's SHA256SUMS is what the standard tool says it is: ``sha256sum -c`` passes there."""
    done = subprocess.run(
        ["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=folder, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def incoming_empty(dest: Path) -> bool:
    inc = dest / ".incoming"
    return not inc.exists() or not any(inc.iterdir())


@pytest.fixture
def shm() -> Iterator[Path]:
    path = Path("/dev/shm") / f"test-transfer-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator:
    mounted: list[Path] = []

    def mount(name: str, options: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); needs root")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


# --------------------------------------------------------------------------- single files


def test_single_file_across_filesystems(shm: Path, tmp_path: Path) -> None:
    data = os.urandom(3_000_000)
    src = write(shm / "scan_620995.svs", data)
    dest = tmp_path / "store" / "Prec01"
    name = "Prec01_Run-2_P1_Cardinal_620995.svs"

    r = place_scan(ScanUnit.from_path(src), dest, name, sidecar=META, bufsize=256 << 10)

    assert r.dest == dest / name and r.dest_roots == [dest / name]
    assert (dest / name).read_bytes() == data
    assert r.sha256 == sha(data) and r.total_size == len(data)
    assert not r.same_filesystem and not r.already_present and not r.linked and r.superseded == []
    assert [(f.rel, f.size, f.sha256) for f in r.files] == [(name, len(data), sha(data))]
    assert (dest / name).stat().st_mtime_ns == src.stat().st_mtime_ns  # scan time kept
    assert (dest / name).stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert src.read_bytes() == data, "the source stays until remove_source"
    assert incoming_empty(dest)

    meta = json.loads(r.sidecar.read_text())
    assert r.sidecar == dest / "Prec01_Run-2_P1_Cardinal_620995.json"
    assert r.sidecar.stat().st_mode & 0o777 == 0o640
    assert {k: meta[k] for k in META} == META
    assert meta["name"] == name and meta["size"] == len(data) and meta["sha256"] == sha(data)
    assert meta["files"] == [{"rel": name, "size": len(data), "sha256": sha(data)}]
    assert meta["stored_at"].endswith("+00:00") and meta["transfer_seconds"] >= 0

    remove_source(ScanUnit.from_path(src), r)
    assert not src.exists() and (dest / name).read_bytes() == data


def test_single_file_disk_to_tmpfs(tmp_path: Path, shm: Path) -> None:
    data = os.urandom(1_000_000)
    src = write(tmp_path / "in" / "a.tif", data)
    r = place_scan(ScanUnit.from_path(src), shm / "out", "B_1.tif", sidecar={})
    assert (shm / "out" / "B_1.tif").read_bytes() == data and r.sha256 == sha(data)


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 65535, 65536, 65537, 3 * 65536 + 7])
@pytest.mark.parametrize("direction", ["tmpfs->disk", "disk->tmpfs"])
def test_sizes_around_the_buffer_size(size: int, direction: str, shm: Path, tmp_path: Path) -> None:
    """Whole aligned chunks go with O_DIRECT (the source's reads one way, the stored file's writes
    the other); an unaligned tail goes through the page cache. Every size arrives whole."""
    data = os.urandom(size)
    src_dir, dest = (shm, tmp_path / "store") if direction == "tmpfs->disk" else (tmp_path, shm / "store")
    src = write(src_dir / "a.svs", data)
    r = place_scan(ScanUnit.from_path(src), dest, "N.svs", sidecar={}, bufsize=65536)
    assert not r.linked
    assert r.dest.read_bytes() == data and r.sha256 == sha(data) and r.total_size == size


def test_single_file_same_filesystem_links_and_keeps_source(tmp_path: Path) -> None:
    data = os.urandom(500_000)
    src = write(tmp_path / "scanner" / "x.svs", data)
    dest = tmp_path / "store"

    r = place_scan(ScanUnit.from_path(src), dest, "N_1.svs", sidecar=META)

    assert r.same_filesystem and r.linked
    assert (dest / "N_1.svs").stat().st_ino == src.stat().st_ino  # no bytes copied
    assert src.exists() and r.sha256 == sha(data)
    assert incoming_empty(dest)
    remove_source(ScanUnit.from_path(src), r)
    assert not src.exists() and (dest / "N_1.svs").read_bytes() == data


# --------------------------------------------------------------------------- multi-file units


@pytest.mark.parametrize("cross", [True, False], ids=["cross-fs", "same-fs"])
def test_mirax_moves_as_one_and_is_renamed_consistently(cross: bool, shm: Path, tmp_path: Path) -> None:
    unit = make_mirax((shm if cross else tmp_path) / "scanner")
    before = tree(unit.primary.parent)
    dest = tmp_path / "store"

    r = place_scan(unit, dest, "Study_P1_42.mrxs", sidecar=META, bufsize=64 << 10)

    assert r.dest == dest / "Study_P1_42.mrxs"
    assert r.dest_roots == [dest / "Study_P1_42.mrxs", dest / "Study_P1_42"]
    stored = tree(dest)
    assert stored.pop("Study_P1_42.json")
    sums = stored.pop("SHA256SUMS")
    sums_check(dest)
    expected = {k.replace("slide", "Study_P1_42"): v for k, v in before.items()}
    assert stored == expected
    rels = [f.rel for f in r.files]
    assert rels == sorted(expected)
    manifest = "".join(f"{sha(expected[rel])}  {rel}\n" for rel in rels)
    assert r.sha256 == sha(manifest.encode())
    assert json.loads(r.sidecar.read_text())["sha256"] == r.sha256
    assert r.linked is (not cross)

    remove_source(unit, r)
    assert not unit.primary.exists() and not unit.companion.exists()  # type: ignore[union-attr]
    assert tree(dest) == {**expected, "Study_P1_42.json": r.sidecar.read_bytes(), "SHA256SUMS": sums}


def test_dicom_folder(shm: Path, tmp_path: Path) -> None:
    folder = shm / "scanner" / "1.2.840.99"
    files = {f"IM{i:04d}.dcm": os.urandom(50_000 + i) for i in range(5)}
    files["sub/DICOMDIR"] = os.urandom(100)
    for rel, data in files.items():
        write(folder / rel, data)
    unit = ScanUnit.from_path(folder)
    dest = tmp_path / "store"

    r = place_scan(unit, dest, "Study_7", sidecar=META)

    assert r.dest == dest / "Study_7" and r.sidecar == dest / "Study_7.json"
    assert tree(dest / "Study_7") == files
    assert [f.rel for f in r.files] == sorted(f"Study_7/{k}" for k in files)
    remove_source(unit, r)
    assert not folder.exists()


def test_mirax_resumes_when_only_the_data_folder_was_placed(shm: Path, tmp_path: Path) -> None:
    """A crash between the two renames leaves the data folder in place: only the .mrxs is added."""
    unit = make_mirax(shm / "scanner")
    dest = tmp_path / "store"
    shutil.copytree(unit.companion, dest / "N")  # type: ignore[arg-type]
    folder_inode = (dest / "N" / "Index.dat").stat().st_ino

    r = place_scan(unit, dest, "N.mrxs", sidecar={})

    assert not r.already_present
    assert (dest / "N.mrxs").read_bytes() == unit.primary.read_bytes()
    assert (dest / "N" / "Index.dat").stat().st_ino == folder_inode


# --------------------------------------------------------------------------- existing destinations


def test_different_file_at_destination_is_a_collision(shm: Path, tmp_path: Path) -> None:
    src = write(shm / "a.svs", os.urandom(10_000))
    dest = tmp_path / "store"
    other = write(dest / "N.svs", b"someone else's slide")
    before = tree(dest)

    with pytest.raises(DestinationCollision) as exc:
        place_scan(ScanUnit.from_path(src), dest, "N.svs", sidecar={})

    assert str(other) in str(exc.value) and str(src) in str(exc.value)
    assert tree(dest) == before and src.exists()


def test_same_content_at_destination_is_already_present(shm: Path, tmp_path: Path) -> None:
    data = os.urandom(100_000)
    src = write(shm / "a.svs", data)
    dest = tmp_path / "store"
    existing = write(dest / "N.svs", data)
    ino = existing.stat().st_ino

    r = place_scan(ScanUnit.from_path(src), dest, "N.svs", sidecar=META)

    assert r.already_present and existing.stat().st_ino == ino
    assert json.loads(r.sidecar.read_text())["sha256"] == sha(data)
    remove_source(ScanUnit.from_path(src), r)
    assert not src.exists() and existing.read_bytes() == data


def test_rescan_twice_keeps_both_superseded_images_and_links_sidecars(shm: Path, tmp_path: Path) -> None:
    dest = tmp_path / "store"
    name = "S_P1_7.svs"
    versions = [os.urandom(20_000) for _ in range(3)]
    results = []
    for i, data in enumerate(versions):
        src = write(shm / f"scan{i}.svs", data)
        os.utime(src, (1_700_000_000 + i * 3600,) * 2)  # each scan an hour later
        results.append(
            place_scan(
                ScanUnit.from_path(src), dest, name, sidecar={"n": i}, supersede=dest / name if i else None
            )
        )

    sup = dest / "superseded"
    assert (dest / name).read_bytes() == versions[2]
    first, second = sup / "S_P1_7__20231114T221320.svs", sup / "S_P1_7__20231114T231320.svs"
    assert first.read_bytes() == versions[0] and second.read_bytes() == versions[1]
    assert results[1].superseded == [first] and results[2].superseded == [second]

    live = json.loads((dest / "S_P1_7.json").read_text())
    old1 = json.loads((sup / "S_P1_7__20231114T221320.json").read_text())
    old2 = json.loads((sup / "S_P1_7__20231114T231320.json").read_text())
    assert live["n"] == 2 and live["supersedes"] == "superseded/S_P1_7__20231114T231320.svs"
    assert old2["n"] == 1 and old2["superseded_by"] == name
    assert old2["supersedes"] == "superseded/S_P1_7__20231114T221320.svs"
    assert old1["n"] == 0 and old1["superseded_by"] == name and "supersedes" not in old1


def test_rescan_of_a_dicom_folder_with_a_dot_in_its_name_moves_its_sidecar(shm: Path, tmp_path: Path) -> None:
    """The sidecar of a folder scan is ``<name>.json`` when it is written and when it is superseded
    (a dot in a folder name is not an extension)."""
    dest = tmp_path / "store"
    name = "Study_1.5_620995"
    for i in range(2):
        write(shm / f"scan{i}" / "IM0001.dcm", os.urandom(1000))
        r = place_scan(
            ScanUnit.from_path(shm / f"scan{i}"),
            dest,
            name,
            sidecar={"n": i},
            supersede=dest / name if i else None,
            superseded_label="old",
        )
    assert r.sidecar == dest / f"{name}.json" and json.loads(r.sidecar.read_text())["n"] == 1
    [old_sidecar] = (dest / "superseded").glob("*.json")
    assert json.loads(old_sidecar.read_text())["n"] == 0  # the record moved with its scan
    assert sorted(p.name for p in dest.iterdir()) == [
        ".incoming",
        "SHA256SUMS",
        name,
        f"{name}.json",
        "superseded",
    ]
    sums_check(dest)
    sums_check(dest / "superseded")


def test_rescan_with_same_label_never_overwrites(shm: Path, tmp_path: Path) -> None:
    dest = tmp_path / "store"
    for i in range(3):
        src = write(shm / f"s{i}.svs", os.urandom(1000))
        place_scan(
            ScanUnit.from_path(src),
            dest,
            "N.svs",
            sidecar={},
            supersede=dest / "N.svs",
            superseded_label="rescan",
        )
    assert sorted(p.name for p in (dest / "superseded").iterdir()) == [
        "N__rescan-2.json",
        "N__rescan-2.svs",
        "N__rescan.json",
        "N__rescan.svs",
        "SHA256SUMS",
    ]
    sums_check(dest / "superseded")


def test_rescan_of_mirax_renames_the_superseded_pair(shm: Path, tmp_path: Path) -> None:
    dest = tmp_path / "store"
    place_scan(make_mirax(shm / "a"), dest, "N.mrxs", sidecar={})
    r = place_scan(
        make_mirax(shm / "b", seed=b"v2"),
        dest,
        "N.mrxs",
        sidecar={},
        supersede=dest / "N.mrxs",
        superseded_label="old",
    )
    sup = dest / "superseded"
    assert (sup / "N__old.mrxs").is_file() and (sup / "N__old" / "Data0000.dat").is_file()
    assert r.superseded == [sup / "N__old.mrxs"]
    assert (dest / "N" / "Slidedat.ini").read_bytes().endswith(b"v2")


def test_rescan_stored_under_an_earlier_name(shm: Path, tmp_path: Path) -> None:
    """The sheet changed between scans: the old name is superseded, the new name is placed."""
    dest = tmp_path / "store"
    place_scan(ScanUnit.from_path(write(shm / "a.svs", b"v1")), dest, "S_P1_7.svs", sidecar={})
    r = place_scan(
        ScanUnit.from_path(write(shm / "b.svs", b"v2")),
        dest,
        "S_P2_7.svs",
        sidecar={},
        supersede=dest / "S_P1_7.svs",
        superseded_label="r1",
    )
    assert r.superseded == [dest / "superseded" / "S_P1_7__r1.svs"]
    assert sorted(p.name for p in dest.iterdir() if p.is_file()) == [
        "SHA256SUMS",
        "S_P2_7.json",
        "S_P2_7.svs",
    ]
    sums_check(dest)
    assert json.loads(r.sidecar.read_text())["supersedes"] == "superseded/S_P1_7__r1.svs"


def test_rerun_after_a_crash_before_the_sidecar_restores_the_rescan_link(shm: Path, tmp_path: Path) -> None:
    dest = tmp_path / "store"
    place_scan(ScanUnit.from_path(write(shm / "a.svs", b"v1")), dest, "N.svs", sidecar={})
    src = write(shm / "b.svs", b"v2")
    r = place_scan(
        ScanUnit.from_path(src), dest, "N.svs", sidecar={}, supersede=dest / "N.svs", superseded_label="r1"
    )
    r.sidecar.unlink()  # as if the process died right after the rename

    again = place_scan(ScanUnit.from_path(src), dest, "N.svs", sidecar={"k": 1}, supersede=dest / "N.svs")

    assert again.already_present and again.superseded == []
    meta = json.loads(again.sidecar.read_text())
    assert meta["supersedes"] == "superseded/N__r1.svs" and meta["k"] == 1
    assert sorted(p.name for p in (dest / "superseded").iterdir()) == [
        "N__r1.json",
        "N__r1.svs",
        "SHA256SUMS",
    ]


def test_rerun_after_a_linked_store_is_already_present(tmp_path: Path) -> None:
    src = write(tmp_path / "scanner" / "x.svs", os.urandom(10_000))
    first = place_scan(ScanUnit.from_path(src), tmp_path / "store", "N.svs", sidecar={})
    sidecar_before = first.sidecar.read_bytes()
    again = place_scan(ScanUnit.from_path(src), tmp_path / "store", "N.svs", sidecar={})
    assert again.already_present and again.sha256 == first.sha256
    assert again.sidecar.read_bytes() == sidecar_before  # the first run's record is kept


# --------------------------------------------------------------------------- the source changes


def test_source_vanishing_mid_copy_is_source_changed(shm: Path, tmp_path: Path) -> None:
    src = write(shm / "a.svs", os.urandom(4_000_000))
    dest = tmp_path / "store"

    def unlink_after_first_chunk(path: Path, copied: int) -> None:
        path.unlink(missing_ok=True)

    with pytest.raises(SourceChanged) as exc:
        place_scan(
            ScanUnit.from_path(src),
            dest,
            "N.svs",
            sidecar={},
            bufsize=256 << 10,
            _on_chunk=unlink_after_first_chunk,
        )
    assert str(src) in str(exc.value)
    assert incoming_empty(dest) and not (dest / "N.svs").exists() and not (dest / "N.json").exists()


def test_source_appended_during_copy_is_source_changed(shm: Path, tmp_path: Path) -> None:
    data = os.urandom(2_000_000)
    src = write(shm / "a.svs", data)
    dest = tmp_path / "store"

    def scanner_resumes(path: Path, copied: int) -> None:
        if copied <= 256 << 10:
            with open(path, "ab") as f:
                f.write(b"more tiles")

    with pytest.raises(SourceChanged):
        place_scan(
            ScanUnit.from_path(src), dest, "N.svs", sidecar={}, bufsize=256 << 10, _on_chunk=scanner_resumes
        )
    assert src.read_bytes() == data + b"more tiles"
    assert incoming_empty(dest) and not (dest / "N.svs").exists()


def test_disk_source_growing_after_its_unaligned_end_was_read_is_source_changed(
    shm: Path, tmp_path: Path
) -> None:
    """The reader has read the whole (unaligned) file with O_DIRECT; the scanner then appends. The
    next direct read, at an unaligned offset, is refused by the kernel: the reader goes on through
    the page cache, sees the new bytes, and the copy stops as a changed source (never an EINVAL)."""
    data = os.urandom(10_000)
    src = write(tmp_path / "scanner" / "a.svs", data)
    reads = []

    def scanner_appends_before_the_second_read() -> dict[object, float]:
        reads.append(1)  # the gate asks this before every read of the source
        if len(reads) == 2:
            with open(src, "ab") as f:
                f.write(b"more tiles")
        return {}

    gate = TransferGate()
    gate.follow(scanner_appends_before_the_second_read)
    with pytest.raises(SourceChanged, match="read 10010"):
        place_scan(ScanUnit.from_path(src), shm / "store", "N.svs", sidecar={}, bufsize=64 << 10, gate=gate)
    assert src.read_bytes() == data + b"more tiles"
    assert incoming_empty(shm / "store") and not (shm / "store" / "N.svs").exists()


def test_file_appearing_in_dicom_folder_is_source_changed(shm: Path, tmp_path: Path) -> None:
    folder = shm / "series"
    write(folder / "IM1.dcm", os.urandom(600_000))

    def new_file(path: Path, copied: int) -> None:
        write(folder / "IM2.dcm", b"late")

    with pytest.raises(SourceChanged, match="IM2.dcm appeared"):
        place_scan(
            ScanUnit.from_path(folder),
            tmp_path / "store",
            "N",
            sidecar={},
            bufsize=256 << 10,
            _on_chunk=new_file,
        )
    assert incoming_empty(tmp_path / "store") and not (tmp_path / "store" / "N").exists()


def test_copy_corrupted_on_storage_fails_verification(shm: Path, tmp_path: Path) -> None:
    """Bytes changed on storage after they were written are caught by the re-read."""
    src = write(shm / "a.svs", os.urandom(1_000_000))
    dest = tmp_path / "store"

    def bit_rot(path: Path, copied: int) -> None:
        partial = dest / ".incoming" / "N.svs.partial"
        with open(partial, "r+b") as f:
            f.write(b"\xff" * 16)

    with pytest.raises(StorageUnavailable, match="verify failed"):
        place_scan(ScanUnit.from_path(src), dest, "N.svs", sidecar={}, bufsize=256 << 10, _on_chunk=bit_rot)
    assert incoming_empty(dest) and src.exists()


@pytest.mark.parametrize("direction", ["tmpfs->disk", "disk->tmpfs"])
def test_copy_corrupted_in_a_later_window_fails_verification_with_its_byte_range(
    direction: str, shm: Path, tmp_path: Path
) -> None:
    """Three verify windows of 1 MiB chunks: the writer runs at most a window ahead of the check,
    and bytes changed on storage in the second window (after they were written, before their
    window's fdatasync) are caught by the read-back of exactly that chunk. To tmpfs the write and
    the hashes take each chunk a slice at a time, and so does the read-back: the change is in the
    chunk's third slice."""
    mib = 1 << 20
    src_dir, dest = (shm, tmp_path / "store") if direction == "tmpfs->disk" else (tmp_path, shm / "store")
    src = write(src_dir / "a.svs", os.urandom(72 * mib))

    def bit_rot(path: Path, copied: int) -> None:
        if copied == 40 * mib:
            with open(dest / ".incoming" / "N.svs.partial", "r+b") as f:
                f.seek(36 * mib + 600_000)
                f.write(b"\x00" * 16)

    with pytest.raises(StorageUnavailable, match=f"verify failed: .* in bytes {36 * mib}..{37 * mib}"):
        place_scan(ScanUnit.from_path(src), dest, "N.svs", sidecar={}, bufsize=mib, _on_chunk=bit_rot)
    assert incoming_empty(dest) and src.exists() and not (dest / "N.svs").exists()


@pytest.mark.parametrize("mirax", [False, True], ids=["svs", "mirax"])
def test_destination_appearing_during_the_copy_is_never_replaced(
    mirax: bool, shm: Path, tmp_path: Path
) -> None:
    """Another writer takes the name after the look-before-writing check: the final rename must refuse
    (a plain rename(2) would silently replace their file). A MIRAX data folder already renamed goes back."""
    dest = tmp_path / "store"
    if mirax:
        unit, name = make_mirax(shm / "scanner"), "N.mrxs"
    else:
        unit, name = ScanUnit.from_path(write(shm / "scanner" / "a.svs", os.urandom(1_000_000))), "N.svs"
    source_before = tree(shm / "scanner")
    theirs = dest / name

    def another_agent_stores(path: Path, copied: int) -> None:
        if not theirs.exists():
            write(theirs, b"another agent's scan")

    with pytest.raises(DestinationCollision, match="appeared while") as exc:
        place_scan(unit, dest, name, sidecar=META, bufsize=64 << 10, _on_chunk=another_agent_stores)
    assert exc.value.kind == "destination_collision"
    assert theirs.read_bytes() == b"another agent's scan"
    assert sorted(p.name for p in dest.iterdir()) == [".incoming", name]  # no data folder, no sidecar
    assert incoming_empty(dest) and tree(shm / "scanner") == source_before


def test_stored_file_longer_than_what_was_written_fails_verification(shm: Path, tmp_path: Path) -> None:
    """Bytes past the end of what was written are outside every re-read window: only the size check
    after fsync sees them, and a stored file must never differ in size from its sidecar."""
    data = os.urandom(1_000_000)
    src = write(shm / "a.svs", data)
    dest = tmp_path / "store"

    def another_writer_appends(path: Path, copied: int) -> None:
        if copied == len(data):
            with open(dest / ".incoming" / "N.svs.partial", "ab") as f:
                f.write(b"tail")

    with pytest.raises(StorageUnavailable, match="is 1000004 bytes on storage, 1000000 were written"):
        place_scan(
            ScanUnit.from_path(src),
            dest,
            "N.svs",
            sidecar={},
            bufsize=256 << 10,
            _on_chunk=another_writer_appends,
        )
    assert incoming_empty(dest) and not (dest / "N.svs").exists() and src.read_bytes() == data


def _device_read_bytes() -> int:
    """Bytes this process (all its threads) has made the kernel fetch from block devices."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    raise LookupError("read_bytes")


def _why_device_reads_cannot_be_seen(folder: Path) -> str | None:
    """None when a re-read of evicted pages under ``folder`` shows in read_bytes, else the reason."""
    if not Path("/proc/self/io").exists():
        return "/proc/self/io is missing (no per-task I/O accounting in this kernel)"
    probe = folder / "probe.bin"
    size = 1 << 20
    with open(probe, "wb") as f:
        f.write(os.urandom(size))
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    before = _device_read_bytes()
    probe.read_bytes()
    read = _device_read_bytes() - before
    probe.unlink()
    if read < size:
        return f"reads of {folder} do not reach a block device (tmpfs, overlay or network filesystem?)"
    return None


def test_read_back_comes_from_the_device_not_the_page_cache(shm: Path, tmp_path: Path) -> None:
    """The verifier re-reads what the device returns: every byte of the copy is fetched from the disk.

    Measured with /proc/self/io ``read_bytes`` (bytes fetched from block devices), not with mincore:
    the re-read itself brings the pages back into the cache, so residency after the copy is the same
    either way. The source is on tmpfs, whose reads never count, so the copy is the only device read.
    """
    if os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip(f"{shm} and {tmp_path} are one filesystem, so the scan would be linked, not copied")
    reason = _why_device_reads_cannot_be_seen(tmp_path)
    if reason:
        pytest.skip(reason)
    # One full 32 MiB verify window of 8 MiB chunks, then the rest. The mid-copy window is the one
    # that needs its own fdatasync: its last chunk was handed to the kernel for write-back
    # moments before, and DONTNEED skips pages still under write-back.
    size = 40 << 20
    src = write(shm / "a.svs", os.urandom(size))

    before = _device_read_bytes()
    r = place_scan(ScanUnit.from_path(src), tmp_path / "store", "N.svs", sidecar={}, bufsize=8 << 20)
    from_device = _device_read_bytes() - before
    assert not r.linked and r.dest.stat().st_size == size
    assert from_device >= size, f"only {from_device} of {size} bytes were re-read from the device"

    # The same copy verified from the page cache reads (almost) nothing from the device.
    before = _device_read_bytes()
    place_scan(
        ScanUnit.from_path(src),
        tmp_path / "cached",
        "N.svs",
        sidecar={},
        bufsize=8 << 20,
        verify_from_disk=False,
    )
    assert _device_read_bytes() - before < size // 10


# --------------------------------------------------------------------------- storage problems


def test_read_only_storage(shm: Path, mount_tmpfs) -> None:
    ro = mount_tmpfs("ro", "size=1m,ro")
    src = write(shm / "a.svs", b"x" * 1000)
    with pytest.raises(StorageUnavailable, match="not writable") as exc:
        place_scan(ScanUnit.from_path(src), ro, "N.svs", sidecar={})
    assert exc.value.kind == "storage_unavailable" and str(ro) in str(exc.value)
    assert src.read_bytes() == b"x" * 1000


def test_storage_too_small_for_the_scan(shm: Path, mount_tmpfs) -> None:
    small = mount_tmpfs("small", "size=2m")
    data = os.urandom(5_000_000)
    src = write(shm / "a.svs", data)
    with pytest.raises(StorageUnavailable, match="storage full: need") as exc:
        place_scan(ScanUnit.from_path(src), small, "N.svs", sidecar={}, margin=0)
    assert exc.value.kind == "storage_full" and str(small) in str(exc.value)
    assert incoming_empty(small) and src.read_bytes() == data


def test_storage_filling_up_during_the_copy(shm: Path, mount_tmpfs) -> None:
    small = mount_tmpfs("small", "size=2m")
    data = os.urandom(1_500_000)
    src = write(shm / "a.svs", data)

    def someone_else_fills_it(path: Path, copied: int) -> None:
        with open(small / "other-user.bin", "wb") as f, contextlib.suppress(OSError):
            f.write(b"\0" * (2 << 20))

    with pytest.raises(StorageUnavailable, match="storage full") as exc:
        place_scan(
            ScanUnit.from_path(src),
            small,
            "N.svs",
            sidecar={},
            margin=0,
            bufsize=256 << 10,
            _on_chunk=someone_else_fills_it,
        )
    assert exc.value.kind == "storage_full"
    assert incoming_empty(small) and not (small / "N.svs").exists() and src.read_bytes() == data


def test_missing_storage_root(shm: Path, tmp_path: Path) -> None:
    src = write(shm / "a.svs", b"x")
    with pytest.raises(StorageUnavailable, match="missing"):
        place_scan(
            ScanUnit.from_path(src),
            tmp_path / "nas" / "S",
            "N.svs",
            sidecar={},
            storage_root=tmp_path / "nas",
        )
    assert not (tmp_path / "nas").exists()


def test_unsafe_name_is_refused(shm: Path, tmp_path: Path) -> None:
    src = write(shm / "a.svs", b"x")
    for bad in ["../N.svs", ".incoming", "N.tif", ""]:
        with pytest.raises(ValueError):
            place_scan(ScanUnit.from_path(src), tmp_path, bad, sidecar={})


def test_free_space_of_a_path_not_yet_created(tmp_path: Path) -> None:
    assert free_space(tmp_path / "not" / "yet") == free_space(tmp_path) > 0


# --------------------------------------------------------------------------- removing the source


def test_remove_source_refuses_when_the_source_changed(shm: Path, tmp_path: Path) -> None:
    src = write(shm / "a.svs", os.urandom(10_000))
    r = place_scan(ScanUnit.from_path(src), tmp_path / "store", "N.svs", sidecar={})
    with open(src, "ab") as f:
        f.write(b"rescanned in place")
    with pytest.raises(SourceChanged, match="changed since it was stored"):
        remove_source(ScanUnit.from_path(src), r)
    assert src.exists()


def test_remove_source_refuses_when_the_stored_copy_is_gone(shm: Path, tmp_path: Path) -> None:
    src = write(shm / "a.svs", os.urandom(10_000))
    r = place_scan(ScanUnit.from_path(src), tmp_path / "store", "N.svs", sidecar={})
    r.dest.unlink()
    with pytest.raises(StorageUnavailable, match="keeping the source"):
        remove_source(ScanUnit.from_path(src), r)
    assert src.exists()


def test_remove_source_finishes_a_half_done_removal(shm: Path, tmp_path: Path) -> None:
    unit = make_mirax(shm / "scanner")
    r = place_scan(unit, tmp_path / "store", "N.mrxs", sidecar={})
    unit.primary.unlink()  # an earlier remove_source died after its first unlink
    (unit.companion / "Index.dat").unlink()  # type: ignore[operator]
    remove_source(unit, r)
    assert not unit.companion.exists()  # type: ignore[union-attr]


# --------------------------------------------------------------------------- quarantine and cleanup


def test_quarantine_across_filesystems_never_overwrites(shm: Path, tmp_path: Path) -> None:
    q = tmp_path / "quarantine"
    first = write(shm / "bad.svs", b"first")
    p1 = quarantine(ScanUnit.from_path(first), q, "no barcode in the name or the label")
    second = write(shm / "bad.svs", b"second")
    p2 = quarantine(ScanUnit.from_path(second), q, "corrupt")

    assert p1 == q / "bad.svs" and p2 == q / "bad-2.svs"
    assert p1.read_bytes() == b"first" and p2.read_bytes() == b"second"
    assert "no barcode" in (q / "bad.svs.reason.txt").read_text()
    assert "corrupt" in (q / "bad-2.svs.reason.txt").read_text()
    assert not first.exists() and incoming_empty(q)


def test_quarantine_of_mirax(shm: Path, tmp_path: Path) -> None:
    unit = make_mirax(shm / "scanner")
    before = tree(shm / "scanner")
    p = quarantine(unit, tmp_path / "q", "corrupt slide")
    assert p == tmp_path / "q" / "slide.mrxs"
    assert {k: v for k, v in tree(tmp_path / "q").items() if not k.endswith(".reason.txt")} == before
    assert not unit.primary.exists() and not (shm / "scanner" / "slide").exists()


def test_clean_incoming_removes_only_partials(tmp_path: Path) -> None:
    root = tmp_path / "store"
    inc = root / "Study" / "Exp" / ".incoming"
    write(inc / "A.svs.partial", b"half")
    write(inc / "B.mrxs.partial" / "B" / "Data0000.dat", b"half")
    write(inc / "C.json.x1.tmp", b"{")
    keep_inside = write(inc / "notes.txt", b"not ours")
    keep_outside = write(root / "Study" / "Exp" / "D.svs.partial", b"a stored file with an odd name")

    assert clean_incoming(root, older_than=3600) == []
    removed = clean_incoming(root)

    assert sorted(p.name for p in removed) == ["A.svs.partial", "B.mrxs.partial", "C.json.x1.tmp"]
    assert sorted(p.name for p in inc.iterdir()) == ["notes.txt"]
    assert keep_inside.exists() and keep_outside.exists()


def test_partial_left_by_a_crash_does_not_block_the_next_run(shm: Path, tmp_path: Path) -> None:
    dest = tmp_path / "store"
    write(dest / ".incoming" / "N.svs.partial", b"stale")
    src = write(shm / "a.svs", b"fresh scan")
    r = place_scan(ScanUnit.from_path(src), dest, "N.svs", sidecar={})
    assert r.dest.read_bytes() == b"fresh scan" and incoming_empty(dest)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
