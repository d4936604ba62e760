"""Storage as the reconcile report sees it: every sidecar ``place_scan`` wrote, grouped by barcode.

Each image in storage has a sidecar ``<stem>.json`` beside it (``barcode``, ``name``,
``stored_at``); an image moved to a ``superseded/`` folder has one with ``superseded_as``.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from scanner_agent.core.humanize import iso_local_from_text
from scanner_agent.core.reconcile import Sidecar
from scanner_agent.storage import SUPERSEDED_DIRNAME


@dataclass
class StorageScan:
    """What :func:`scan_storage` found: sidecars by barcode, and what could not be read."""

    root: Path
    current: dict[str, list[Sidecar]] = field(default_factory=lambda: defaultdict(list))
    superseded: dict[str, list[Sidecar]] = field(default_factory=lambda: defaultdict(list))
    problems: list[str] = field(default_factory=list)

    @property
    def images(self) -> int:
        """How many current images storage holds."""
        return sum(len(v) for v in self.current.values())


def _read_sidecar(path: Path, superseded: bool, problems: list[str]) -> Sidecar | None:
    """The sidecar at ``path`` if it is ours and its image is there; what is wrong goes to ``problems``."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        problems.append(f"{path}: unreadable JSON ({exc})")
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("barcode"), str) or not meta["barcode"].strip():
        return None  # not one of our sidecars (some other tool's JSON): not ours to judge
    name = meta.get("superseded_as") if superseded else meta.get("name")
    image = path.parent / name if isinstance(name, str) and name else path.with_suffix("")
    if not os.path.lexists(image):
        # A record without its image is not a stored copy: it must not count as one (stored twice).
        problems.append(
            f"{path}: sidecar of barcode {meta['barcode'].strip()} but its image {image.name} is missing"
        )
        return None
    return Sidecar(
        barcode=meta["barcode"].strip(),
        image=str(image),
        stored_at=iso_local_from_text(meta.get("stored_at")),
    )


def scan_storage(root: Path) -> StorageScan:
    """Every sidecar under ``root``, grouped by barcode into current and superseded images.

    Dot-folders (``.incoming`` partials, but also NFS ``.snapshot`` copies that would make every
    image look stored twice) are skipped, and so are the images' own folders (MIRAX data,
    DICOM series), which hold no sidecars and can hold thousands of files.
    """
    found = StorageScan(root=root)

    def on_error(exc: OSError) -> None:
        found.problems.append(f"{exc.filename}: cannot be read ({exc.strerror})")

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
        here = Path(dirpath)
        in_superseded = here.name == SUPERSEDED_DIRNAME and here != root
        stems: set[str] = set()
        for fn in sorted(filenames):
            if not fn.endswith(".json"):
                continue
            car = _read_sidecar(here / fn, in_superseded, found.problems)
            if car is None:
                continue
            stems.add(fn[: -len(".json")])
            (found.superseded if in_superseded else found.current)[car.barcode].append(car)
        if in_superseded:
            dirnames[:] = []  # only superseded images' data folders below
        else:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in stems)
    return found
