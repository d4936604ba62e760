"""Where things go in storage: the destination of a scan, its sidecar, staged and superseded names.

These look at the file system only to resolve links and tell folders from files; they write nothing.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from scanner_agent.core.errors import SheetMalformed
from scanner_agent.scanunit import ScanUnit, companion_dirname

#: Folder beside stored scans that holds the scans they replaced (rescans).
SUPERSEDED_DIRNAME = "superseded"
#: Suffix of a scan being staged in ``.incoming`` (a file, or a folder for multi-file scans).
PARTIAL_SUFFIX = ".partial"


def destination(root: Path, folder: PurePosixPath, name: str) -> Path:
    """``root/folder/name``, refusing anything that would land outside ``root``.

    Checked lexically (no absolute folder, no ``..``, ``name`` a single component) and against
    symlinks already present under ``root``: an existing folder on the way that resolves
    outside ``root`` is refused. Raises ``SheetMalformed``.
    """
    folder = PurePosixPath(folder)
    bad = (
        folder.is_absolute()
        or ".." in folder.parts
        or not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or "\0" in str(folder)
    )
    if bad:
        raise SheetMalformed(f"destination {folder}/{name!r} would leave the storage root {root}")
    base = Path(os.path.realpath(root))
    step = Path(root)
    for part in folder.parts:
        step = step / part
        if os.path.lexists(step):
            real = Path(os.path.realpath(step))
            if real != base and base not in real.parents:
                raise SheetMalformed(
                    f"destination folder {step} resolves to {real}, outside the storage root {base}"
                )
    return Path(root).joinpath(*folder.parts, name)


def sidecar_path(stored: Path) -> Path:
    """The JSON sidecar beside a stored scan: ``<stem>.json`` for a file (``Name.svs`` ->
    ``Name.json``, a MIRAX ``Name.mrxs`` too), ``<name>.json`` for a folder scan (DICOM)."""
    stored = Path(stored)
    return stored.parent / f"{stored.name if stored.is_dir() else stored.stem}.json"


def check_name(unit: ScanUnit, name: str, incoming_dirname: str) -> None:
    """Refuse a destination name that is not one safe component or does not keep the source's format."""
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


def stem(unit: ScanUnit, name: str) -> str:
    """``name`` without the unit's extension (the name of a MIRAX data folder)."""
    return name if unit.is_folder else name[: -len(unit.ext)] if unit.ext else name


def root_names(unit: ScanUnit, name: str) -> list[str]:
    """Top-level names in the destination, in placing order (a MIRAX data folder before its .mrxs)."""
    if unit.companion is not None and unit.companion.is_dir():
        return [companion_dirname(unit.ext, stem(unit, name)), name]
    return [name]


def dest_rel(unit: ScanUnit, rel: str, name: str) -> str:
    """Where a source file (relative to the unit's parent) goes, relative to the destination folder."""
    _top, _, rest = rel.partition("/")
    if not rest:  # the primary file itself
        return name
    # the remaining files live in the DICOM folder or the MIRAX/VSI data folder, renamed with the unit
    folder = stem(unit, name) if unit.is_folder else companion_dirname(unit.ext, stem(unit, name))
    return f"{folder}/{rest}"


def staged_path(partial: Path, rel: str, multi: bool) -> Path:
    """Where file ``rel`` is staged: in the partial folder of a multi-file scan, else the partial itself."""
    return partial / rel if multi else partial


def tree_files(root: Path, dest_dir: Path) -> dict[str, Path]:
    """Regular files under a destination root, keyed by their path relative to ``dest_dir``."""
    if root.is_file() and not root.is_symlink():
        return {root.relative_to(dest_dir).as_posix(): root}
    out: dict[str, Path] = {}
    for dirpath, _dirs, filenames in os.walk(root):
        for fn in filenames:
            p = Path(dirpath, fn)
            out[p.relative_to(dest_dir).as_posix()] = p
    return out


def relative(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` when it is inside it, else as it is."""
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)
