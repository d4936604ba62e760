"""What one scan is on disk: a single file, a file plus its data folder (MIRAX ``x/``, Olympus VSI
``_x_/``), or a folder (DICOM).

A ``ScanUnit`` is the thing that is watched, judged complete, copied and removed as one.
It knows its files and a cheap fingerprint (sizes and mtimes) used to see it settle or change.
A lab's completion marker (``[scanner] completion_marker``, e.g. ``x.done``) is not part of the
unit's files or fingerprint (it is a flag, not data): ``marker_path`` names it, so the watcher can
wait for it and the removal can take it away with the scan.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Formats where the scan is ``x.<ext>`` plus a folder holding its data files: MIRAX ``x/``,
#: Olympus VSI ``_x_/`` (its ``.ets`` stacks; the ``.vsi`` finds them by that folder's name).
FOLDER_COMPANION_EXTS = frozenset({".mrxs", ".vsi"})


def companion_dirname(ext: str, stem: str) -> str:
    """The data folder's name for a scan ``<stem><ext>``: ``_stem_`` for VSI, ``stem`` for MIRAX."""
    return f"_{stem}_" if ext.lower() == ".vsi" else stem


@dataclass(frozen=True)
class Fingerprint:
    """Sizes and mtimes of every file in a unit; equal fingerprints mean nothing changed."""

    total_size: int
    file_count: int
    newest_mtime_ns: int
    digest: int  # hash of the (relpath, size, mtime) list, so a changed file is seen even if totals match


@dataclass(frozen=True)
class ScanUnit:
    """One scan. ``primary`` names it (``x.svs``, ``x.mrxs`` or a DICOM folder ``x/``)."""

    primary: Path
    companion: Path | None = None  # the data folder of a MIRAX scan

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> ScanUnit:
        p = Path(path)
        if p.suffix.lower() in FOLDER_COMPANION_EXTS:
            return cls(primary=p, companion=p.parent / companion_dirname(p.suffix, p.stem))
        return cls(primary=p)

    def marker_path(self, template: str) -> Path | None:
        """The completion marker ``template`` (``"{stem}.done"``; ``{name}`` is the full name) names
        for this scan, beside it; None when no marker is configured."""
        if not template:
            return None
        return self.primary.parent / template.format(stem=self.stem, name=self.name)

    @property
    def name(self) -> str:
        return self.primary.name

    @property
    def stem(self) -> str:
        return self.primary.stem if self.primary.suffix else self.primary.name

    @property
    def ext(self) -> str:
        """Lower-case extension kept on the stored name (``""`` for a DICOM folder)."""
        return "" if self.is_folder else self.primary.suffix.lower()

    @property
    def is_folder(self) -> bool:
        return self.primary.is_dir()

    def roots(self) -> list[Path]:
        """The top-level paths of this unit, primary first."""
        return [self.primary] + ([self.companion] if self.companion is not None else [])

    def exists(self) -> bool:
        return self.primary.exists()

    def files(self) -> list[tuple[Path, str]]:
        """Every regular file of the unit as (absolute path, path relative to the unit's parent), sorted.

        Symlinks are never followed: a link inside a scan is not part of it.
        """
        out: list[tuple[Path, str]] = []
        base = self.primary.parent
        for root in self.roots():
            if root.is_symlink():
                continue
            if root.is_file():
                out.append((root, root.name))
            elif root.is_dir():
                for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
                    dirnames.sort()
                    for fn in sorted(filenames):
                        fp = Path(dirpath, fn)
                        if fp.is_symlink() or not fp.is_file():
                            continue
                        out.append((fp, fp.relative_to(base).as_posix()))
        return out

    def fingerprint(self) -> Fingerprint:
        total = 0
        count = 0
        newest: int | None = (
            None  # not 0: a scanner clock before 1970 gives negative mtimes, kept in the identity
        )
        h = 0
        for fp, rel in self.files():
            st = fp.stat()
            total += st.st_size
            count += 1
            newest = st.st_mtime_ns if newest is None else max(newest, st.st_mtime_ns)
            h = hash((h, rel, st.st_size, st.st_mtime_ns))
        return Fingerprint(total, count, 0 if newest is None else newest, h)

    def total_size(self) -> int:
        return sum(fp.stat().st_size for fp, _ in self.files())

    def __str__(self) -> str:
        return str(self.primary)
