"""What a transfer records: the source as it was, the files stored, and the result handed to the caller."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path


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


def manifest_sha(files: list[StoredFile]) -> str:
    """The scan's one sha256: the file's own for a single file, else the sha256 of a
    ``sha256sum``-style manifest of every file sorted by path."""
    if len(files) == 1 and "/" not in files[0].rel:
        return files[0].sha256
    lines = "".join(f"{f.sha256}  {f.rel}\n" for f in sorted(files, key=lambda f: f.rel))
    return hashlib.sha256(lines.encode()).hexdigest()
