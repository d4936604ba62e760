"""Placing one scan into storage (``place_scan``): the protocol that keeps it recoverable at every step.

The safety argument is the order of the steps; each one leaves the scan recoverable if the
process dies right after it:

1. **Check storage.** ``dest_dir`` must exist or be creatable, be writable (a real probe file,
   because root passes every permission check) and have room for the scan plus a margin
   (when copying; links take no room). Otherwise ``StorageUnavailable``; the source is not touched.
2. **Look before writing.** If the destination name is taken, hash both sides: the same bytes
   mean an earlier run got this far (``already_present``; only what is missing is placed); other
   bytes are either a rescan (the caller passed that path as ``supersede``) or a
   ``DestinationCollision``. Nothing in storage is ever overwritten.
3. **Stage** into ``dest_dir/.incoming/<name>.partial`` (a folder for multi-file scans).
   Across filesystems: copy, hashing the source in the same read pass, fsync every file.
   Four threads overlap per file: a reader fills buffers ahead, the writer writes them (and asks
   the kernel to start writing each chunk back at once, so a window's ``fdatasync`` finds it
   mostly on the device), a hasher hashes them, and the verifier re-reads a window behind.
   On the same filesystem: *hard-link* each file instead of renaming it. A link is as cheap
   and atomic as a rename, but the scan also stays where the scanner wrote it until
   ``remove_source`` (step 7), so there is one protocol for both cases and every crash point
   leaves the source in place. (A rename would make the source vanish before the journal says
   "stored", and a MIRAX scan, being two renames, could be left split across two folders.)
   Filesystems that refuse links fall back to the copy.
4. **Verify.** The copy is read back and its xxh3-128 compared, chunk by chunk, with the
   xxh3-128 of the very buffers the source sha256 was computed from (``storage/readback.py``),
   so a match ties the stored bytes to the source's recorded sha256 end to end at a fraction
   of a second sha256's cost (or of a byte compare's memory traffic). The read-back trails the writer by
   one window in its own thread, after ``fdatasync`` and ``POSIX_FADV_DONTNEED`` on that
   window, so it sees what the device returns rather than pages still in memory. Then the
   source is stat-ed again: any change in its files, sizes, mtimes or inodes (the scanner
   resumed writing, someone moved it) is ``SourceChanged``. Linked files share the source's
   inode, so there is nothing to compare; they are hashed once for the record. (A scanner
   still holding such a file open could change both names; the completeness check and the
   fingerprint checks here and in ``remove_source`` are the guard, as they would be for a rename.)
5. **Rescan.** The earlier image (with its companion folder and sidecar) moves to
   ``superseded/<stem>__<label>.<ext>``; its sidecar gains ``superseded_by``.
6. **Place.** ``rename`` from ``.incoming`` with no-replace semantics (a MIRAX companion folder
   before its ``.mrxs``, so a visible ``.mrxs`` always has its data), fsync the folder, then
   write the sidecar atomically, then the folder's ``SHA256SUMS`` (``storage/sha256sums.py``).
7. **Remove the source**: a separate call, made after the journal records "stored". It checks
   the source is still what was copied and that the stored files are still there.

On any error the partial is removed and the source is untouched. Files in ``.incoming`` are
never the only copy of anything, so ``clean_incoming`` may delete them after a crash.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scanner_agent.core.errors import DestinationCollision, SourceChanged
from scanner_agent.fileio import fsync_dir, rename_noreplace
from scanner_agent.scanunit import ScanUnit
from scanner_agent.storage.checks import DEFAULT_MARGIN, human_size, prepare_storage, same_filesystem
from scanner_agent.storage.copy_engine import ChunkHook, hash_file
from scanner_agent.storage.oserrors import on_source, on_storage, storage_error
from scanner_agent.storage.paths import (
    PARTIAL_SUFFIX,
    check_name,
    root_names,
    sidecar_path,
    tree_files,
)
from scanner_agent.storage.records import SourceFile, StoredFile, TransferResult, manifest_sha
from scanner_agent.storage.sha256sums import SUMS_NAME, edit_sums, folder_lock, in_roots
from scanner_agent.storage.sidecar import write_sidecar
from scanner_agent.storage.source import require_unchanged, snapshot
from scanner_agent.storage.staging import remove_tree, stage
from scanner_agent.storage.supersede import supersede as supersede_scan
from scanner_agent.storage.throttle import TransferGate

log = logging.getLogger(__name__)


def place_scan(
    unit: ScanUnit,
    dest_dir: Path,
    name: str,
    *,
    sidecar: dict[str, Any],
    supersede: Path | None = None,
    superseded_label: str | None = None,
    incoming_dirname: str = ".incoming",
    bufsize: int = 8 << 20,
    storage_root: Path | None = None,
    margin: int = DEFAULT_MARGIN,
    verify_from_disk: bool = True,
    gate: TransferGate | None = None,
    _on_chunk: ChunkHook | None = None,
) -> TransferResult:
    """Store ``unit`` as ``dest_dir/name`` (see the module docstring for the protocol).

    ``supersede`` is the stored path of an earlier scan of the same barcode (a rescan): it moves
    to ``superseded/`` beside it. ``storage_root``, when given, must already exist, so a share that
    is not mounted is never silently replaced by local folders. ``margin`` is the free space kept
    beyond the scan; ``verify_from_disk=False`` lets the read-back come from the page cache.
    ``gate`` (``[transfer]``) paces the copy's reads and sets its threads' I/O priority.
    The source is never removed here: see ``remove_source``.
    """
    started = time.monotonic()
    dest_dir = Path(dest_dir)
    check_name(unit, name, incoming_dirname)
    files = list(snapshot(unit, name))
    roots = root_names(unit, name)
    multi = len(roots) > 1 or unit.is_folder
    incoming = dest_dir / incoming_dirname
    prepare_storage(dest_dir, incoming, storage_root)
    with on_source(unit.primary):
        same_fs = same_filesystem(unit.primary, incoming)
    shas, present, old = _what_to_do(unit, files, dest_dir, name, roots, supersede, bufsize)

    to_copy = [f for f in files if not any(f.rel == r or f.rel.startswith(r + "/") for r in present)]
    partial = incoming / (name + PARTIAL_SUFFIX)
    remove_tree(partial)  # left by a crashed run; never the only copy of anything
    linked = False
    superseded: list[Path] = []
    try:
        if to_copy:
            copied, linked = stage(
                to_copy, partial, multi, same_fs, dest_dir, margin, bufsize, verify_from_disk, _on_chunk, gate
            )
            if any(shas.get(rel, sha) != sha for rel, sha in copied.items()):
                raise SourceChanged(
                    f"source changed during transfer: {unit.primary} hashed differently in two reads",
                    path=str(unit.primary),
                )
            shas.update(copied)
        require_unchanged(tuple(files), unit)
        if old is not None:
            with on_storage(old):
                superseded.append(supersede_scan(old, superseded_label, name, incoming_dirname))
        if to_copy:
            _place_or_collide(partial, dest_dir, [r for r in roots if r not in present], multi, unit)
    except BaseException:
        remove_tree(partial)
        raise

    stored = sorted((StoredFile(f.rel, f.size, shas[f.rel]) for f in files), key=lambda s: s.rel)
    result = TransferResult(
        dest=dest_dir / name,
        dest_roots=[dest_dir / r for r in reversed(roots)],
        sidecar=sidecar_path(dest_dir / name),
        files=stored,
        total_size=sum(f.size for f in stored),
        sha256=manifest_sha(stored),
        seconds=time.monotonic() - started,
        same_filesystem=same_fs,
        already_present=not to_copy,
        superseded=superseded,
        source_files=tuple(files),
        linked=linked,
    )
    write_sidecar(result, name, sidecar, incoming)
    # Last, like the sidecar: SHA256SUMS lists only what is in place (idempotent on a resumed run).
    with on_storage(dest_dir / SUMS_NAME), folder_lock(dest_dir):
        edit_sums(dest_dir, incoming, drop=in_roots(roots), add={s.rel: s.sha256 for s in stored})
    log.info(
        "stored %s as %s (%s, %.1fs, %s)",
        unit.primary,
        result.dest,
        human_size(result.total_size),
        result.seconds,
        "already present" if not to_copy else "linked" if linked else "copied",
    )
    return result


def _place_or_collide(partial: Path, dest_dir: Path, roots: list[str], multi: bool, unit: ScanUnit) -> None:
    try:
        place_staged(partial, dest_dir, roots, multi)
    except FileExistsError as exc:
        raise DestinationCollision(
            f"{exc.filename} appeared while {unit.primary} was being stored; not overwriting",
            path=str(exc.filename),
        ) from exc
    except OSError as exc:
        raise storage_error(exc, dest_dir) from exc


def place_staged(partial: Path, dest_dir: Path, roots: list[str], multi: bool) -> None:
    """Rename staged roots into place, in order; undo the ones done if a later one fails."""
    done: list[tuple[Path, Path]] = []
    try:
        for root in roots:
            src = partial / root if multi else partial
            dst = dest_dir / root
            rename_noreplace(src, dst)
            done.append((src, dst))
    except BaseException:
        for src, dst in reversed(done):
            os.rename(dst, src)
        raise
    fsync_dir(dest_dir)
    if multi:
        partial.rmdir()


def _compare_existing(
    files: list[SourceFile], dest_dir: Path, roots: list[str], bufsize: int
) -> tuple[dict[str, str], list[str], list[str]]:
    """Hash what is already at the destination against the source.

    Returns (source sha256 by rel, roots already holding the same bytes, roots holding other bytes).
    """
    src_sha: dict[str, str] = {}
    for f in files:
        with on_source(f.path):
            src_sha[f.rel] = hash_file(f.path, bufsize)
    same: list[str] = []
    differ: list[str] = []
    for root in roots:
        path = dest_dir / root
        if not os.path.lexists(path):
            continue
        want = {rel: sha for rel, sha in src_sha.items() if rel == root or rel.startswith(root + "/")}
        with on_storage(path, "read"):
            have = tree_files(path, dest_dir)
            if set(have) != set(want):
                differ.append(root)
                continue
            for rel, p in have.items():
                if p.is_file() and _same_inode(p, files, rel):
                    continue  # a link to the source made by an earlier run
                if hash_file(p, bufsize) != want[rel]:
                    differ.append(root)
                    break
            else:
                same.append(root)
    return src_sha, same, differ


def _same_inode(p: Path, files: list[SourceFile], rel: str) -> bool:
    st = p.stat()
    return any(f.rel == rel and f.ino == st.st_ino and f.path.stat().st_dev == st.st_dev for f in files)


def _describe(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return str(path)
    modified = datetime.fromtimestamp(st.st_mtime, UTC)
    return f"{path} ({human_size(st.st_size)}, modified {modified:%Y-%m-%d %H:%M} UTC)"


def _what_to_do(
    unit: ScanUnit,
    files: list[SourceFile],
    dest_dir: Path,
    name: str,
    roots: list[str],
    supersede: Path | None,
    bufsize: int,
) -> tuple[dict[str, str], list[str], Path | None]:
    """Step 2: (source sha256 known so far, roots already stored identically, earlier scan to supersede)."""
    primary_dest = (dest_dir / name).absolute()
    rescan = supersede is not None and Path(supersede).absolute() == primary_dest
    if any(os.path.lexists(dest_dir / r) for r in roots):
        shas, present, differ = _compare_existing(files, dest_dir, roots, bufsize)
        if differ and not rescan:
            raise DestinationCollision(
                f"{_describe(dest_dir / differ[0])} already holds a different scan than "
                f"{_describe(unit.primary)}; not overwriting",
                path=str(dest_dir / differ[0]),
            )
        if differ:
            return shas, [], dest_dir / name
        return shas, present, None
    if supersede is not None and not rescan and os.path.lexists(supersede):
        return {}, [], Path(supersede)  # the same barcode, stored under an earlier name
    return {}, [], None
