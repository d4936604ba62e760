"""The bad-input corpus runner: each case is an input plus the outcome it must produce.

A case writes one input into a scanner's folder (a file, a MIRAX pair, a link) and, if it needs
one, contributes a row to that scanner's metadata sheet. ``run_cases`` makes every input of a
table first, then pushes them all through ``harness.process`` in one go (one Services, one batch of
real Prefect flow runs), so a whole table costs one agent start. ``check_outcome`` then holds each
case to what the lab relies on:

* the journal state and kind are the expected ones, and the reason names the file, row or column;
* nothing is lost: a stored scan's bytes are in storage and nowhere else, a held or failed scan's
  bytes are untouched where the scanner wrote them, a quarantined scan's bytes are in quarantine
  beside a reason file;
* storage holds exactly the stored scans, every one inside the storage root, and no partials;
* the Prefect run says the same thing as the journal (Completed, or Failed named Held/Quarantined).
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scanner_agent.journal import ScanRecord
from scanner_agent.scanunit import ScanUnit
from scanner_agent.testing.synthetic import write_corrupt, write_mrxs, write_svs
from tests.harness import Folders, make_agent, process, write_config
from tests.storage_listing import check_sums, without_sums

W, H = 1024, 768
FLAGS = ("Include in Name?", "REQUIRED", "REQUIRED", "REQUIRED", "REQUIRED", "", "", "")
HEADER = ("Barcode", "Study", "Experiment", "Panel", "Scanner", "Scan Date", "Rescan Requested", "Notes")


def row(
    barcode: str,
    study: str = "Prec01",
    experiment: str = "Run 2",
    panel: str = "P1",
    scanner: str = "Cardinal",
    notes: str = "",
) -> tuple[str, ...]:
    """One sheet row in HEADER order."""
    return (barcode, study, experiment, panel, scanner, "", "", notes)


def sheet_csv(
    rows: Iterable[Sequence[str]], *, flags: Sequence[str] | None = FLAGS, header: Sequence[str] = HEADER
) -> str:
    """A sheet as CSV text (``csv`` quotes commas, quotes and line breaks the way a spreadsheet does)."""
    buf = io.StringIO()
    w = csv.writer(buf)  # "\r\n" endings: a bare \r or \n inside a cell is quoted, as spreadsheets do
    if flags is not None:
        w.writerow(flags)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


# --------------------------------------------------------------------------- the site


@dataclass
class Site(Folders):
    """One scanner: folders, sheet, a real Services, and a valid slide to copy from."""

    agent: Any
    template: Path

    @property
    def outside(self) -> Path:
        """A folder beside the scanner's, for link targets."""
        p = self.base / "outside"
        p.mkdir(exist_ok=True)
        return p

    # Inputs

    def svs(self, name: str | bytes, folder: Path | None = None) -> Path:
        """A valid slide (copied from the template) under ``name`` in the watch folder."""
        dest = Path(os.fsdecode(os.path.join(os.fsencode(folder or self.watch), os.fsencode(name))))
        shutil.copyfile(self.template, dest)
        return dest

    def svs_with_label(self, name: str, barcode: str) -> Path:
        """A valid slide whose metadata (``aperio.Barcode``) holds ``barcode``."""
        return write_svs(self.watch / name, barcode=barcode, width=W, height=H)

    def corrupt(self, name: str, kind: str) -> Path:
        """A broken slide of ``kind`` (see ``write_corrupt``) under ``name`` in the watch folder."""
        return write_corrupt(self.watch / name, kind)

    def raw(self, name: str, data: bytes) -> Path:
        """A file holding exactly ``data`` under ``name`` in the watch folder."""
        p = self.watch / name
        p.write_bytes(data)
        return p

    def mrxs(self, stem: str, folder: Path | None = None) -> Path:
        """A small valid MIRAX slide ``stem.mrxs`` with its data folder."""
        return write_mrxs(folder or self.watch, stem, images_x=4, images_y=3, image_size=256)

    def write_sheet(self, text: str | bytes) -> None:
        """Replace the sheet's content (bytes as they are, text as UTF-8)."""
        if isinstance(text, bytes):
            self.sheet.write_bytes(text)
        else:
            self.sheet.write_text(text, encoding="utf-8")


def make_site(
    base: Path, *, rows: Iterable[Sequence[str]] = (), name: str = "Cardinal", **sections: dict[str, Any]
) -> Site:
    """A scanner site under ``base`` whose sheet holds ``rows``, with a real Services and a template slide."""
    cfg = write_config(base, name=name, sheet=sheet_csv(rows), **sections)
    template = write_svs(base / "template.svs", width=W, height=H)
    return Site(base, make_agent(cfg), template)


# --------------------------------------------------------------------------- cases and outcomes


@dataclass(frozen=True)
class Case:
    """One bad input and what it must produce.

    ``mentions`` are substrings the journal reason must hold; ``{src}`` is the source path,
    ``{name}`` its file name, ``{sheet}`` the sheet's path and ``{row}`` the case's row number.
    ``stored_as`` is the stored path relative to the storage root (stored cases).
    """

    id: str
    what: str
    make: Callable[[Site], Path]
    state: str
    kind: str | None = None
    mentions: tuple[str, ...] = ()
    row: tuple[str, ...] | None = None
    stored_as: str | None = None
    #: Extra check of the outcome, for what only this case has to say.
    extra: Callable[[Outcome, Site], None] | None = None
    #: Whether the scan must have a Prefect run that agrees with the journal. Every scan handed
    #: to the dispatcher gets one; a case that is refused before that sets this to False.
    needs_run: bool = True


@dataclass
class Outcome:
    """What one case produced: its source, the source's digests before, its journal row and Prefect run."""

    case: Case
    src: Path
    before: dict[str, str]  # relpath -> sha256 of every file of the unit before processing
    rec: ScanRecord
    row_number: int | None = None
    run: dict[str, str] = field(default_factory=dict)  # Prefect state type, name, message

    def fill(self, text: str, site: Site) -> str:
        """``text`` with ``{src}``, ``{name}``, ``{sheet}`` and ``{row}`` filled in for this case."""
        return text.format(
            src=self.src,
            name=self.src.name,
            sheet=site.sheet,
            row=self.row_number if self.row_number is not None else "?",
        )


def sheet_rows(cases: Iterable[Case], extra: Iterable[Sequence[str]] = ()) -> list[tuple[str, ...]]:
    """The sheet rows of ``extra`` then of every case that has one."""
    return [tuple(r) for r in extra] + [c.row for c in cases if c.row is not None]


def digests(unit: ScanUnit) -> dict[str, str]:
    """sha256 of every file of ``unit``, by its path relative to the unit."""
    return {rel: sha256(p) for p, rel in unit.files()}


def sha256(path: Path) -> str:
    """The sha256 hex digest of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def process_together(agent: Any, paths: Sequence[Path], workers: int) -> list[ScanRecord]:
    """Record each scan ready and let the daemon's own dispatcher run ``workers`` flows at a time.

    With ``workers=1`` this is ``harness.process`` (scans that depend on each other run in order)."""
    if workers <= 1:
        return process(agent, *paths)
    from scanner_agent.service.dispatcher import Dispatcher

    ids = []
    for p in paths:
        unit = ScanUnit.from_path(p)
        fp = unit.fingerprint()
        rec, _new = agent.journal.record_ready(str(unit.primary), fp.total_size, fp.newest_mtime_ns)
        ids.append(rec.id)
    disp = Dispatcher(agent, workers)
    disp.start()
    try:
        for i in ids:
            disp.submit(i)
        assert disp.wait_idle(600), "the batch did not finish within 10 minutes"
    finally:
        disp.stop(60)
    return [agent.journal.get(i) for i in ids]


def run_cases(
    site: Site, cases: Sequence[Case], *, first_row: int = 3, workers: int = 2
) -> dict[str, Outcome]:
    """Make every case's input, process them all in one batch, and read the Prefect runs back."""
    row_numbers: dict[str, int] = {}
    n = first_row
    for c in cases:
        if c.row is not None:
            row_numbers[c.id] = n
            n += 1
    made = []
    for c in cases:
        src = c.make(site)
        made.append((c, src, digests(ScanUnit.from_path(src))))
    recs = process_together(site.agent, [src for _, src, _ in made], workers)
    out = {
        c.id: Outcome(c, src, before, rec, row_numbers.get(c.id))
        for (c, src, before), rec in zip(made, recs, strict=True)
    }
    runs = read_runs([o.rec.flow_run_id for o in out.values() if o.rec.flow_run_id])
    for o in out.values():
        o.run = runs.get(str(o.rec.flow_run_id), {})
    return out


def run_corpus(
    base: Path, cases: Sequence[Case], *, workers: int = 2
) -> Iterator[tuple[dict[str, Outcome], Site]]:
    """A module's corpus fixture: one site holding every case's row, every case run, the table
    printed, the agent closed at the end."""
    site = make_site(base, rows=[c.row for c in cases if c.row])
    try:
        outcomes = run_cases(site, cases, workers=workers)
        print("\n" + summary(outcomes))
        yield outcomes, site
    finally:
        site.agent.close()


def read_runs(run_ids: Sequence[str | None]) -> dict[str, dict[str, str]]:
    """Prefect's state type, name and message for each run id (runs Prefect does not know are absent)."""

    async def go() -> dict[str, dict[str, str]]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        ids = [i for i in run_ids if i]
        if not ids:
            return {}
        async with get_client() as c:
            runs = await c.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=len(ids)
            )
        return {
            str(r.id): {"type": r.state.type.value, "name": r.state.name, "message": r.state.message or ""}
            for r in runs
            if r.state is not None
        }

    return asyncio.run(go())


# --------------------------------------------------------------------------- checks


def files_under(root: Path) -> set[Path]:
    """Every file under ``root`` outside ``.incoming`` folders (links included, never followed);
    each SHA256SUMS is checked with ``sha256sum -c`` and left out."""
    check_sums(root)
    out: set[Path] = set()
    for d, dirs, fs in os.walk(root):
        if ".incoming" in Path(d).parts:
            continue
        out |= set(without_sums(Path(d, f) for f in fs))
        out |= {Path(d, x) for x in dirs if Path(d, x).is_symlink()}
    return out


def leftovers(*roots: Path) -> list[Path]:
    """Every file left in an ``.incoming`` folder under ``roots``: partial copies."""
    out: list[Path] = []
    for root in roots:
        for d, _dirs, _fs in os.walk(root):
            if Path(d).name == ".incoming":
                out += [Path(d, n) for n in os.listdir(d)]
    return out


_RUN_NAMES = {
    "stored": ("COMPLETED", None),
    "held": ("FAILED", "Held"),
    "quarantined": ("FAILED", "Quarantined"),
    "failed": ("FAILED", "Failed"),
}


def check_outcome(o: Outcome, site: Site) -> None:
    """Hold one case to its expected state and kind, its reason's mentions, its bytes and its run."""
    c, rec = o.case, o.rec
    reason = rec.reason or ""
    assert (rec.state, rec.kind) == (c.state, c.kind), f"{c.id}: {rec.state}/{rec.kind}: {reason}"
    for m in c.mentions:
        want = o.fill(m, site)
        assert want in reason, f"{c.id}: reason does not mention {want!r}: {reason}"
    if c.state == "stored":
        _check_stored(o, site)
    elif c.state == "quarantined":
        _check_quarantined(o, site)
    else:
        now = digests(ScanUnit.from_path(o.src))
        assert now == o.before, f"{c.id}: the source changed although the scan was {c.state}"
    _check_run(o)
    if c.extra is not None:
        c.extra(o, site)


def _check_run(o: Outcome) -> None:
    """The Prefect run says what the journal says; a case that needs a run and has none fails."""
    c, rec = o.case, o.rec
    if c.needs_run:
        assert rec.flow_run_id, f"{c.id}: no Prefect run was recorded for the scan"
        assert o.run, f"{c.id}: Prefect has no run {rec.flow_run_id}"
    elif not o.run:
        return
    want_type, want_name = _RUN_NAMES[c.state]
    assert o.run["type"] == want_type, f"{c.id}: Prefect run {o.run}"
    if want_name and want_name != "Failed":
        assert o.run["name"] == want_name, f"{c.id}: Prefect run {o.run}"


def _check_stored(o: Outcome, site: Site) -> None:
    """Stored inside the root (as ``stored_as`` if given), same bytes, source gone, sidecar there."""
    c, rec = o.case, o.rec
    assert rec.dest, f"{c.id}: stored without a destination"
    dest = Path(rec.dest)
    root = site.storage.resolve()
    assert root in dest.resolve().parents, f"{c.id}: {dest} is outside {root}"
    rel = dest.relative_to(site.storage)
    assert all(p not in (".", "..") and len(p.encode()) <= 255 for p in rel.parts), rel
    if c.stored_as is not None:
        assert rel.as_posix() == c.stored_as, f"{c.id}: stored as {rel}"
    stored = {rel2: sha256(dest.parent / rel2) for rel2 in _stored_rels(o, dest)}
    assert sorted(stored.values()) == sorted(o.before.values()), (
        f"{c.id}: stored bytes differ from the source"
    )
    assert not os.path.lexists(o.src), f"{c.id}: source {o.src} left on the scanner after storing"
    assert dest.with_suffix(".json").exists() or (dest.parent / f"{dest.name}.json").exists()


def _stored_rels(o: Outcome, dest: Path) -> list[str]:
    """Stored files of the unit, relative to the destination folder."""
    unit = ScanUnit.from_path(dest)
    return [p.relative_to(dest.parent).as_posix() for p, _ in unit.files()]


def _check_quarantined(o: Outcome, site: Site) -> None:
    """Moved to quarantine with the same bytes and a reason file naming kind and source."""
    c, rec = o.case, o.rec
    where = rec.details.get("quarantined_to")
    assert where, f"{c.id}: quarantined without a place: {rec.details}"
    moved = Path(where)
    assert moved.parent == site.quarantine, moved
    assert digests(ScanUnit.from_path(moved)) and sorted(
        digests(ScanUnit.from_path(moved)).values()
    ) == sorted(o.before.values()), f"{c.id}: quarantined bytes differ from the source"
    assert not os.path.lexists(o.src), f"{c.id}: source still on the scanner after quarantine"
    note = (site.quarantine / f"{moved.name}.reason.txt").read_text()
    assert rec.kind in note and str(o.src) in note, note


def check_storage(outcomes: dict[str, Outcome], site: Site) -> None:
    """Storage holds exactly the stored scans (and their sidecars), all inside the root, no partials."""
    expected: set[Path] = set()
    for o in outcomes.values():
        if o.rec.state == "stored" and o.rec.dest:
            dest = Path(o.rec.dest)
            expected |= {dest.parent / r for r in _stored_rels(o, dest)}
            expected.add(dest.parent / (ScanUnit.from_path(dest).stem + ".json"))
    actual = files_under(site.storage)
    assert actual == expected, (
        f"unexpected in storage: {sorted(actual - expected)}; missing: {sorted(expected - actual)}"
    )
    root = site.storage.resolve()
    assert all(root in p.resolve().parents for p in actual)
    assert leftovers(site.storage, site.quarantine) == []


def summary(outcomes: dict[str, Outcome]) -> str:
    """A compact table of what each input produced (printed with ``pytest -s``)."""
    lines = []
    for o in outcomes.values():
        r = o.rec
        what = (r.reason or r.dest or "").replace("\n", " ")
        lines.append(f"{o.case.id:<28} {r.state:<11} {r.kind or '-':<22} {what[:110]}")
    return "\n".join(lines)
