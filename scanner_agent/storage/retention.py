"""Source retention: when the scanner's copy of a stored scan may be freed, and freeing it safely later.

``[scanner] remove_source = true`` (the default) frees it as soon as the scan is stored;
``remove_source_after_days = N`` keeps it N days and frees it only after the stored copy is read
back and matches the sha256 recorded when it was stored (a copy that rotted or was edited on the
share in the meantime must not become the only one); ``remove_source = false`` never frees it
(some vendors' software keeps its own database of what is on the scanner).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from scanner_agent.core.errors import SourceChanged
from scanner_agent.core.humanize import iso_utc
from scanner_agent.scanunit import ScanUnit
from scanner_agent.storage.copy_engine import hash_file
from scanner_agent.storage.oserrors import on_source
from scanner_agent.storage.records import SourceFile, StoredFile, manifest_sha
from scanner_agent.storage.removal import remove_marker, remove_unit_files

log = logging.getLogger(__name__)

DAY_SECONDS = 86_400.0


@dataclass(frozen=True)
class Retention:
    """The configured policy for the scanner's copy of a stored scan."""

    remove: bool = True
    after_days: float | None = None

    @property
    def immediate(self) -> bool:
        """Free the source right after storing (today's behaviour)."""
        return self.remove and self.after_days is None

    def keep_until(self, stored_at: float | None) -> float | None:
        """When the source may be freed (epoch seconds); None: kept for good."""
        if not self.remove:
            return None
        return (stored_at or 0.0) + (self.after_days or 0.0) * DAY_SECONDS

    def describe(self, stored_at: float | None) -> str:
        """What is kept and until when, as ``status`` prints it."""
        until = self.keep_until(stored_at)
        if until is None:
            return "kept on the scanner (remove_source = false)"
        return f"kept on the scanner until {iso_utc(until)} (remove_source_after_days = {self.after_days:g})"


class StoredCopyMismatch(Exception):
    """The stored copy no longer matches the sha256 recorded when it was stored: keep the source."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


def stored_unit(dest: Path) -> ScanUnit:
    """The stored scan at ``dest`` as a unit (its data folder, or a DICOM folder, included)."""
    return ScanUnit.from_path(dest)


def verify_stored(dest: Path, expected_sha256: str) -> None:
    """Read the stored copy back and compare with the sha256 recorded at storing time.

    Raises ``StoredCopyMismatch`` naming the copy, the recorded and the found sha256 (or why it
    could not be read).
    """
    unit = stored_unit(dest)
    try:
        if not unit.exists():
            raise StoredCopyMismatch(f"stored copy {dest} is missing", path=str(dest))
        files = [StoredFile(rel, fp.stat().st_size, hash_file(fp)) for fp, rel in unit.files()]
    except OSError as exc:
        raise StoredCopyMismatch(
            f"stored copy {dest} cannot be read ({exc.strerror or exc})", path=str(dest)
        ) from exc
    found = manifest_sha(files) if files else ""
    if found != expected_sha256:
        raise StoredCopyMismatch(
            f"stored copy {dest} no longer verifies: sha256 {found or '(no files)'} "
            f"!= {expected_sha256} recorded when it was stored",
            path=str(dest),
        )


def release_source(
    source: Path,
    *,
    size: int,
    mtime_ns: int,
    dest: Path,
    sha256: str,
    marker_template: str = "",
) -> bool:
    """Free the scanner's copy of a scan stored at ``dest``, after re-verifying the stored copy.

    ``size``/``mtime_ns`` are the source as it was stored (the journal's): a source changed since
    is kept (``SourceChanged``). A stored copy that does not verify raises ``StoredCopyMismatch``
    and the source is kept. Returns False when the source is already gone (nothing to do).
    """
    unit = ScanUnit.from_path(source)
    if not unit.exists():
        remove_marker(unit, marker_template)
        return False
    fp = unit.fingerprint()
    if (fp.total_size, fp.newest_mtime_ns) != (size, mtime_ns):
        raise SourceChanged(
            f"{source} changed after it was stored (size or modification time differ from the stored "
            f"version: {size} -> {fp.total_size} bytes); keeping it",
            path=str(source),
        )
    verify_stored(dest, sha256)
    files = tuple(
        SourceFile(path, rel, st.st_size, st.st_mtime_ns, st.st_ino)
        for path, rel in unit.files()
        for st in (path.stat(),)
    )
    with on_source(unit.primary):
        remove_unit_files(unit, files)
        remove_marker(unit, marker_template)
    log.info("removed source %s (stored as %s, re-verified)", source, dest)
    return True


def source_due(stored_at: float | None, retention: Retention, now: float | None = None) -> bool:
    """Whether a source stored at ``stored_at`` may be freed now under ``retention``."""
    until = retention.keep_until(stored_at)
    return until is not None and (time.time() if now is None else now) >= until
