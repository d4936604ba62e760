"""The source as it was when a transfer started, and how it differs from that now."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from scanner_agent.core.errors import SourceChanged
from scanner_agent.scanunit import ScanUnit
from scanner_agent.storage.oserrors import on_source
from scanner_agent.storage.paths import dest_rel
from scanner_agent.storage.records import SourceFile


def snapshot(unit: ScanUnit, name: str) -> tuple[SourceFile, ...]:
    """Every file of ``unit`` with its size, mtime and inode, and where it goes under ``name``."""
    if not unit.primary.exists():
        raise SourceChanged(f"source vanished: {unit.primary}", path=str(unit.primary))
    out: list[SourceFile] = []
    with on_source(unit.primary):
        for path, rel in unit.files():
            st = path.stat()
            out.append(SourceFile(path, dest_rel(unit, rel, name), st.st_size, st.st_mtime_ns, st.st_ino))
    if not out:
        raise SourceChanged(f"source has no files: {unit.primary}", path=str(unit.primary))
    return tuple(out)


def changes(before: tuple[SourceFile, ...], unit: ScanUnit, *, allow_missing: bool = False) -> list[str]:
    """How the source differs from ``before``; empty when nothing changed."""
    now: dict[Path, os.stat_result] = {}
    for path, _rel in unit.files() if unit.primary.exists() else []:
        with contextlib.suppress(FileNotFoundError):
            now[path] = path.stat()
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


def require_unchanged(before: tuple[SourceFile, ...], unit: ScanUnit) -> None:
    """``SourceChanged`` unless the source still matches ``before``."""
    problems = changes(before, unit)
    if problems:
        raise SourceChanged(
            "source changed during transfer: " + "; ".join(problems[:5]), path=str(unit.primary)
        )
