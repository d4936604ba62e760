"""Rescans: move the earlier stored scan (with its data folder and sidecar) into ``superseded/``.

Its lines in the folder's ``SHA256SUMS`` move with it, renamed, to ``superseded/SHA256SUMS``.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scanner_agent.fileio import fsync_dir, rename_noreplace, write_atomic
from scanner_agent.scanunit import ScanUnit, companion_dirname
from scanner_agent.storage.oserrors import on_storage
from scanner_agent.storage.paths import SUPERSEDED_DIRNAME, sidecar_path
from scanner_agent.storage.sha256sums import (
    SUMS_NAME,
    edit_sums,
    folder_lock,
    in_roots,
    read_sums,
    superseded_rel,
)
from scanner_agent.storage.sidecar import SIDECAR_MODE, dump, read_json

log = logging.getLogger(__name__)


def _superseded_label(primary: Path, label: str | None) -> str:
    if label is None:
        mtime = primary.stat().st_mtime
        return datetime.fromtimestamp(mtime, UTC).strftime("%Y%m%dT%H%M%S")
    if not label or "/" in label or "\0" in label or label.startswith("."):
        raise ValueError(f"unsafe superseded label {label!r} for {primary}")
    return label


def supersede(old_primary: Path, label: str | None, new_name: str, incoming_dirname: str) -> Path:
    """Move an earlier stored scan (+ data folder + sidecar) into ``superseded/``; return its new path.

    Its sidecar there gains ``superseded_by``/``superseded_at``/``superseded_as``. Nothing in
    ``superseded/`` is ever overwritten: a taken name gets ``-2``, ``-3``...
    """
    old = ScanUnit.from_path(old_primary)
    ext = old_primary.suffix if not old.is_folder else ""
    folder = old_primary.parent / SUPERSEDED_DIRNAME
    incoming = old_primary.parent / incoming_dirname  # temp files where clean_incoming finds them
    with on_storage(folder, "create"):
        folder.mkdir(exist_ok=True)
        incoming.mkdir(exist_ok=True)
    base = f"{old.stem}__{_superseded_label(old_primary, label)}"
    stem = base
    n = 1

    def taken(s: str) -> bool:  # never overwrite an earlier superseded scan
        return any(os.path.lexists(folder / x) for x in (s + ext, s, s + ".json"))

    while taken(stem):
        n += 1
        stem = f"{base}-{n}"
    new_primary = folder / (stem + ext)
    old_sidecar = sidecar_path(old_primary)
    with on_storage(folder):
        # Sidecar first: if we die halfway, the moved image is never without its record.
        meta = read_json(old_sidecar) or {"note": f"no readable sidecar was found at {old_sidecar}"}
        meta["superseded_by"] = new_name
        meta["superseded_at"] = datetime.now(UTC).isoformat()
        meta["superseded_as"] = new_primary.name
        write_atomic(folder / f"{stem}.json", dump(meta), tmp_dir=incoming, mode=SIDECAR_MODE)
        # .mrxs before its data folder: the live folder never shows a .mrxs without its data.
        rename_noreplace(old_primary, new_primary)
        if old.companion is not None and old.companion.is_dir():
            rename_noreplace(old.companion, folder / companion_dirname(ext, stem))
        old_sidecar.unlink(missing_ok=True)
        fsync_dir(folder)
        fsync_dir(old_primary.parent)
        _move_sums(old, old_primary.name, new_primary.name, meta, incoming)
    log.info("superseded %s -> %s", old_primary, new_primary)
    return new_primary


def _move_sums(old: ScanUnit, name: str, superseded_as: str, meta: dict[str, Any], incoming: Path) -> None:
    """Move the scan's ``SHA256SUMS`` lines to ``superseded/SHA256SUMS`` under their new names.

    The superseded list is written first, so a line is never in neither file. Storage from before
    ``SHA256SUMS`` existed has no lines for it: then the sidecar's ``files`` give them.
    """
    live = old.primary.parent
    roots = [name] + ([old.companion.name] if old.companion is not None else [])
    with folder_lock(live):
        listed, _bad = read_sums(live / SUMS_NAME)
        mine = {rel: sha for rel, sha in listed.items() if in_roots(roots)(rel)}
        if not mine:
            files = meta.get("files")
            for f in files if isinstance(files, list) else []:
                if isinstance(f, dict) and isinstance(f.get("rel"), str) and isinstance(f.get("sha256"), str):
                    mine[f["rel"]] = f["sha256"]
        moved: dict[str, str] = {}
        for rel, sha in mine.items():
            new_rel = superseded_rel(rel, name, superseded_as)
            if new_rel is not None:
                moved[new_rel] = sha
        edit_sums(live / SUPERSEDED_DIRNAME, incoming, add=moved)
        edit_sums(live, incoming, drop=in_roots(roots))
