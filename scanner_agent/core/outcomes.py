"""What happened to a scan, said once for everyone downstream: the sheet's status cells and Prefect events.

A ``ScanReport`` is made where the outcome is decided (the pipeline, the rescan sweep, the fixity
pass) and handed to every ``ReportSink`` the agent has. The status text is the short one a person
reads in the sheet's "Scan Status" column (``stored``, ``held: REQUIRED Panel empty``,
``quarantined: corrupt``); the event name is the Prefect event's (``scanner-agent.scan.stored``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from scanner_agent.core.errors import IncompleteRow, ScanError

#: Prefect event names are ``scanner-agent.scan.<kind>``.
EVENT_PREFIX = "scanner-agent.scan."


class ReportKind(StrEnum):
    STORED = "stored"
    HELD = "held"
    FAILED = "failed"
    QUARANTINED = "quarantined"
    RESCAN_MISSING = "rescan-missing"
    VERIFY_FAILED = "verify-failed"


#: A short word for each error kind, for the sheet's status cell ("quarantined: corrupt").
_SHORT = {
    "corrupt_slide": "corrupt",
    "no_barcode": "no barcode found",
    "slide_reader_crashed": "slide reader crashed",
    "unknown_barcode": "not in the sheet",
    "sheet_unreachable": "sheet unreachable",
    "sheet_malformed": "sheet needs fixing",
    "storage_unavailable": "storage unavailable",
    "storage_full": "storage full",
    "source_changed": "scan changed while copying",
    "destination_collision": "name already taken",
    "crash_loop": "agent stopped twice on it",
    "scan_error": "unexpected error",
}


@dataclass(frozen=True)
class ScanReport:
    """One outcome of one scan, with what a downstream reader needs to act on it."""

    kind: ReportKind
    scanner: str
    barcode: str | None
    #: Unix time of the outcome.
    at: float
    #: The sheet's status cell: ``stored``, ``held: REQUIRED Panel empty``, ``quarantined: corrupt``.
    status: str
    file: str | None = None
    #: The stored path relative to the storage root (stored scans only), as POSIX text.
    stored_path: str | None = None
    sha256: str | None = None
    size: int | None = None
    #: The barcode's row number in the sheet when the run read it (rows move; write-back finds it again).
    sheet_row: int | None = None
    study: str | None = None
    flow_run_id: str | None = None
    #: The full reason (the error's message) for an outcome that is not ``stored``.
    reason: str | None = None
    #: The error kind (``incomplete_row``...) behind a held, failed or quarantined outcome.
    error_kind: str | None = None
    scan_id: int | None = None
    #: A rescan request this outcome satisfied: who asked (``qc``, ``sheet``...), for "done <date>".
    rescan_done: bool = False
    is_rescan: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def event(self) -> str:
        """The Prefect event name: ``scanner-agent.scan.stored`` and so on."""
        return EVENT_PREFIX + self.kind.value

    def payload(self) -> dict[str, Any]:
        """What the event carries, JSON-ready; empty fields left out."""
        fields = {
            "scanner": self.scanner,
            "barcode": self.barcode,
            "status": self.status,
            "file": self.file,
            "stored_path": self.stored_path,
            "sha256": self.sha256,
            "size": self.size,
            "sheet_row": self.sheet_row,
            "study": self.study,
            "flow_run_id": self.flow_run_id,
            "reason": self.reason,
            "error_kind": self.error_kind,
            "scan_id": self.scan_id,
            "is_rescan": self.is_rescan or None,
            "rescan_done": self.rescan_done or None,
            **self.extra,
        }
        return {k: v for k, v in fields.items() if v is not None}


class ReportSink(Protocol):
    """Takes outcomes; must not raise and must not block the scan (queue, then deliver)."""

    def report(self, outcome: ScanReport) -> None: ...


def failure_status(exc: ScanError, kind: ReportKind) -> str:
    """The status cell for a failed, held or quarantined scan."""
    if isinstance(exc, IncompleteRow) and exc.missing:
        what = f"REQUIRED {', '.join(exc.missing)} empty"
    else:
        what = _SHORT.get(exc.kind, exc.kind.replace("_", " "))
    return f"{kind.value}: {what}"


def failure_kind(state: str) -> ReportKind:
    """The report kind for the journal state a failure moved the scan to."""
    if state == "held":
        return ReportKind.HELD
    if state == "quarantined":
        return ReportKind.QUARANTINED
    return ReportKind.FAILED
