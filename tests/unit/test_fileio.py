"""The shared file-system primitives: atomic writes and a rename that never replaces."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from scanner_agent import fileio
from scanner_agent.fileio import TMP_SUFFIX, rename_noreplace, write_atomic


def test_rename_noreplace_moves_to_a_free_name(tmp_path: Path) -> None:
    src, dst = tmp_path / "a", tmp_path / "b"
    src.write_bytes(b"new")
    rename_noreplace(src, dst)
    assert dst.read_bytes() == b"new" and not src.exists()


@pytest.mark.parametrize("kind", ["file", "folder", "dangling symlink"])
def test_rename_noreplace_never_replaces_what_is_there(tmp_path: Path, kind: str) -> None:
    """A plain rename(2) would silently replace a file (or an empty folder, or a link) at ``dst``."""
    src, dst = tmp_path / "staged", tmp_path / "stored"
    if kind == "folder":
        src.mkdir()
        dst.mkdir()  # empty, so rename(2) would replace it
    else:
        src.write_bytes(b"new")
        if kind == "file":
            dst.write_bytes(b"someone else's scan")
        else:
            dst.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        rename_noreplace(src, dst)
    assert os.path.lexists(src)
    if kind == "file":
        assert dst.read_bytes() == b"someone else's scan"
    elif kind == "folder":
        assert dst.is_dir() and src.is_dir()
    else:
        assert dst.is_symlink() and os.readlink(dst) == str(tmp_path / "nowhere")


def test_rename_noreplace_without_renameat2_still_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path taken where the kernel or filesystem lacks RENAME_NOREPLACE (EINVAL/ENOSYS)."""
    monkeypatch.setattr(fileio, "_renameat2", None)
    src, dst = tmp_path / "a", tmp_path / "b"
    src.write_bytes(b"new")
    dst.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        rename_noreplace(src, dst)
    assert dst.read_bytes() == b"old" and src.read_bytes() == b"new"
    dst.unlink()
    rename_noreplace(src, dst)
    assert dst.read_bytes() == b"new"


def test_rename_noreplace_reports_other_errors_with_both_names(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as exc:
        rename_noreplace(tmp_path / "missing", tmp_path / "b")
    assert exc.value.filename == str(tmp_path / "missing")


def test_write_atomic_replaces_with_exact_mode_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "side.json"
    target.write_bytes(b"old")
    old_umask = os.umask(0o077)
    try:
        write_atomic(target, b"new", mode=0o644)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["side.json"]


def test_write_atomic_with_a_temp_folder_keeps_it_clean(tmp_path: Path) -> None:
    tmp_dir = tmp_path / ".incoming"
    tmp_dir.mkdir()
    write_atomic(tmp_path / "note.txt", b"x", tmp_dir=tmp_dir)
    assert (tmp_path / "note.txt").read_bytes() == b"x"
    assert stat.S_IMODE((tmp_path / "note.txt").stat().st_mode) == 0o640
    assert not any(tmp_dir.iterdir())


def test_write_atomic_failure_removes_its_temp_and_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "side.json"
    target.mkdir()  # os.replace of a file onto a folder fails
    with pytest.raises(OSError):
        write_atomic(target, b"new")
    assert target.is_dir() and not [p for p in tmp_path.iterdir() if p.name.endswith(TMP_SUFFIX)]
