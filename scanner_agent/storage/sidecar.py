"""The JSON sidecar beside each stored scan: reading it, and writing it last, atomically."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scanner_agent.fileio import write_atomic
from scanner_agent.storage.oserrors import on_storage
from scanner_agent.storage.paths import SUPERSEDED_DIRNAME, relative
from scanner_agent.storage.records import TransferResult

SIDECAR_MODE = 0o640


def read_json(path: Path) -> dict[str, Any]:
    """A sidecar's content; {} when there is none or it is unreadable (sidecars are ours to rewrite)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def dump(meta: dict[str, Any]) -> bytes:
    """A sidecar's bytes: indented UTF-8 JSON ending in a newline."""
    return (json.dumps(meta, indent=2, default=str, ensure_ascii=False) + "\n").encode()


def write_sidecar(result: TransferResult, name: str, caller_meta: dict[str, Any], incoming: Path) -> None:
    """The caller's fields plus what was stored. Kept as is when an earlier run wrote it."""
    existing = read_json(result.sidecar)
    if result.already_present and existing.get("sha256") == result.sha256:
        return
    dest_dir = result.dest.parent
    meta = dict(caller_meta)
    if result.superseded:
        meta["supersedes"] = relative(result.superseded[0], dest_dir)
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
    with on_storage(result.sidecar):
        write_atomic(result.sidecar, dump(meta), tmp_dir=incoming, mode=SIDECAR_MODE)


def _find_superseded(dest_dir: Path, name: str) -> str | None:
    """What ``name`` superseded, from the superseded sidecars (for a run that died before its own sidecar)."""
    found = [
        m
        for m in map(read_json, (dest_dir / SUPERSEDED_DIRNAME).glob("*.json"))
        if m.get("superseded_by") == name and m.get("superseded_as")
    ]
    if not found:
        return None
    newest = max(found, key=lambda m: str(m.get("superseded_at", "")))
    return f"{SUPERSEDED_DIRNAME}/{newest['superseded_as']}"
