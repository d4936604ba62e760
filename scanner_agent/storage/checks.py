"""Is storage usable before anything is written: there (mounted), really writable, and with room."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from scanner_agent.core.errors import StorageFull, StorageUnavailable
from scanner_agent.fileio import TMP_SUFFIX
from scanner_agent.storage.oserrors import on_storage

#: Free space kept beyond the scan itself, so storage is never filled to the last byte.
DEFAULT_MARGIN = 64 << 20


def free_space(path: Path) -> int:
    """Bytes available to this process at ``path`` (or its nearest existing ancestor)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize


def human_size(n: float) -> str:
    """A byte count the way a person reads it: ``512 B``, ``1.5 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def prepare_storage(dest_dir: Path, incoming: Path, storage_root: Path | None) -> None:
    """Make sure ``storage_root`` exists (a share that is not mounted is never replaced by local
    folders), create ``incoming`` and prove it writable with a real probe file."""
    if storage_root is not None and not Path(storage_root).is_dir():
        raise StorageUnavailable(
            f"storage missing: {storage_root} does not exist (is the share mounted?)", path=str(storage_root)
        )
    with on_storage(incoming, "create"):
        incoming.mkdir(parents=True, exist_ok=True)
    # A real write, because access(2) says yes to root on read-only exports and squashed shares.
    with on_storage(incoming, "write a probe file in"):
        fd, probe = tempfile.mkstemp(prefix=".probe-", suffix=TMP_SUFFIX, dir=incoming)
        os.close(fd)
        os.unlink(probe)


def require_room(dest_dir: Path, need: int, margin: int) -> None:
    """``StorageFull`` unless ``dest_dir`` has ``need`` bytes free plus ``margin``."""
    with on_storage(dest_dir, "check free space of"):
        have = free_space(dest_dir)
    if have < need + margin:
        raise StorageFull(
            f"storage full: need {human_size(need + margin)} "
            f"({human_size(need)} + {human_size(margin)} margin), have {human_size(have)} at {dest_dir}",
            path=str(dest_dir),
        )


def same_filesystem(source: Path, folder: Path) -> bool:
    """Whether ``source`` (its parent folder) and ``folder`` are on one filesystem, so a link works."""
    return source.parent.stat().st_dev == folder.stat().st_dev
