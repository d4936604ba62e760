"""Map OSErrors to the scan's error tree: storage side to StorageUnavailable/StorageFull, source side
to SourceChanged/UnreadableSource, each naming the path."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scanner_agent.core.errors import (
    ScanError,
    SourceChanged,
    StorageFull,
    StorageUnavailable,
    UnreadableSource,
)

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
READONLY_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
GONE_ERRNOS = frozenset({errno.ENOENT, errno.ESTALE})


def storage_error(exc: OSError, path: Path, what: str = "write") -> StorageUnavailable:
    """Map an OSError on the storage side to StorageUnavailable, naming the path."""
    where = exc.filename or path
    if exc.errno in FULL_ERRNOS:
        return StorageFull(f"storage full: could not {what} {where}", path=str(path))
    if exc.errno in READONLY_ERRNOS:
        return StorageUnavailable(f"storage not writable: {where} ({exc.strerror})", path=str(path))
    if exc.errno in GONE_ERRNOS:
        return StorageUnavailable(f"storage missing: {where} ({exc.strerror})", path=str(path))
    return StorageUnavailable(f"storage error at {where}: {exc.strerror}", path=str(path))


def source_error(exc: OSError, path: Path) -> ScanError:
    """Map an OSError reading the scanner's files: gone means it changed, anything else unreadable."""
    where = exc.filename or path
    if exc.errno in GONE_ERRNOS:
        return SourceChanged(f"source vanished during transfer: {where}", path=str(path))
    return UnreadableSource(f"cannot read source {where}: {exc.strerror}", path=str(path))


@contextmanager
def on_storage(path: Path, what: str = "write") -> Iterator[None]:
    """Raise an OSError inside the block as ``storage_error``."""
    try:
        yield
    except OSError as exc:
        raise storage_error(exc, path, what) from exc


@contextmanager
def on_source(path: Path) -> Iterator[None]:
    """Raise an OSError inside the block as ``source_error``."""
    try:
        yield
    except OSError as exc:
        raise source_error(exc, path) from exc
