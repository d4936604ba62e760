"""Pretend to be a slide scanner: write real slides into a watch folder slowly, as scanners do.

Each slide is first built whole by ``synthetic.py`` in a staging folder next to (never inside)
the watch folder, then copied into the watch folder chunk by chunk with pauses, through one
open handle, so the file grows over seconds exactly as a scanner's output does.

MIRAX order (chosen to be the hard case for the watcher): the ``x.mrxs`` file first, then the
data folder ``x/`` with ``Slidedat.ini`` saying ``SLIDE_CREATION_FINISHED = False``, then the
data files one by one (``Index.dat`` after the ``Data*.dat`` files), and last ``Slidedat.ini``
rewritten with ``True``. The unit is therefore visible for the whole scan and only the format
flag and the settle window can hold it back.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

#: ``label``: an SVS whose barcode is only printed on its label (a DataMatrix), not in its metadata.
SimKind = Literal["svs", "blurred", "blank", "tiff", "mrxs", "corrupt", "label"]
SIM_KINDS: tuple[str, ...] = ("svs", "blurred", "blank", "tiff", "mrxs", "corrupt", "label")

_FINISHED_LINE = re.compile(rb"(?im)^([ \t]*SLIDE_CREATION_FINISHED[ \t]*=[ \t]*)[^\r\n]*")
_GENERAL_HEADER = re.compile(rb"(?im)^[ \t]*\[GENERAL\][ \t]*(\r?\n)")


@dataclass(frozen=True)
class SimScan:
    """One simulated scan. ``name`` is the stem in the watch folder and may include sub-folders
    (``"2024-05-01/S1"``), as scanners that write into dated folders do."""

    name: str
    kind: SimKind = "svs"
    barcode: str | None = None
    seed: int = 0
    corrupt_kind: str = "truncated"  # one of synthetic.CORRUPT_KINDS, for kind="corrupt"
    width: int | None = None  # None: synthetic.py's default size
    height: int | None = None


def simulate(
    watch: Path,
    scans: Sequence[SimScan],
    *,
    chunk_bytes: int = 256 << 10,
    chunk_interval: float = 0.2,
    between: float = 1.0,
    on_progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write ``scans`` into ``watch`` one after another; returns each scan's primary path.

    Raises ``ValueError`` for an unknown kind or a name that would leave the watch folder,
    before anything is written.
    """
    watch = Path(watch)
    for scan in scans:
        _check_scan(scan)
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be > 0, got {chunk_bytes}")
    say = on_progress or (lambda _msg: None)
    watch.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for i, scan in enumerate(scans):
        if i and between > 0:
            time.sleep(between)
        staging = _staging_dir(watch)
        try:
            built = _build(scan, staging)
            target = watch / PurePosixPath(scan.name).parent / built.name
            target.parent.mkdir(parents=True, exist_ok=True)
            say(f"scanning {scan.name} ({scan.kind}) -> {target}")
            if scan.kind == "mrxs":
                _deliver_mrxs(built, target, chunk_bytes, chunk_interval)
            else:
                _write_slowly(built, target, chunk_bytes, chunk_interval)
            written.append(target)
            say(f"finished {target}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return written


def _check_scan(scan: SimScan) -> None:
    """Refuse an unknown kind, or a name that is not a relative path inside the watch folder."""
    if scan.kind not in SIM_KINDS:
        raise ValueError(
            f"scan {scan.name!r}: unknown kind {scan.kind!r}; choose one of {', '.join(SIM_KINDS)}"
        )
    parts = PurePosixPath(scan.name).parts
    if not parts or scan.name.startswith("/") or ".." in parts or "\\" in scan.name:
        raise ValueError(f"scan name {scan.name!r} must be a relative path inside the watch folder")


def _staging_dir(watch: Path) -> Path:
    """A new temporary folder where whole slides are built before they are written slowly."""
    # Next to the watch folder (same filesystem, like a scanner's own temp space) but never in it.
    try:
        return Path(tempfile.mkdtemp(prefix=f".{watch.name}-sim-", dir=watch.parent))
    except OSError:
        return Path(tempfile.mkdtemp(prefix="scanner-sim-"))


def _build(scan: SimScan, staging: Path) -> Path:
    """Make the whole slide in ``staging`` with synthetic.py; returns its primary path."""
    from . import synthetic  # lazy: numpy/tifffile only when a simulation actually runs

    stem = PurePosixPath(scan.name).name
    size = {k: v for k, v in (("width", scan.width), ("height", scan.height)) if v is not None}
    if scan.kind in ("svs", "blurred", "blank"):
        return synthetic.write_svs(
            staging / f"{stem}.svs",
            barcode=scan.barcode,
            seed=scan.seed,
            blurred=scan.kind == "blurred",
            blank=scan.kind == "blank",
            **size,
        )
    if scan.kind == "label":
        from .artwork import code_label
        from .tiff_slides import write_labelled_svs

        codes = [(scan.barcode, "DataMatrix")] if scan.barcode else []
        return write_labelled_svs(
            staging / f"{stem}.svs",
            code_label(codes),
            seed=scan.seed,
            width=scan.width or 1024,
            height=scan.height or 768,
        )
    if scan.kind == "tiff":
        return synthetic.write_generic_tiff(staging / f"{stem}.tif", seed=scan.seed, **size)
    if scan.kind == "corrupt":
        return synthetic.write_corrupt(staging / f"{stem}.svs", scan.corrupt_kind)
    return Path(synthetic.write_mrxs(staging, stem, barcode=scan.barcode, finished=True, seed=scan.seed))


def _write_slowly(src: Path, dst: Path, chunk_bytes: int, chunk_interval: float) -> None:
    """Copy ``src`` to ``dst`` in chunks, pausing ``chunk_interval`` seconds between them."""
    # One handle for the whole file, like a scanner: the watcher sees it open for writing.
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        first = True
        while chunk := fin.read(chunk_bytes):
            if not first and chunk_interval > 0:
                time.sleep(chunk_interval)
            fout.write(chunk)
            fout.flush()
            first = False


def _deliver_mrxs(built: Path, target: Path, chunk_bytes: int, chunk_interval: float) -> None:
    """Write a MIRAX slide as its scanner does: the .mrxs, Slidedat.ini marked unfinished, the data
    files with Index.dat last, then Slidedat.ini marked finished in place."""
    src_folder = built.with_suffix("")
    dst_folder = target.with_suffix("")
    _write_slowly(built, target, chunk_bytes, chunk_interval)
    dst_folder.mkdir(exist_ok=True)
    ini_src = _find_slidedat(src_folder)
    final_ini = ini_src.read_bytes()
    ini_dst = dst_folder / ini_src.name
    ini_dst.write_bytes(_set_finished(final_ini, False))
    data = sorted(
        (p for p in src_folder.rglob("*") if p.is_file() and p != ini_src),
        key=lambda p: (p.name.lower() == "index.dat", str(p)),
    )
    for src in data:
        dst = dst_folder / src.relative_to(src_folder)
        dst.parent.mkdir(parents=True, exist_ok=True)
        _write_slowly(src, dst, chunk_bytes, chunk_interval)
        if chunk_interval > 0:
            time.sleep(chunk_interval)
    # The scanner's last act: mark the slide finished, in place.
    with open(ini_dst, "wb") as fh:
        fh.write(_set_finished(final_ini, True))
        fh.flush()
        os.fsync(fh.fileno())


def _find_slidedat(folder: Path) -> Path:
    """The data folder's Slidedat.ini, whatever its case."""
    for p in folder.iterdir():
        if p.name.lower() == "slidedat.ini":
            return p
    raise FileNotFoundError(f"synthetic MIRAX slide in {folder} has no Slidedat.ini")


def _set_finished(ini: bytes, finished: bool) -> bytes:
    """``ini`` with ``[GENERAL] SLIDE_CREATION_FINISHED`` set, adding the key if it is absent."""
    value = b"True" if finished else b"False"
    if _FINISHED_LINE.search(ini):
        return _FINISHED_LINE.sub(lambda m: m.group(1) + value, ini, count=1)
    header = _GENERAL_HEADER.search(ini)
    if header is None:
        raise ValueError("synthetic Slidedat.ini has no [GENERAL] section")
    newline = header.group(1)
    return ini[: header.end()] + b"SLIDE_CREATION_FINISHED = " + value + newline + ini[header.end() :]
