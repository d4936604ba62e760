"""Fixity: re-read stored files and compare them with the sha256 their sidecar recorded.

What is verified is **each file**: a single-file scan (``.svs``, ``.tif``...) is one file; a MIRAX
scan is its ``.mrxs`` plus every file of its data folder; a DICOM scan is every file of its
folder. Each is compared with its own line in the sidecar's ``files`` (``rel``, ``sha256``), so a
flipped byte in ``Name/Data0003.dat`` is reported as that file, not as "the scan". Images in
``superseded/`` are verified too, under the names they were moved to.

Per file the outcome is one of ``verified``, ``missing``, ``mismatched`` (expected and found
sha256 given), ``unreadable`` (an I/O error reading it), or ``unrecorded`` (an image file with no
readable sidecar: checked against the folder's ``SHA256SUMS`` when that lists it). Per folder,
``SHA256SUMS`` lines that disagree with the sidecars are reported too (a hand edit).

If the share is gone (``storage.root`` missing, or its ``marker_file``), nothing is read and the
one outcome is "storage share is gone". When a file turns out missing or unreadable mid-run, the
share is looked at again first: if it went away, the run stops there and says so, and that file
is not reported (an unmounted share is not a corrupt archive).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from scanner_agent.storage.paths import SUPERSEDED_DIRNAME
from scanner_agent.storage.sha256sums import SUMS_NAME, read_sums, superseded_rel
from scanner_agent.storage.throttle import TokenBucket  # the one bucket, shared with the transfers

#: Per-file outcomes; every one but ``verified`` is a problem.
OUTCOMES = ("verified", "missing", "mismatched", "unreadable", "unrecorded")


def share_gone(root: Path, marker: str) -> str | None:
    """Why the storage share looks unmounted, or None when it is there."""
    if not Path(root).is_dir():
        return f"storage share is gone: {root} does not exist (is the share mounted?)"
    if marker and not (Path(root) / marker).exists():
        return f"storage share is gone: {root} has no {marker} (the share looks unmounted)"
    return None


def hash_stored(path: Path, bucket: TokenBucket | None = None, bufsize: int = 1 << 20) -> str | None:
    """sha256 of a stored file, read from the device where the OS allows (cached pages are dropped
    first: a fixity check of the page cache would prove nothing). None when ``bucket`` was stopped."""
    h = hashlib.sha256()
    buf = bytearray(bufsize)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        done = 0
        while n := f.readinto(buf):
            if bucket is not None and not bucket.take(n):
                return None
            h.update(view[:n])
            done += n
            if bucket is not None:  # background: leave the page cache to the transfers
                os.posix_fadvise(fd, done - n, n, os.POSIX_FADV_DONTNEED)
    return h.hexdigest()


@dataclass(frozen=True)
class Expected:
    """One stored file and what it should hash to."""

    path: Path
    sha256: str
    sidecar: Path | None  # None: known only from SHA256SUMS
    stored_at: float | None
    scanner: str | None
    barcode: str | None


@dataclass
class FileCheck:
    path: str
    outcome: str
    expected: str | None = None
    found: str | None = None
    detail: str = ""
    sidecar: str | None = None
    barcode: str | None = None
    size: int = 0

    @property
    def ok(self) -> bool:
        return self.outcome == "verified"


@dataclass
class Inventory:
    """What storage says should be there: files to check, and record problems found on the way."""

    files: list[Expected] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)  # {"path", "problem"}


def _stored_at(meta: dict[str, Any]) -> float | None:
    text = meta.get("stored_at")
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _sidecar_files(meta: dict[str, Any]) -> dict[str, str] | None:
    """rel -> sha256 as the sidecar recorded them; None when this JSON is not one of our sidecars."""
    files = meta.get("files")
    if isinstance(files, list) and files:
        out = {
            f["rel"]: str(f["sha256"]).lower()
            for f in files
            if isinstance(f, dict) and isinstance(f.get("rel"), str) and isinstance(f.get("sha256"), str)
        }
        return out or None
    name, sha = meta.get("name"), meta.get("sha256")
    if isinstance(name, str) and isinstance(sha, str):  # a single-file scan from before ``files``
        return {name: sha.lower()}
    return None


def _folder(here: Path, in_superseded: bool, inv: Inventory) -> set[str]:
    """Add one folder's sidecars to ``inv``; return the top-level names they account for."""
    claimed: set[str] = set()
    expected_here: dict[str, str] = {}
    names = sorted(os.listdir(here))
    for fn in names:
        if not fn.endswith(".json") or fn.startswith("."):
            continue
        car = here / fn
        try:
            meta = json.loads(car.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            inv.problems.append({"path": str(car), "problem": f"sidecar unreadable ({exc})"})
            continue
        files = _sidecar_files(meta) if isinstance(meta, dict) else None
        if files is None:
            continue  # some other tool's JSON: not ours to judge
        name = meta.get("name") if isinstance(meta.get("name"), str) else fn[: -len(".json")]
        moved_as = meta.get("superseded_as")
        for rel, sha in files.items():
            if in_superseded and isinstance(moved_as, str):
                rel = superseded_rel(rel, str(name), moved_as) or rel
            expected_here[rel] = sha
            claimed.add(rel.partition("/")[0])
            inv.files.append(
                Expected(
                    here / rel,
                    sha,
                    car,
                    _stored_at(meta),
                    meta.get("scanner") if isinstance(meta.get("scanner"), str) else None,
                    meta.get("barcode") if isinstance(meta.get("barcode"), str) else None,
                )
            )
    _check_sums(here, expected_here, claimed, names, inv)
    return claimed


def _check_sums(
    here: Path, expected: dict[str, str], claimed: set[str], names: list[str], inv: Inventory
) -> None:
    """Compare ``SHA256SUMS`` with the sidecars; images no sidecar claims are checked against it."""
    sums_path = here / SUMS_NAME
    try:
        listed, bad = read_sums(sums_path)
    except (OSError, UnicodeDecodeError) as exc:
        inv.problems.append({"path": str(sums_path), "problem": f"cannot be read ({exc})"})
        listed, bad = {}, []
    for line in bad:
        inv.problems.append({"path": str(sums_path), "problem": f"not a sha256sum line: {line[:120]!r}"})
    for rel, sha in sorted(listed.items()):
        if rel in expected and expected[rel] != sha:
            inv.problems.append(
                {
                    "path": str(sums_path),
                    "problem": f"lists {rel} as {sha}, its sidecar says {expected[rel]}",
                }
            )
        elif rel not in expected and rel.partition("/")[0] in claimed:
            inv.problems.append({"path": str(sums_path), "problem": f"lists {rel}, which no sidecar records"})
    for rel in sorted(set(expected) - set(listed)):
        if os.path.lexists(here / rel):
            inv.problems.append({"path": str(sums_path), "problem": f"does not list {rel}"})
    # Images without a (readable) sidecar: top-level files, and what SHA256SUMS lists for other names.
    orphans: set[str] = set()
    for fn in names:
        p = here / fn
        if fn in claimed or fn.startswith(".") or fn.endswith(".json") or fn == SUMS_NAME:
            continue
        if p.is_file() and not p.is_symlink():
            inv.files.append(Expected(p, listed.get(fn, ""), None, None, None, None))
            orphans.add(fn)
    for rel, sha in sorted(listed.items()):
        top = rel.partition("/")[0]
        if top not in claimed and rel not in orphans:
            inv.files.append(Expected(here / rel, sha, None, None, None, None))
            orphans.add(top)
    claimed |= orphans


def inventory(root: Path) -> Inventory:
    """Every stored file under ``root`` with its expected sha256, folder by folder.

    Dot-folders (``.incoming``, NFS ``.snapshot``) and the scans' own folders are not descended
    into as storage folders.
    """
    inv = Inventory()

    def on_error(exc: OSError) -> None:
        inv.problems.append({"path": str(exc.filename), "problem": f"cannot be listed ({exc.strerror})"})

    for dirpath, dirnames, _files in os.walk(root, onerror=on_error):
        here = Path(dirpath)
        in_superseded = here.name == SUPERSEDED_DIRNAME and here != Path(root)
        try:
            claimed = _folder(here, in_superseded, inv)
        except OSError as exc:
            on_error(exc)
            claimed = set()
        if in_superseded:
            dirnames[:] = []
        else:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in claimed)
    return inv


_GONE = frozenset({errno.ENOENT, errno.ESTALE, errno.ENOTDIR})


def check_file(e: Expected, bucket: TokenBucket | None = None) -> FileCheck | None:
    """Re-hash one stored file and compare. None when ``bucket`` was stopped mid-file."""
    base = FileCheck(
        path=str(e.path),
        outcome="verified",
        expected=e.sha256 or None,
        sidecar=str(e.sidecar) if e.sidecar else None,
        barcode=e.barcode,
    )
    try:
        base.size = e.path.stat().st_size
        found = hash_stored(e.path, bucket)
    except OSError as exc:
        base.outcome = "missing" if exc.errno in _GONE else "unreadable"
        base.detail = "no such file" if base.outcome == "missing" else f"cannot be read ({exc.strerror})"
        return base
    if found is None:
        return None
    base.found = found
    if e.sidecar is None:
        base.outcome = "unrecorded"
        base.detail = (
            "no readable sidecar; SHA256SUMS lists it and its bytes match"
            if found == e.sha256
            else "no readable sidecar; SHA256SUMS lists it with another sha256"
            if e.sha256
            else "no readable sidecar and not in SHA256SUMS: nothing to check it against"
        )
    elif found != e.sha256:
        base.outcome = "mismatched"
        base.detail = f"sha256 is {found}, its sidecar recorded {e.sha256}"
    return base


def walk_checks(
    root: Path,
    marker: str,
    files: list[Expected],
    *,
    bucket: TokenBucket | None = None,
) -> Iterator[FileCheck | str]:
    """Check ``files`` in turn, yielding each ``FileCheck``; yields a "share is gone" message (a
    ``str``) and stops when the share vanishes under it. Stops quietly when ``bucket`` is stopped."""
    for e in files:
        got = check_file(e, bucket)
        if got is None:
            return
        if not got.ok and got.outcome != "unrecorded":
            gone = share_gone(root, marker)
            if gone is not None:
                yield gone
                return
        yield got
