"""The Prefect flow: one run per scan, named by barcode, with tasks a person reads in the UI.

``Scan Image Flow: <scanner>`` runs Identify Barcode -> Read Sheet Metadata -> Validate Slide ->
Check Quality -> Build Name -> Move Image (or Move Rescanned Images) -> Free Scanner Disk, and
leaves a markdown artifact summing up the scan. The journal is updated at each decision, so the
record survives whatever happens to Prefect.

The flow body is ``async`` on purpose: Prefect's synchronous engine joins its heartbeat thread
at the end of every run, which costs ~1 s per scan; the async engine does not wait for it. The
tasks themselves are synchronous (file copies block; each dispatcher worker owns its loop).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run as runtime_flow_run
from prefect.states import Completed, Failed
from prefect.utilities.annotations import quote

from scanner_agent import storage
from scanner_agent.core.barcode import BarcodeResult, find_barcode
from scanner_agent.core.errors import ScanError, SourceChanged, StorageUnavailable
from scanner_agent.core.humanize import age_text
from scanner_agent.core.naming import build_folder, build_name, destination
from scanner_agent.core.sheet_table import SheetRow, SheetTable, lookup
from scanner_agent.scanunit import ScanUnit
from scanner_agent.service.bootstrap import Agent, get_agent
from scanner_agent.slides import SlideInfo, validate_slide

log = logging.getLogger(__name__)


def _is_transient(task: Any, task_run: Any, state: State) -> bool:
    """Retry only what a retry can fix: a sheet or storage that blinked, not a corrupt slide."""
    try:
        state.result()
    except ScanError as exc:
        return exc.transient
    except Exception:
        return False
    return False


_OPTS: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}


@task(name="Identify Barcode", **_OPTS)
def identify_barcode(agent: Agent, unit: ScanUnit) -> BarcodeResult:
    return find_barcode(unit, agent.barcode_regex)


@task(
    name="Read Sheet Metadata",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=_is_transient,
    **_OPTS,
)
def read_sheet_metadata(agent: Agent, barcode: str) -> tuple[SheetRow, SheetTable]:
    table = agent.sheet.table(want=barcode)
    return lookup(table, barcode), table


@task(name="Validate Slide", **_OPTS)
def validate(agent: Agent, unit: ScanUnit) -> SlideInfo:
    return validate_slide(unit)


@task(name="Check Quality", **_OPTS)
def check_quality(agent: Agent, info: SlideInfo) -> Any:
    import io

    from PIL import Image

    from scanner_agent.core.qc import assess

    kw = {
        k: v
        for k, v in (
            ("blur_threshold", agent.cfg.qc.blur_threshold),
            ("min_tissue_fraction", agent.cfg.qc.min_tissue_fraction),
        )
        if v is not None
    }
    with Image.open(io.BytesIO(info.thumbnail_png)) as im:
        return assess(im, **kw)


@task(name="Build Name", **_OPTS)
def build_destination(agent: Agent, unit: ScanUnit, barcode: str, row: SheetRow, table: SheetTable) -> Path:
    fields = [(col, row.values.get(col, ""), required) for col, required in table.name_columns()]
    name = build_name(barcode, fields, unit.ext, row_number=row.row_number, source=table.source)
    folder = build_folder(
        agent.cfg.storage.layout, row.values, row_number=row.row_number, source=table.source
    )
    return destination(agent.cfg.storage.root, folder, name)


def _move(
    agent: Agent,
    unit: ScanUnit,
    dest: Path,
    sidecar: dict[str, Any],
    supersede: Path | None,
    label: str | None,
    judged: tuple[int, int] | None = None,
) -> storage.TransferResult:
    if judged is not None:
        _require_judged_version(unit, judged)
    require_storage_marker(agent.cfg.storage.root, agent.cfg.storage.marker_file)
    # storage_root: an unmounted share must fail, not be recreated as local folders under its mount point;
    # margin: the configured reserve (the transfer's own default ignored storage.reserve_bytes).
    return storage.place_scan(
        unit,
        dest.parent,
        dest.name,
        sidecar=sidecar,
        supersede=supersede,
        superseded_label=label,
        storage_root=agent.cfg.storage.root,
        margin=agent.cfg.storage.reserve_bytes,
    )


def require_storage_marker(root: Path, marker: str) -> None:
    """With ``storage.marker_file`` set, storage is only written when that file is there: a share
    that is not mounted leaves an empty mount point that looks like an empty, writable storage
    root, and a scan stored into it would be hidden on the local disk once the share returns."""
    if not marker:
        return
    if not (root / marker).exists():
        raise StorageUnavailable(
            f"storage root {root} has no {marker}: the share looks unmounted, so nothing is written there",
            path=str(root),
            action=f"Mount the storage share at {root} (it holds {marker}); the scan stays on "
            "the scanner and is retried. For a new, empty storage location, create the "
            f"marker once: touch {root / marker}",
        )


def _require_judged_version(unit: ScanUnit, judged: tuple[int, int]) -> None:
    """The scan must still be the version judged complete (journal size, mtime): a scanner that resumed
    writing may have left it half-written, and a task retry would otherwise store whatever is there now."""
    try:
        fp = unit.fingerprint()
    except OSError:
        return  # vanished: place_scan says so
    if (fp.total_size, fp.newest_mtime_ns) != judged:
        err = SourceChanged(
            f"{unit.primary} changed after it was judged complete ({judged[0]} -> {fp.total_size} "
            "bytes); not storing a version that may be half-written",
            path=str(unit.primary),
        )
        err.transient = False  # only the new version, once settled (a new journal row), may be stored
        raise err


# One quick retry for a share that blinked; a longer outage is the journal's job (it retries with
# backoff up to an hour) so a worker is not tied up waiting inside a run.
move_image = task(
    name="Move Image", retries=1, retry_delay_seconds=5, retry_condition_fn=_is_transient, **_OPTS
)(_move)
move_rescanned_images = task(
    name="Move Rescanned Images", retries=1, retry_delay_seconds=5, retry_condition_fn=_is_transient, **_OPTS
)(_move)


@task(name="Free Scanner Disk", **_OPTS)
def free_scanner_disk(agent: Agent, unit: ScanUnit, result: storage.TransferResult) -> None:
    storage.remove_source(unit, result)


def _refuse_links(unit: ScanUnit) -> None:
    """A scan that is, or holds, a symbolic link is refused before anything reads it: a link can point
    anywhere (outside the scanner's folder), and the copy skips links, so a MIRAX folder with a linked
    data file would be stored incomplete while its source was removed."""
    import os

    links = [r for r in unit.roots() if r.is_symlink()]
    for root in unit.roots():
        if root.is_dir() and not root.is_symlink():
            for dirpath, dirnames, filenames in os.walk(root):
                links += [Path(dirpath, n) for n in dirnames + filenames if Path(dirpath, n).is_symlink()]
    if links:
        raise ScanError(
            f"{unit.primary} is or holds a symbolic link ({links[0]}); links are never followed or stored",
            path=str(unit.primary),
            action="Put the real files in the scanner's folder in place of the link, then run "
            "`scanner-agent retry`; nothing was read through the link or stored.",
        )


def scan_flow_for(scanner: str) -> Any:
    """The flow object for one scanner (its name carries the scanner's, as the UI groups by flow)."""
    return scan_image_flow.with_options(name=f"Scan Image Flow: {scanner}")


@flow(
    name="Scan Image Flow",
    flow_run_name="{label}",
    persist_result=False,
    validate_parameters=False,
    log_prints=False,
)
async def scan_image_flow(scanner: str, scan_id: int, path: str, label: str) -> Any:
    """Process one complete scan from the scanner's folder into storage."""
    agent = get_agent(scanner)
    return await _run_scan(agent, scan_id, Path(path))


async def _run_scan(agent: Agent, scan_id: int, path: Path) -> Any:
    j = agent.journal
    t0 = time.monotonic()
    run_id = str(runtime_flow_run.id) if runtime_flow_run.id else None
    rec = j.get(scan_id)
    if rec is None:
        return Failed(message=f"scan {scan_id} is not in the journal {j.path}")
    if rec.state == "stored":
        msg = f"{path.name} is already stored as {rec.dest}; nothing to do."
        await _artifact(agent, rec.barcode, path, None, None, msg, t0)
        return Completed(message=msg, name="Already stored")
    if rec.state == "quarantined":
        where = rec.details.get("quarantined_to") or "the quarantine folder"
        return Failed(
            name="Quarantined",
            message=f"{path.name} is in quarantine at {where} ({rec.reason}). "
            f"Fix it there, then run `scanner-agent process --config <config> {where}` on {_hostname()}.",
        )
    held_kind = rec.details.get("held_kind") if rec.held_since else None
    rec = j.transition(
        scan_id,
        "processing",
        reason="flow run started",
        flow_run_id=run_id,
        expect=("ready", "held", "failed", "processing"),
    )
    unit = ScanUnit.from_path(path)
    barcode: str | None = rec.barcode
    info: SlideInfo | None = None
    try:
        _refuse_links(unit)
        if not unit.exists():
            raise SourceChanged(
                f"{path} is no longer on the scanner's disk",
                path=str(path),
                action="Check whether someone moved or deleted the scan; nothing was stored.",
            )
        bc = identify_barcode(agent, unit)
        barcode = bc.barcode
        j.update(scan_id, barcode=barcode, details={"barcode_source": bc.source})
        row, table = read_sheet_metadata(agent, barcode)
        await _tag_run(run_id, agent.name, row.values.get("Study", ""))
        info = validate(agent, unit)
        qc = check_quality(agent, info) if agent.cfg.qc.enabled else None
        # quote(): Prefect walks every task argument (for the UI's graph); a whole sheet of a few
        # thousand rows costs ~0.3 s of CPU per call that way, and the GIL makes workers wait on it.
        dest = build_destination(agent, unit, barcode, row, quote(table))
        j.update(scan_id, details={"planned_dest": str(dest)})  # so a restart knows where a partial may be
        earlier = [r for r in j.stored_for_barcode(barcode) if r.id != scan_id and r.dest]
        supersede = Path(earlier[-1].dest) if earlier and Path(earlier[-1].dest).exists() else None  # type: ignore[arg-type]
        sidecar = _sidecar(agent, rec, unit, barcode, bc, row, table, info, qc)
        mover = move_rescanned_images if earlier else move_image
        result = mover(
            agent,
            unit,
            dest,
            sidecar,
            supersede,
            time.strftime("%Y%m%dT%H%M%S", time.localtime(earlier[-1].stored_at))
            if earlier and earlier[-1].stored_at
            else None,
            (rec.size, rec.mtime_ns),
        )
        j.transition(
            scan_id,
            "stored",
            reason="stored" + (" (rescan)" if earlier else ""),
            dest=str(result.dest),
            sha256=result.sha256,
            barcode=barcode,
            flow_run_id=run_id,
            details={
                "superseded": [str(p) for p in result.superseded],
                "bytes": result.total_size,
                "transfer_seconds": round(result.seconds, 3),
                "already_present": result.already_present,
            },
        )
        for r in earlier:
            j.update(r.id, details={"superseded_by": str(result.dest)})
        free_scanner_disk(agent, unit, result)
        j.update(scan_id, source_removed=1)
    except ScanError as exc:
        return await _failed(agent, scan_id, unit, barcode, exc, run_id, info, t0)
    except Exception as exc:  # a bug or an unmapped OS error: keep the scan, say so, retry later
        log.exception("unexpected error processing %s", path)
        err = ScanError(
            f"Unexpected error processing {path.name}: {type(exc).__name__}: {exc}",
            barcode=barcode,
            path=str(path),
        )
        err.transient = rec.attempts < 5
        return await _failed(agent, scan_id, unit, barcode, err, run_id, info, t0)
    return await _stored(agent, scan_id, unit, barcode, result, qc, earlier, run_id, info, t0, held_kind)


def _sidecar(
    agent: Agent,
    rec: Any,
    unit: ScanUnit,
    barcode: str,
    bc: BarcodeResult,
    row: SheetRow,
    table: SheetTable,
    info: SlideInfo,
    qc: Any,
) -> dict[str, Any]:
    return {
        "barcode": barcode,
        "barcode_source": bc.source,
        "scanner": agent.name,
        "host": _hostname(),
        "source_path": str(unit.primary),
        "sheet": {"source": table.source, "row": row.row_number, "values": dict(row.values)},
        "slide": {
            "vendor": info.vendor,
            "width": info.width,
            "height": info.height,
            "levels": info.level_count,
            "mpp": info.mpp,
        },
        "qc": None
        if qc is None
        else {
            "passed": qc.passed,
            "blur_score": round(qc.blur_score, 2),
            "tissue_fraction": round(qc.tissue_fraction, 4),
            "reasons": list(qc.reasons),
        },
        "scan_complete_at": _iso(rec.ready_at),
        "journal_scan_id": rec.id,
        "flow_run_id": str(runtime_flow_run.id) if runtime_flow_run.id else None,
    }


async def _stored(
    agent: Agent,
    scan_id: int,
    unit: ScanUnit,
    barcode: str,
    result: storage.TransferResult,
    qc: Any,
    earlier: list[Any],
    run_id: str | None,
    info: SlideInfo | None,
    t0: float,
    held_kind: str | None,
) -> Any:
    j = agent.journal
    rec = j.get(scan_id)
    assert rec is not None
    url = agent.run_url(run_id)
    thumb = info.thumbnail_png if info else None
    notes: list[str] = []
    if rec.held_since:
        waited = (rec.stored_at or time.time()) - rec.held_since
        notes.append(f"Waited {age_text(waited)} for its sheet row before it was stored.")
        # The recovery carries the kind of the alert it answers, so each problem is closed once.
        agent.alert(
            held_kind or "held",
            f"{barcode} stored after {age_text(waited)} held",
            recovery=True,
            barcode=barcode,
            file=unit.name,
            run_url=url,
            scan=str(scan_id),
        )
    if earlier:
        notes.append(
            f"Rescan: the earlier image moved to {', '.join(str(p) for p in result.superseded) or 'superseded/'}."
        )
    request = j.satisfy_rescan(barcode)
    if request:
        notes.append(
            f"Satisfies the rescan requested by {request['requested_by']} ({request.get('reason') or 'no reason given'})."
        )
        agent.alert(
            "rescan_received",
            f"The requested rescan of {barcode} arrived and is stored as {result.dest.name}",
            recovery=True,
            barcode=barcode,
            file=unit.name,
            run_url=url,
            scan=str(scan_id),
        )
    state: Any = Completed(message=f"Stored {barcode} as {result.dest}")
    if qc is not None and not qc.passed:
        reason = "; ".join(qc.reasons) or "failed QC"
        deadline = time.time() + agent.cfg.rescans.deadline_hours * 3600
        j.request_rescan(barcode, by="qc", reason=reason, deadline=deadline)
        j.update(scan_id, details={"qc_failed": reason})
        agent.alert(
            "qc_failed",
            f"{barcode} was stored but failed quality control: {reason}. A rescan is requested.",
            barcode=barcode,
            file=unit.name,
            run_url=url,
            thumbnail_png=thumb,
            scan=str(scan_id),
        )
        notes.append(f"QC failed ({reason}); a rescan was requested.")
        state = Completed(
            message=f"Stored {barcode} as {result.dest}, but QC failed: {reason}", name="Stored, QC failed"
        )
    await _artifact(agent, barcode, unit.primary, result, qc, "\n".join(notes) or "Stored.", t0)
    return state


async def _failed(
    agent: Agent,
    scan_id: int,
    unit: ScanUnit,
    barcode: str | None,
    exc: ScanError,
    run_id: str | None,
    info: SlideInfo | None,
    t0: float,
) -> Any:
    j = agent.journal
    rec = j.get(scan_id)
    assert rec is not None
    now = time.time()
    details: dict[str, Any] = {}
    state = exc.state
    if state == "quarantined":
        try:
            where = storage.quarantine(unit, agent.cfg.quarantine_dir, f"{exc.kind}: {exc.message}")
            details["quarantined_to"] = str(where)
        except (OSError, ScanError) as qexc:  # cannot move it aside: leave it where it is, still recorded
            log.error("could not quarantine %s: %s", unit, qexc)
            state = "failed"
            details["quarantine_error"] = str(qexc)
    next_check = None
    if state == "held":
        next_check = now + agent.cfg.sheet.recheck_seconds
        details["held_kind"] = exc.kind
    elif state == "failed" and exc.transient:
        next_check = now + min(3600.0, agent.cfg.scanner.retry_seconds * 2 ** min(rec.attempts - 1, 6))
    j.transition(
        scan_id,
        state,
        reason=exc.message,
        kind=exc.kind,
        next_check=next_check,
        barcode=barcode,
        details=details or None,
    )
    url = agent.run_url(run_id)
    extra = {"where": details["quarantined_to"]} if "quarantined_to" in details else {}
    agent.alert(
        exc.kind,
        exc.message,
        action=exc.action,
        barcode=barcode,
        file=unit.name,
        run_url=url,
        thumbnail_png=info.thumbnail_png if info else None,
        details=extra,
        scan=str(scan_id),
    )
    what = {"held": "Held", "quarantined": "Quarantined"}.get(state, "Failed")
    await _artifact(
        agent,
        barcode,
        unit.primary,
        None,
        None,
        f"**{what}**: {exc.message}\n\n**What to do:** {exc.action}",
        t0,
    )
    return Failed(message=str(exc), name=what if what != "Failed" else None)


async def _tag_run(run_id: str | None, scanner: str, study: str) -> None:
    """Tag the run with its study when the dispatcher could not already (barcode only in the
    slide's metadata, or the row filled since): one PATCH, and none in the usual case."""
    if not run_id or not study:
        return
    current = set(runtime_flow_run.tags or [])
    tags = current | {f"scanner:{scanner}", f"study:{study}"}
    if tags == current:
        return
    from uuid import UUID

    from prefect.client.orchestration import get_client

    try:
        async with get_client() as client:
            await client.update_flow_run(UUID(run_id), tags=sorted(tags))
    except Exception:
        log.debug("could not tag flow run %s", run_id, exc_info=True)


async def _artifact(
    agent: Agent,
    barcode: str | None,
    source: Path,
    result: storage.TransferResult | None,
    qc: Any,
    note: str,
    t0: float,
) -> None:
    lines = [
        f"# {barcode or source.name} on {agent.name}",
        "",
        note,
        "",
        "| | |",
        "|---|---|",
        f"| Barcode | {barcode or '(none found)'} |",
        f"| Source | `{source}` |",
    ]
    if result is not None:
        lines += [
            f"| Stored as | `{result.dest}` |",
            f"| Size | {result.total_size:,} bytes |",
            f"| sha256 | `{result.sha256}` |",
            f"| Copy | {result.seconds:.2f} s"
            f"{' (same filesystem: rename)' if result.same_filesystem else ''} |",
            f"| Sidecar | `{result.sidecar}` |",
        ]
        if result.superseded:
            lines.append(f"| Superseded | {', '.join(f'`{p}`' for p in result.superseded)} |")
    if qc is not None:
        lines.append(
            f"| QC | {'passed' if qc.passed else 'FAILED'} (blur {qc.blur_score:.1f}, tissue {qc.tissue_fraction:.1%}) |"
        )
    lines.append(f"| Duration | {time.monotonic() - t0:.2f} s |")
    try:
        await acreate_markdown_artifact(
            "\n".join(lines),
            key=f"scan-{_artifact_key(barcode or source.stem)}",
            description=f"Scan summary for {barcode or source.name}",
        )
    except Exception:
        log.debug("could not create artifact", exc_info=True)


def _artifact_key(s: str) -> str:
    # Prefect artifact keys: lowercase letters, digits and dashes only.
    import re

    return re.sub(r"[^a-z0-9-]+", "-", s.lower()).strip("-")[:60] or "scan"


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    from datetime import datetime

    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="seconds")


def _hostname() -> str:
    import socket

    return socket.gethostname()


def run_label(unit: ScanUnit, agent: Agent) -> str:
    """The run's name: the barcode when the file name has one (cheap), else the file name."""
    from scanner_agent.core.barcode import barcode_from_name

    try:
        return barcode_from_name(unit.name, agent.barcode_regex) or unit.name
    except ValueError:  # two barcodes, or look-alike digits: the run itself says why; name it by its file
        return unit.name


def run_tags(agent: Agent, label: str) -> list[str]:
    """Tags for a new run: the scanner, and the study when the (cached) sheet already knows the
    barcode, so the run needs no second API call to be tagged."""
    tags = [f"scanner:{agent.name}"]
    try:
        study = lookup(agent.sheet.table(), label).values.get("Study", "")
    except Exception:
        study = ""
    return tags + ([f"study:{study}"] if study else [])


__all__ = ["scan_image_flow", "scan_flow_for", "run_label", "run_tags"]
