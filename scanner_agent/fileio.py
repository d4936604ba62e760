"""Small file-system primitives shared by adapters: atomic writes, folder fsync, no-replace rename."""

from __future__ import annotations

import ctypes
import errno
import os
import tempfile
from pathlib import Path

__all__ = [
    "TMP_SUFFIX",
    "fsync_dir",
    "rename_noreplace",
    "start_writeback",
    "write_atomic",
]

#: Suffix of the temporary files ``write_atomic`` creates (``clean_incoming`` removes leftovers by it).
TMP_SUFFIX = ".tmp"

_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_SYNC_FILE_RANGE_WRITE = 2
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def rename_noreplace(src: Path, dst: Path) -> None:
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


def fsync_dir(path: Path) -> None:
    """Make the entries of folder ``path`` (creations, renames, removals) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some network filesystems cannot fsync a directory; data is already synced
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, tmp_dir: Path | None = None, mode: int = 0o640) -> None:
    """Write ``path`` so a reader sees the old content or the new, never a torn file.

    The temporary file lives in ``tmp_dir`` (default: beside ``path``; it must be on the same
    filesystem) and gets exactly ``mode``, whatever the umask.
    """
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.", suffix=TMP_SUFFIX, dir=tmp_dir or path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def start_writeback(fd: int, offset: int, n: int) -> None:
    """Ask the kernel to start writing this range now (``sync_file_range(WRITE)``, which does not
    wait), so a later ``fdatasync`` finds it mostly on the device already. No-op where unsupported."""
    if _sync_file_range is not None:
        _sync_file_range(fd, ctypes.c_int64(offset), ctypes.c_int64(n), _SYNC_FILE_RANGE_WRITE)
