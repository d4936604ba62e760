"""Which earlier stored image a rescan supersedes, and the label the superseded copy is kept under.

A scan whose barcode was stored before is a rescan: it is moved with "Move Rescanned Images",
and the latest earlier image that is still in storage moves to ``superseded/`` under a label
that says when it was stored (``20260301T120000``, local time, as staff read it). The caller
says whether a path is still there (``exists``), so the choice stays pure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import PurePath
from typing import Protocol


class StoredScan(Protocol):
    """What the choice reads from a journal row of an earlier, stored scan of the same barcode."""

    @property
    def id(self) -> int: ...

    @property
    def dest(self) -> str | None: ...

    @property
    def stored_at(self) -> float | None: ...


@dataclass(frozen=True)
class RescanChoice:
    """``earlier``: ids of earlier stored scans of the barcode, oldest first (empty: not a rescan);
    ``supersede``: the stored image to move aside, if still there; ``label``: its superseded label."""

    earlier: tuple[int, ...] = ()
    supersede: PurePath | None = None
    label: str | None = None

    @property
    def is_rescan(self) -> bool:
        return bool(self.earlier)


def superseded_label(stored_at: float | None) -> str | None:
    """The label a superseded image is kept under: when it was stored, local time, to the second."""
    if not stored_at:
        return None
    return time.strftime("%Y%m%dT%H%M%S", time.localtime(stored_at))


def choose_rescan(
    stored: Iterable[StoredScan], *, scan_id: int, exists: Callable[[PurePath], bool]
) -> RescanChoice:
    """The rescan decision for scan ``scan_id`` given the barcode's stored scans, oldest first.

    Rows without a destination, and the scan itself (a resumed run), do not count. Only the
    latest earlier image is superseded: older ones were superseded when it was stored."""
    earlier = [r for r in stored if r.id != scan_id and r.dest]
    if not earlier:
        return RescanChoice()
    latest = earlier[-1]
    assert latest.dest is not None  # filtered above; says so to the type checker
    dest = PurePath(latest.dest)
    return RescanChoice(
        earlier=tuple(r.id for r in earlier),
        supersede=dest if exists(dest) else None,
        label=superseded_label(latest.stored_at),
    )
