"""Verified placement of one scan into storage, rescans into ``superseded/``, and quarantine.

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
4. **Verify.** The copy is read back and compared byte for byte with the very buffers the
   source hash was computed from, so equal bytes prove the stored file's sha256 is the
   source's (exact, and it spares a core a second sha256). The read-back trails the writer by
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
   write the sidecar atomically.
7. **Remove the source**: a separate call, made after the journal records "stored". It checks
   the source is still what was copied and that the stored files are still there.

On any error the partial is removed and the source is untouched. Files in ``.incoming`` are
never the only copy of anything, so ``clean_incoming`` may delete them after a crash.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scanner_agent.core.errors import (
    DestinationCollision,
    ScanError,
    SourceChanged,
    StorageFull,
    StorageUnavailable,
    UnreadableSource,
)
from scanner_agent.scanunit import ScanUnit

log = logging.getLogger(__name__)

SUPERSEDED_DIRNAME = "superseded"
PARTIAL_SUFFIX = ".partial"
TMP_SUFFIX = ".tmp"
SIDECAR_MODE = 0o640
#: Free space kept beyond the scan itself, so storage is never filled to the last byte.
DEFAULT_MARGIN = 64 << 20
#: How far the verifying reader trails the writer (and the source bytes kept in memory to compare
#: with); each window costs one fdatasync.
VERIFY_WINDOW = 32 << 20

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_READONLY_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}
_GONE_ERRNOS = {errno.ENOENT, errno.ESTALE}
#: Why a hard link can fail while a copy would still work.
_NO_LINK_ERRNOS = {
    errno.EXDEV,
    errno.EPERM,
    errno.EMLINK,
    errno.ENOTSUP,
    errno.EOPNOTSUPP,
    errno.ENOSYS,
    errno.EINVAL,
}

ChunkHook = Callable[[Path, int], None]


@dataclass(frozen=True)
class StoredFile:
    rel: str  # relative to the destination folder: "Name.svs", "Name/Data0000.dat"
    size: int
    sha256: str


@dataclass(frozen=True)
class SourceFile:
    """One source file as it was when the transfer started."""

    path: Path
    rel: str  # its path in the destination folder
    size: int
    mtime_ns: int
    ino: int


@dataclass
class TransferResult:
    dest: Path
    dest_roots: list[Path]
    sidecar: Path
    files: list[StoredFile]
    total_size: int
    sha256: str
    seconds: float
    same_filesystem: bool
    already_present: bool
    superseded: list[Path]
    #: The source as copied; ``remove_source`` refuses to delete anything that differs from it.
    source_files: tuple[SourceFile, ...] = field(default=(), repr=False)
    #: True when storage holds hard links to the source inodes (same filesystem).
    linked: bool = False


# --------------------------------------------------------------------------- errors


def _storage_error(exc: OSError, path: Path, what: str = "write") -> StorageUnavailable:
    """Map an OSError on the storage side to StorageUnavailable, naming the path."""
    where = exc.filename or path
    if exc.errno in _FULL_ERRNOS:
        return StorageFull(f"storage full: could not {what} {where}", path=str(path))
    if exc.errno in _READONLY_ERRNOS:
        return StorageUnavailable(f"storage not writable: {where} ({exc.strerror})", path=str(path))
    if exc.errno in _GONE_ERRNOS:
        return StorageUnavailable(f"storage missing: {where} ({exc.strerror})", path=str(path))
    return StorageUnavailable(f"storage error at {where}: {exc.strerror}", path=str(path))


def _source_error(exc: OSError, path: Path) -> ScanError:
    where = exc.filename or path
    if exc.errno in _GONE_ERRNOS:
        return SourceChanged(f"source vanished during transfer: {where}", path=str(path))
    return UnreadableSource(f"cannot read source {where}: {exc.strerror}", path=str(path))


@contextmanager
def _on_storage(path: Path, what: str = "write") -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise _storage_error(exc, path, what) from exc


@contextmanager
def _on_source(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise _source_error(exc, path) from exc


# --------------------------------------------------------------------------- small file-system helpers

_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_SYNC_FILE_RANGE_WRITE = 2
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _rename_noreplace(src: Path, dst: Path) -> None:
    """rename(2) that fails with EEXIST instead of replacing ``dst`` (renameat2 NOREPLACE)."""
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        # Filesystems without the flag (some network shares) say EINVAL: fall back to check-then-rename,
        # racy only against another writer in our own .incoming/ folders.
        if err not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err), str(src), None, str(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some network filesystems cannot fsync a directory; data is already synced
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def _remove_tree(path: Path) -> None:
    """Remove a file or folder we created; never follows links out of it."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def free_space(path: Path) -> int:
    """Bytes available to this process at ``path`` (or its nearest existing ancestor)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def _write_atomic(path: Path, data: bytes, tmp_dir: Path, mode: int = SIDECAR_MODE) -> None:
    """Write ``path`` so a reader sees the old content or the new, never a torn file."""
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.", suffix=TMP_SUFFIX, dir=tmp_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # exactly this mode, whatever the umask
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


# --------------------------------------------------------------------------- hashing and copying


def hash_file(path: Path, bufsize: int = 8 << 20) -> str:
    """sha256 of a file, read sequentially through one reusable buffer."""
    h = hashlib.sha256()
    buf = bytearray(bufsize)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


#: Tells the verifier the writer gave up; its buffers go back to the pool unchecked.
_ABORT = object()


class _Verifier(threading.Thread):
    """Compares what storage gives back with the bytes that were written, a window behind the writer.

    Each window is flushed with ``fdatasync`` and evicted with ``POSIX_FADV_DONTNEED`` before it
    is re-read, so the comparison is with what the device returns, not the writer's pages still
    in memory. The reference is the very buffer the source hash was computed from, so equal
    bytes mean the copy's sha256 is the source's, without spending a core on a second sha256.
    """

    def __init__(
        self,
        wfd: int,
        path: Path,
        bufsize: int,
        window_chunks: int,
        from_disk: bool,
        free: queue.Queue[bytearray],
    ) -> None:
        super().__init__(name=f"verify {path.name}", daemon=True)
        self.path, self._wfd = path, wfd
        self._window_chunks, self._from_disk, self._free = window_chunks, from_disk, free
        #: (buffer, offset, length) of each written chunk; None when the file is complete and
        #: fsynced; _ABORT when the writer gave up.
        self.chunks: queue.Queue[tuple[bytearray, int, int] | None | object] = queue.Queue()
        self.error: BaseException | None = None
        self._scratch = bytearray(bufsize)
        self._view = memoryview(self._scratch)

    def run(self) -> None:
        batch: list[tuple[bytearray, int, int]] = []
        try:
            rfd = os.open(self.path, os.O_RDONLY)
        except BaseException as exc:
            self.error, rfd = exc, -1
        try:
            while True:
                item = self.chunks.get()
                if item is _ABORT:
                    return
                if item is not None:
                    batch.append(item)  # type: ignore[arg-type]
                if item is None or len(batch) >= self._window_chunks:
                    self._check(rfd, batch, synced=item is None)
                    batch = []
                if item is None:
                    return
        finally:
            for buf, _off, _n in batch:
                self._free.put(buf)
            if rfd >= 0:
                os.close(rfd)

    def _check(self, rfd: int, batch: list[tuple[bytearray, int, int]], synced: bool) -> None:
        """Re-read one window and compare; always hand the buffers back so the writer never waits forever."""
        try:
            if self.error is None and batch:
                start, end = batch[0][1], batch[-1][1] + batch[-1][2]
                if self._from_disk:
                    if not synced:
                        os.fdatasync(self._wfd)  # DONTNEED only drops clean pages
                    os.posix_fadvise(rfd, start, end - start, os.POSIX_FADV_DONTNEED)
                for buf, offset, n in batch:
                    self._compare(rfd, buf, offset, n)
        except BaseException as exc:
            self.error = exc
        finally:
            for buf, _off, _n in batch:
                self._free.put(buf)

    def _compare(self, rfd: int, buf: bytearray, offset: int, n: int) -> None:
        got = 0
        while got < n:  # a short read is legal; an empty one means the file is short
            k = os.preadv(rfd, [self._view[got:n]], offset + got)
            if k == 0:
                break
            got += k
        # bytearray == bytearray is one memcmp (memoryviews would compare item by item)
        same = got == n and (self._scratch == buf if n == len(buf) else self._scratch[:n] == buf[:n])
        if not same:
            raise StorageUnavailable(
                f"verify failed: {self.path} reads back differently from what was written "
                f"in bytes {offset}..{offset + n}",
                path=str(self.path),
            )


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _copy_file(
    src: SourceFile, dst: Path, bufsize: int, verify_from_disk: bool, on_chunk: ChunkHook | None
) -> str:
    """Copy one file, hashing the source in the same read pass, and verify the copy; return its sha256."""
    with _on_source(src.path):
        sfd = os.open(src.path, os.O_RDONLY)
    try:
        os.posix_fadvise(sfd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        with _on_storage(dst):
            wfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
        try:
            return _copy_fds(sfd, wfd, src, dst, bufsize, verify_from_disk, on_chunk)
        finally:
            os.close(wfd)
    finally:
        os.close(sfd)


def _copy_fds(
    sfd: int,
    wfd: int,
    src: SourceFile,
    dst: Path,
    bufsize: int,
    verify_from_disk: bool,
    on_chunk: ChunkHook | None,
) -> str:
    window_chunks = max(1, VERIFY_WINDOW // bufsize)
    free: queue.Queue[bytearray] = queue.Queue()
    # One window under verification, one being written behind it, and a few read ahead: the
    # writer never waits for the verifier's fdatasync of the window before.
    for _ in range(2 * window_chunks + 2):
        free.put(bytearray(bufsize))
    verifier = _Verifier(wfd, dst, bufsize, window_chunks, verify_from_disk, free)
    verifier.start()
    try:
        source_sha, copied = _pump(sfd, wfd, src, dst, free, verifier, on_chunk, verify_from_disk)
        with _on_storage(dst):
            os.utime(wfd, ns=(src.mtime_ns, src.mtime_ns))  # keep the scan time on the stored file
            os.fsync(wfd)
            stored_size = os.fstat(wfd).st_size
        verifier.chunks.put(None)
    except BaseException:
        verifier.chunks.put(_ABORT)
        raise
    finally:
        verifier.join()
    if verifier.error is not None:
        if isinstance(verifier.error, OSError):
            raise _storage_error(verifier.error, dst, "verify") from verifier.error
        raise verifier.error
    if stored_size != copied:
        raise StorageUnavailable(
            f"verify failed: {dst} is {stored_size} bytes on storage, {copied} were written", path=str(dst)
        )
    return source_sha


def _next_buffer(
    free: queue.Queue[bytearray], verifier: _Verifier, stop: threading.Event
) -> bytearray | None:
    """A free buffer, or None once told to stop; a dead verifier (which would never hand one back)
    is an error, not a hang."""
    while not stop.is_set():
        try:
            return free.get(timeout=0.5)
        except queue.Empty:
            if not verifier.is_alive():
                raise verifier.error or RuntimeError(f"verifier for {verifier.path} stopped") from None
    return None


#: A written chunk as the verifier gets it: (buffer, offset in the file, length).
_Chunk = tuple[bytearray, int, int]


def _read_ahead(
    sfd: int,
    src: SourceFile,
    free: queue.Queue[bytearray],
    verifier: _Verifier,
    out: queue.Queue[tuple[bytearray, int] | BaseException],
    stop: threading.Event,
) -> None:
    """Reader thread: fill free buffers from the source in order and queue (buffer, length); a
    length of 0 is the end of the file. Reading the next chunk so overlaps writing this one (a
    device read and a device write at once, as ``cp`` gets from read-ahead and write-back)."""
    offset = 0
    try:
        while True:
            buf = _next_buffer(free, verifier, stop)
            if buf is None:
                return
            with _on_source(src.path):
                n = os.readv(sfd, [buf])
            out.put((buf, n))
            offset += n
            if n == 0 or offset > src.size:  # the end, or growing: no point reading the rest
                return
    except BaseException as exc:  # handed to the writer, which raises it in its own thread
        out.put(exc)


def _start_writeback(wfd: int, offset: int, n: int) -> None:
    """Ask the kernel to start writing this range now (``sync_file_range(WRITE)``, which does not
    wait), so the verifier's ``fdatasync`` of the window finds it mostly on the device already."""
    if _sync_file_range is not None:
        _sync_file_range(wfd, ctypes.c_int64(offset), ctypes.c_int64(n), _SYNC_FILE_RANGE_WRITE)


def _pump(
    sfd: int,
    wfd: int,
    src: SourceFile,
    dst: Path,
    free: queue.Queue[bytearray],
    verifier: _Verifier,
    on_chunk: ChunkHook | None,
    early_writeback: bool,
) -> tuple[str, int]:
    """Read the source once; hash each chunk on a helper thread while writing it, with the next
    chunks read ahead on another.

    hashlib and os.read/os.write release the GIL, so reading, the source hash, writing and the
    verifier's re-read run at once. A chunk goes to the verifier (which recycles its buffer) only once hashed.
    """
    h = hashlib.sha256()
    hashing: Future[None] | None = None
    pending: _Chunk | None = None
    copied = 0
    chunks: queue.Queue[tuple[bytearray, int] | BaseException] = queue.Queue()
    stop = threading.Event()
    reader = threading.Thread(
        target=_read_ahead,
        args=(sfd, src, free, verifier, chunks, stop),
        name=f"read {src.path.name}",
        daemon=True,
    )
    reader.start()
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hash") as hasher:
            while True:
                item = chunks.get()
                if isinstance(item, BaseException):
                    raise item
                buf, n = item
                if hashing is not None:
                    hashing.result()
                    verifier.chunks.put(pending)
                    hashing = None
                if n == 0:
                    free.put(buf)
                    break
                chunk = memoryview(buf)[:n]
                hashing = hasher.submit(h.update, chunk)
                with _on_storage(dst):
                    _write_all(wfd, chunk)
                    if early_writeback:
                        _start_writeback(wfd, copied, n)
                pending = (buf, copied, n)
                copied += n
                if on_chunk is not None:
                    on_chunk(src.path, copied)
                if copied > src.size:
                    break  # growing: no point copying the rest
    finally:
        stop.set()
        reader.join()
        while True:  # what the reader queued and nobody wrote goes back to the pool
            try:
                left = chunks.get_nowait()
            except queue.Empty:
                break
            if not isinstance(left, BaseException):
                free.put(left[0])
    if copied != src.size:
        raise SourceChanged(
            f"source changed during transfer: {src.path} was {src.size} bytes, "
            f"read {copied}{'+' if copied > src.size else ''}",
            path=str(src.path),
        )
    return h.hexdigest(), copied


# --------------------------------------------------------------------------- the unit, its names and its state


def _check_name(unit: ScanUnit, name: str, incoming_dirname: str) -> None:
    bad = (
        not name
        or name in (".", "..", SUPERSEDED_DIRNAME, incoming_dirname)
        or name.startswith(".")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or len(os.fsencode(name)) > 255
    )
    if bad:
        raise ValueError(f"unsafe destination name {name!r} for {unit.primary}")
    if not unit.is_folder and Path(name).suffix.lower() != unit.ext:
        raise ValueError(
            f"destination name {name!r} must end with {unit.ext!r} like its source {unit.primary}"
        )
    if unit.companion is not None and not Path(name).stem:
        raise ValueError(f"destination name {name!r} has no stem for the data folder of {unit.primary}")


def _stem(unit: ScanUnit, name: str) -> str:
    return name if unit.is_folder else name[: -len(unit.ext)] if unit.ext else name


def _root_names(unit: ScanUnit, name: str) -> list[str]:
    """Top-level names in the destination, in placing order (a MIRAX data folder before its .mrxs)."""
    if unit.companion is not None and unit.companion.is_dir():
        return [_stem(unit, name), name]
    return [name]


def _dest_rel(unit: ScanUnit, rel: str, name: str) -> str:
    """Where a source file (relative to the unit's parent) goes, relative to the destination folder."""
    _top, _, rest = rel.partition("/")
    if not rest:  # the primary file itself
        return name
    # the remaining files live in the DICOM folder or the MIRAX data folder, renamed with the unit
    return f"{_stem(unit, name)}/{rest}"


def _snapshot(unit: ScanUnit, name: str) -> tuple[SourceFile, ...]:
    if not unit.primary.exists():
        raise SourceChanged(f"source vanished: {unit.primary}", path=str(unit.primary))
    out: list[SourceFile] = []
    with _on_source(unit.primary):
        for path, rel in unit.files():
            st = path.stat()
            out.append(SourceFile(path, _dest_rel(unit, rel, name), st.st_size, st.st_mtime_ns, st.st_ino))
    if not out:
        raise SourceChanged(f"source has no files: {unit.primary}", path=str(unit.primary))
    return tuple(out)


def _changes(before: tuple[SourceFile, ...], unit: ScanUnit, *, allow_missing: bool = False) -> list[str]:
    """How the source differs from ``before``; empty when nothing changed."""
    now: dict[Path, os.stat_result] = {}
    for path, _rel in unit.files() if unit.primary.exists() else []:
        try:
            now[path] = path.stat()
        except FileNotFoundError:
            pass
    problems: list[str] = []
    known = {f.path for f in before}
    for f in before:
        st = now.get(f.path)
        if st is None:
            if not allow_missing:
                problems.append(f"{f.path} vanished")
        elif (st.st_size, st.st_mtime_ns, st.st_ino) != (f.size, f.mtime_ns, f.ino):
            what = (
                f"size {f.size} -> {st.st_size}"
                if st.st_size != f.size
                else "modified"
                if st.st_mtime_ns != f.mtime_ns
                else "replaced"
            )
            problems.append(f"{f.path} changed ({what})")
    problems += [f"{p} appeared" for p in now if p not in known]
    return problems


def _require_unchanged(before: tuple[SourceFile, ...], unit: ScanUnit) -> None:
    problems = _changes(before, unit)
    if problems:
        raise SourceChanged(
            "source changed during transfer: " + "; ".join(problems[:5]), path=str(unit.primary)
        )


def _manifest_sha(files: list[StoredFile]) -> str:
    if len(files) == 1 and "/" not in files[0].rel:
        return files[0].sha256
    lines = "".join(f"{f.sha256}  {f.rel}\n" for f in sorted(files, key=lambda f: f.rel))
    return hashlib.sha256(lines.encode()).hexdigest()


def _tree_files(root: Path, dest_dir: Path) -> dict[str, Path]:
    """Regular files under a destination root, keyed by their path relative to ``dest_dir``."""
    if root.is_file() and not root.is_symlink():
        return {root.relative_to(dest_dir).as_posix(): root}
    out: dict[str, Path] = {}
    for dirpath, _dirs, filenames in os.walk(root):
        for fn in filenames:
            p = Path(dirpath, fn)
            out[p.relative_to(dest_dir).as_posix()] = p
    return out


# --------------------------------------------------------------------------- storage checks


def _prepare_storage(dest_dir: Path, incoming: Path, storage_root: Path | None) -> None:
    if storage_root is not None and not Path(storage_root).is_dir():
        raise StorageUnavailable(
            f"storage missing: {storage_root} does not exist (is the share mounted?)", path=str(storage_root)
        )
    with _on_storage(incoming, "create"):
        incoming.mkdir(parents=True, exist_ok=True)
    # A real write, because access(2) says yes to root on read-only exports and squashed shares.
    with _on_storage(incoming, "write a probe file in"):
        fd, probe = tempfile.mkstemp(prefix=".probe-", suffix=TMP_SUFFIX, dir=incoming)
        os.close(fd)
        os.unlink(probe)


def _require_room(dest_dir: Path, need: int, margin: int) -> None:
    with _on_storage(dest_dir, "check free space of"):
        have = free_space(dest_dir)
    if have < need + margin:
        raise StorageFull(
            f"storage full: need {_human(need + margin)} "
            f"({_human(need)} + {_human(margin)} margin), have {_human(have)} at {dest_dir}",
            path=str(dest_dir),
        )


def _same_filesystem(a: Path, b: Path) -> bool:
    return a.parent.stat().st_dev == b.stat().st_dev


# --------------------------------------------------------------------------- staging


def _staged_path(partial: Path, rel: str, multi: bool) -> Path:
    return partial / rel if multi else partial


def _stage_links(files: list[SourceFile], partial: Path, multi: bool) -> None:
    for f in files:
        target = _staged_path(partial, f.rel, multi)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f.path, target, follow_symlinks=False)
        except FileNotFoundError as exc:
            if not f.path.exists():
                raise _source_error(exc, f.path) from exc
            raise


def _stage_copies(
    files: list[SourceFile],
    partial: Path,
    multi: bool,
    bufsize: int,
    verify_from_disk: bool,
    on_chunk: ChunkHook | None,
) -> dict[str, str]:
    shas: dict[str, str] = {}
    for f in files:
        target = _staged_path(partial, f.rel, multi)
        with _on_storage(target, "create"):
            target.parent.mkdir(parents=True, exist_ok=True)
        shas[f.rel] = _copy_file(f, target, bufsize, verify_from_disk, on_chunk)
    return shas


def _fsync_tree(partial: Path) -> None:
    """fsync every folder of a staged multi-file scan; renaming its top later only syncs the top."""
    with _on_storage(partial):
        for dirpath, _dirs, _files in os.walk(partial):
            _fsync_dir(Path(dirpath))


def _sole_names(files: list[SourceFile]) -> bool:
    """Whether no source file has a second name. One that does (a hard link outside the scanner's
    folder) is copied: linking it would leave storage sharing an inode with that other name once the
    source is removed, so a write through it would change the stored, verified scan."""
    for f in files:
        with _on_source(f.path):
            if os.stat(f.path, follow_symlinks=False).st_nlink > 1:
                return False
    return True


def _stage(
    files: list[SourceFile],
    partial: Path,
    multi: bool,
    same_fs: bool,
    dest_dir: Path,
    margin: int,
    bufsize: int,
    verify_from_disk: bool,
    on_chunk: ChunkHook | None,
) -> tuple[dict[str, str], bool]:
    """Put ``files`` under ``partial``; return their sha256 by rel and whether they were linked."""
    if multi:
        with _on_storage(partial, "create"):
            partial.mkdir()
    if same_fs and _sole_names(files):
        try:
            _stage_links(files, partial, multi)
        except OSError as exc:
            if exc.errno not in _NO_LINK_ERRNOS:
                raise _storage_error(exc, partial) from exc
            log.info("hard links refused at %s (%s); copying instead", partial, exc.strerror)
            _remove_tree(partial)
            if multi:
                partial.mkdir()
        else:
            # Same inode as the source: there is no second copy to verify, only the record's hash.
            shas = {}
            for f in files:
                with _on_source(f.path):
                    shas[f.rel] = hash_file(f.path, bufsize)
            if multi:
                _fsync_tree(partial)
            return shas, True
    _require_room(dest_dir, sum(f.size for f in files), margin)
    shas = _stage_copies(files, partial, multi, bufsize, verify_from_disk, on_chunk)
    if multi:
        _fsync_tree(partial)
    return shas, False


# --------------------------------------------------------------------------- rescans


def _superseded_label(primary: Path, label: str | None) -> str:
    if label is None:
        mtime = primary.stat().st_mtime
        return datetime.fromtimestamp(mtime, UTC).strftime("%Y%m%dT%H%M%S")
    if not label or "/" in label or "\0" in label or label.startswith("."):
        raise ValueError(f"unsafe superseded label {label!r} for {primary}")
    return label


def _supersede(old_primary: Path, label: str | None, new_name: str, incoming_dirname: str) -> Path:
    """Move an earlier stored scan (+ data folder + sidecar) into ``superseded/``; return its new path."""
    old = ScanUnit.from_path(old_primary)
    old_stem = old.stem
    ext = old_primary.suffix if not old.is_folder else ""
    folder = old_primary.parent / SUPERSEDED_DIRNAME
    incoming = old_primary.parent / incoming_dirname  # temp files where clean_incoming finds them
    with _on_storage(folder, "create"):
        folder.mkdir(exist_ok=True)
        incoming.mkdir(exist_ok=True)
    base = f"{old_stem}__{_superseded_label(old_primary, label)}"
    stem = base
    n = 1

    def taken(s: str) -> bool:  # never overwrite an earlier superseded scan
        return any(os.path.lexists(folder / x) for x in (s + ext, s, s + ".json"))

    while taken(stem):
        n += 1
        stem = f"{base}-{n}"
    new_primary = folder / (stem + ext)
    old_sidecar = old_primary.parent / f"{old_stem}.json"
    with _on_storage(folder):
        # Sidecar first: if we die halfway, the moved image is never without its record.
        meta = _read_json(old_sidecar) or {"note": f"no readable sidecar was found at {old_sidecar}"}
        meta["superseded_by"] = new_name
        meta["superseded_at"] = datetime.now(UTC).isoformat()
        meta["superseded_as"] = new_primary.name
        _write_atomic(folder / f"{stem}.json", _dump(meta), incoming)
        # .mrxs before its data folder: the live folder never shows a .mrxs without its data.
        _rename_noreplace(old_primary, new_primary)
        if old.companion is not None and old.companion.is_dir():
            _rename_noreplace(old.companion, folder / stem)
        old_sidecar.unlink(missing_ok=True)
        _fsync_dir(folder)
        _fsync_dir(old_primary.parent)
    log.info("superseded %s -> %s", old_primary, new_primary)
    return new_primary


def _read_json(path: Path) -> dict[str, Any]:
    """A sidecar's content; {} when there is none or it is unreadable (sidecars are ours to rewrite)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _dump(meta: dict[str, Any]) -> bytes:
    return (json.dumps(meta, indent=2, default=str, ensure_ascii=False) + "\n").encode()


# --------------------------------------------------------------------------- placing


def _place(partial: Path, dest_dir: Path, roots: list[str], multi: bool) -> None:
    """Rename staged roots into place, in order; undo the ones done if a later one fails."""
    done: list[tuple[Path, Path]] = []
    try:
        for root in roots:
            src = partial / root if multi else partial
            dst = dest_dir / root
            _rename_noreplace(src, dst)
            done.append((src, dst))
    except BaseException:
        for src, dst in reversed(done):
            os.rename(dst, src)
        raise
    _fsync_dir(dest_dir)
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
        with _on_source(f.path):
            src_sha[f.rel] = hash_file(f.path, bufsize)
    same: list[str] = []
    differ: list[str] = []
    for root in roots:
        path = dest_dir / root
        if not os.path.lexists(path):
            continue
        want = {rel: sha for rel, sha in src_sha.items() if rel == root or rel.startswith(root + "/")}
        with _on_storage(path, "read"):
            have = _tree_files(path, dest_dir)
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
    return f"{path} ({_human(st.st_size)}, modified {datetime.fromtimestamp(st.st_mtime, UTC):%Y-%m-%d %H:%M} UTC)"


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
    _on_chunk: ChunkHook | None = None,
) -> TransferResult:
    """Store ``unit`` as ``dest_dir/name`` (see the module docstring for the protocol).

    ``supersede`` is the stored path of an earlier scan of the same barcode (a rescan): it moves
    to ``superseded/`` beside it. ``storage_root``, when given, must already exist, so a share that
    is not mounted is never silently replaced by local folders. ``margin`` is the free space kept
    beyond the scan; ``verify_from_disk=False`` lets the read-back come from the page cache.
    The source is never removed here: see ``remove_source``.
    """
    started = time.monotonic()
    dest_dir = Path(dest_dir)
    _check_name(unit, name, incoming_dirname)
    files = list(_snapshot(unit, name))
    roots = _root_names(unit, name)
    multi = len(roots) > 1 or unit.is_folder
    incoming = dest_dir / incoming_dirname
    _prepare_storage(dest_dir, incoming, storage_root)
    with _on_source(unit.primary):
        same_fs = _same_filesystem(unit.primary, incoming)
    shas, present, old = _what_to_do(unit, files, dest_dir, name, roots, supersede, bufsize)

    to_copy = [f for f in files if not any(f.rel == r or f.rel.startswith(r + "/") for r in present)]
    partial = incoming / (name + PARTIAL_SUFFIX)
    _remove_tree(partial)  # left by a crashed run; never the only copy of anything
    linked = False
    superseded: list[Path] = []
    try:
        if to_copy:
            copied, linked = _stage(
                to_copy, partial, multi, same_fs, dest_dir, margin, bufsize, verify_from_disk, _on_chunk
            )
            if any(shas.get(rel, sha) != sha for rel, sha in copied.items()):
                raise SourceChanged(
                    f"source changed during transfer: {unit.primary} hashed differently in two reads",
                    path=str(unit.primary),
                )
            shas.update(copied)
        _require_unchanged(tuple(files), unit)
        if old is not None:
            with _on_storage(old):
                superseded.append(_supersede(old, superseded_label, name, incoming_dirname))
        if to_copy:
            _place_or_collide(partial, dest_dir, [r for r in roots if r not in present], multi, unit)
    except BaseException:
        _remove_tree(partial)
        raise

    stored = sorted((StoredFile(f.rel, f.size, shas[f.rel]) for f in files), key=lambda s: s.rel)
    result = TransferResult(
        dest=dest_dir / name,
        dest_roots=[dest_dir / r for r in reversed(roots)],
        sidecar=dest_dir / f"{_stem(unit, name)}.json",
        files=stored,
        total_size=sum(f.size for f in stored),
        sha256=_manifest_sha(stored),
        seconds=time.monotonic() - started,
        same_filesystem=same_fs,
        already_present=not to_copy,
        superseded=superseded,
        source_files=tuple(files),
        linked=linked,
    )
    _write_sidecar(result, name, sidecar, incoming)
    log.info(
        "stored %s as %s (%s, %.1fs, %s)",
        unit.primary,
        result.dest,
        _human(result.total_size),
        result.seconds,
        "already present" if not to_copy else "linked" if linked else "copied",
    )
    return result


def _place_or_collide(partial: Path, dest_dir: Path, roots: list[str], multi: bool, unit: ScanUnit) -> None:
    try:
        _place(partial, dest_dir, roots, multi)
    except FileExistsError as exc:
        raise DestinationCollision(
            f"{exc.filename} appeared while {unit.primary} was being stored; not overwriting",
            path=str(exc.filename),
        ) from exc
    except OSError as exc:
        raise _storage_error(exc, dest_dir) from exc


def _write_sidecar(result: TransferResult, name: str, caller_meta: dict[str, Any], incoming: Path) -> None:
    """Step 6, last: the caller's fields plus what was stored. Kept as is when an earlier run wrote it."""
    existing = _read_json(result.sidecar)
    if result.already_present and existing.get("sha256") == result.sha256:
        return
    dest_dir = result.dest.parent
    meta = dict(caller_meta)
    if result.superseded:
        meta["supersedes"] = _relative(result.superseded[0], dest_dir)
    elif result.already_present:  # finishing an earlier run: keep its link to what it superseded
        earlier = existing.get("supersedes") or _find_superseded(dest_dir, name)
        if earlier:
            meta["supersedes"] = earlier
    meta.update(
        {
            "name": name,
            "files": [{"rel": s.rel, "size": s.size, "sha256": s.sha256} for s in result.files],
            "size": result.total_size,
            "sha256": result.sha256,
            "stored_at": datetime.now(UTC).isoformat(),
            "transfer_seconds": round(result.seconds, 3),
        }
    )
    with _on_storage(result.sidecar):
        _write_atomic(result.sidecar, _dump(meta), incoming)


def _find_superseded(dest_dir: Path, name: str) -> str | None:
    """What ``name`` superseded, from the superseded sidecars (for a run that died before its own sidecar)."""
    found = [
        m
        for m in map(_read_json, (dest_dir / SUPERSEDED_DIRNAME).glob("*.json"))
        if m.get("superseded_by") == name and m.get("superseded_as")
    ]
    if not found:
        return None
    newest = max(found, key=lambda m: str(m.get("superseded_at", "")))
    return f"{SUPERSEDED_DIRNAME}/{newest['superseded_as']}"


def _relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- removing the source


def _remove_unit_files(unit: ScanUnit, files: tuple[SourceFile, ...]) -> None:
    """Unlink exactly the files that were copied, then the folders they leave empty."""
    # The .mrxs first: the scanner's folder never shows a .mrxs whose data is half gone.
    for f in sorted(files, key=lambda f: f.path != unit.primary):
        f.path.unlink(missing_ok=True)
    for root in reversed(unit.roots()):
        if root.is_dir() and not root.is_symlink():
            for dirpath, _dirs, _files in os.walk(root, topdown=False):  # deepest first
                try:
                    os.rmdir(dirpath)
                except OSError as exc:  # something not ours is inside: keep it
                    log.warning("left %s in place after removing the scan: %s", dirpath, exc.strerror)
    _fsync_dir(unit.primary.parent)


def remove_source(unit: ScanUnit, result: TransferResult) -> None:
    """Delete the source of a stored scan, if it is still exactly what was copied and the copy is there."""
    if not result.source_files:
        raise ValueError(f"no record of what was copied from {unit.primary}; refusing to remove it")
    for f in result.files:
        p = result.dest.parent / f.rel
        try:
            size = p.stat().st_size
        except OSError as exc:
            raise StorageUnavailable(
                f"stored copy {p} is not readable ({exc.strerror}); keeping the source {unit.primary}",
                path=str(p),
            ) from exc
        if size != f.size:
            raise StorageUnavailable(
                f"stored copy {p} is {size} bytes, expected {f.size}; keeping the source {unit.primary}",
                path=str(p),
            )
    # Files already gone are fine: an earlier call may have died halfway through.
    problems = _changes(result.source_files, unit, allow_missing=True)
    if problems:
        raise SourceChanged(
            f"source changed since it was stored, keeping it: {'; '.join(problems[:5])}",
            path=str(unit.primary),
        )
    with _on_source(unit.primary):
        _remove_unit_files(unit, result.source_files)
    log.info("removed source %s (stored as %s)", unit.primary, result.dest)


# --------------------------------------------------------------------------- quarantine and cleanup


def _free_quarantine_name(unit: ScanUnit, folder: Path) -> str:
    stem, ext = unit.stem, ("" if unit.is_folder else unit.primary.suffix)
    n = 1
    while True:
        candidate = stem if n == 1 else f"{stem}-{n}"
        names = [candidate + ext, candidate, f"{candidate + ext}.reason.txt", f"{candidate}.json"]
        if not any(os.path.lexists(folder / x) for x in names):
            return candidate + ext
        n += 1


def quarantine(
    unit: ScanUnit,
    quarantine_dir: Path,
    reason: str,
    *,
    incoming_dirname: str = ".incoming",
    bufsize: int = 8 << 20,
    margin: int = DEFAULT_MARGIN,
) -> Path:
    """Move a scan that cannot be stored into ``quarantine_dir`` beside a ``<name>.reason.txt``.

    Same protocol as storing (linked on the same filesystem, else copied and verified), so at
    every moment a crash could happen the whole scan is still where it was, or already here.
    """
    quarantine_dir = Path(quarantine_dir)
    incoming = quarantine_dir / incoming_dirname
    _prepare_storage(quarantine_dir, incoming, None)
    name = _free_quarantine_name(unit, quarantine_dir)
    files = _snapshot(unit, name)
    multi = len(_root_names(unit, name)) > 1 or unit.is_folder
    partial = incoming / (name + PARTIAL_SUFFIX)
    _remove_tree(partial)
    with _on_source(unit.primary):
        same_fs = _same_filesystem(unit.primary, incoming)
    try:
        _stage(list(files), partial, multi, same_fs, quarantine_dir, margin, bufsize, True, None)
        _require_unchanged(files, unit)
        with _on_storage(quarantine_dir):
            _place(partial, quarantine_dir, _root_names(unit, name), multi)
    except BaseException:
        _remove_tree(partial)
        raise
    note = f"{datetime.now(UTC).isoformat()}\nsource: {unit.primary}\nreason: {reason}\n"
    with _on_storage(quarantine_dir):
        _write_atomic(quarantine_dir / f"{name}.reason.txt", note.encode(), incoming, mode=SIDECAR_MODE)
    with _on_source(unit.primary):
        _remove_unit_files(unit, files)
    log.warning("quarantined %s as %s: %s", unit.primary, quarantine_dir / name, reason)
    return quarantine_dir / name


def clean_incoming(
    storage_root: Path, incoming_dirname: str = ".incoming", *, older_than: float = 0, recursive: bool = True
) -> list[Path]:
    """Remove partials left in ``.incoming`` folders under ``storage_root`` by a crash.

    Only entries we create there (``*.partial``, ``*.tmp``) are removed, only when last modified
    more than ``older_than`` seconds ago, and nothing outside ``.incoming`` folders is touched.
    Safe because a partial is never the only copy: the source stays until ``remove_source``.
    ``recursive=False`` looks only at ``storage_root/.incoming`` (one destination folder),
    which is what a daemon restart needs: walking a whole lab share would take minutes.
    """
    removed: list[Path] = []
    cutoff = time.time() - older_than
    if not recursive:
        incoming = Path(storage_root, incoming_dirname)
        return _clean_one(incoming, cutoff) if incoming.is_dir() and not incoming.is_symlink() else []
    for dirpath, dirnames, _files in os.walk(storage_root):
        if incoming_dirname in dirnames:
            incoming = Path(dirpath, incoming_dirname)
            if not incoming.is_symlink():
                removed += _clean_one(incoming, cutoff)
        dirnames[:] = [d for d in dirnames if d != incoming_dirname]  # os.walk never follows links
    return removed


def _clean_one(incoming: Path, cutoff: float) -> list[Path]:
    removed: list[Path] = []
    for entry in os.scandir(incoming):
        if not entry.name.endswith((PARTIAL_SUFFIX, TMP_SUFFIX)):
            continue
        if entry.stat(follow_symlinks=False).st_mtime > cutoff:
            continue
        _remove_tree(Path(entry.path))
        removed.append(Path(entry.path))
        log.info("removed leftover partial %s", entry.path)
    return removed
