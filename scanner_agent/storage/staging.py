"""Staging a scan in ``.incoming``: hard links on the same filesystem, else verified copies.

A link is as cheap and atomic as a rename, but the scan also stays where the scanner wrote it
until ``remove_source``, so there is one protocol for both cases and every crash point leaves
the source in place. Filesystems that refuse links fall back to the copy.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

from scanner_agent.fileio import fsync_dir
from scanner_agent.storage.checks import require_room
from scanner_agent.storage.copy_engine import ChunkHook, copy_file, hash_file
from scanner_agent.storage.oserrors import on_source, on_storage, source_error, storage_error
from scanner_agent.storage.paths import staged_path
from scanner_agent.storage.records import SourceFile
from scanner_agent.storage.throttle import TransferGate

log = logging.getLogger(__name__)

#: Why a hard link can fail while a copy would still work.
NO_LINK_ERRNOS = frozenset(
    {
        errno.EXDEV,
        errno.EPERM,
        errno.EMLINK,
        errno.ENOTSUP,
        errno.EOPNOTSUPP,
        errno.ENOSYS,
        errno.EINVAL,
    }
)


def remove_tree(path: Path) -> None:
    """Remove a file or folder we created; never follows links out of it."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def _stage_links(files: list[SourceFile], partial: Path, multi: bool) -> None:
    for f in files:
        target = staged_path(partial, f.rel, multi)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f.path, target, follow_symlinks=False)
        except FileNotFoundError as exc:
            if not f.path.exists():
                raise source_error(exc, f.path) from exc
            raise


def _stage_copies(
    files: list[SourceFile],
    partial: Path,
    multi: bool,
    bufsize: int,
    verify_from_disk: bool,
    on_chunk: ChunkHook | None,
    gate: TransferGate | None,
) -> dict[str, str]:
    # The copy engine takes the gate where it takes the per-chunk hook (it recognises the type).
    if gate is not None and on_chunk is not None:
        raise ValueError("a copy takes a gate or an _on_chunk hook, not both")
    hook = gate if gate is not None else on_chunk
    shas: dict[str, str] = {}
    for f in files:
        target = staged_path(partial, f.rel, multi)
        with on_storage(target, "create"):
            target.parent.mkdir(parents=True, exist_ok=True)
        shas[f.rel] = copy_file(f, target, bufsize, verify_from_disk, hook)
    return shas


def _fsync_tree(partial: Path) -> None:
    """fsync every folder of a staged multi-file scan; renaming its top later only syncs the top."""
    with on_storage(partial):
        for dirpath, _dirs, _files in os.walk(partial):
            fsync_dir(Path(dirpath))


def _sole_names(files: list[SourceFile]) -> bool:
    """Whether no source file has a second name. One that does (a hard link outside the scanner's
    folder) is copied: linking it would leave storage sharing an inode with that other name once the
    source is removed, so a write through it would change the stored, verified scan."""
    for f in files:
        with on_source(f.path):
            if os.stat(f.path, follow_symlinks=False).st_nlink > 1:
                return False
    return True


def stage(
    files: list[SourceFile],
    partial: Path,
    multi: bool,
    same_fs: bool,
    dest_dir: Path,
    margin: int,
    bufsize: int,
    verify_from_disk: bool,
    on_chunk: ChunkHook | None,
    gate: TransferGate | None = None,
) -> tuple[dict[str, str], bool]:
    """Put ``files`` under ``partial``; return their sha256 by rel and whether they were linked."""
    if multi:
        with on_storage(partial, "create"):
            partial.mkdir()
    if same_fs and _sole_names(files):
        try:
            _stage_links(files, partial, multi)
        except OSError as exc:
            if exc.errno not in NO_LINK_ERRNOS:
                raise storage_error(exc, partial) from exc
            log.info("hard links refused at %s (%s); copying instead", partial, exc.strerror)
            remove_tree(partial)
            if multi:
                partial.mkdir()
        else:
            # Same inode as the source: there is no second copy to verify, only the record's hash.
            shas = {}
            for f in files:
                with on_source(f.path):
                    shas[f.rel] = hash_file(f.path, bufsize)
            if multi:
                _fsync_tree(partial)
            return shas, True
    require_room(dest_dir, sum(f.size for f in files), margin)
    shas = _stage_copies(files, partial, multi, bufsize, verify_from_disk, on_chunk, gate)
    if multi:
        _fsync_tree(partial)
    return shas, False
