"""What an alert is: its kind's fixed words, the ``Alert`` itself, and the key that deduplicates it.

The words for every error kind come from ``core.errors`` (each class's ``title`` and
``default_action``), so an alert and the error that raised it can never drift apart; only the kinds
no error raises (a held scan waiting too long, the watcher, rescans, QC, recoveries) are worded here.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import PurePath
from typing import Any

from scanner_agent.core import errors

__all__ = ["KINDS", "RECOVERED_ACTION", "Alert", "AlertKind", "kind_info"]


@dataclass(frozen=True)
class AlertKind:
    """The fixed words for one kind of alert.

    ``title`` may hold ``{subject}`` (the barcode, else the file name); without a subject the
    placeholder and the word before it ("for", "in") are dropped.
    """

    title: str
    action: str


RECOVERED_ACTION = "Nothing to do; this resolves an earlier alert."

#: Kinds that no ``ScanError`` carries: raised by the daemon's own checks.
_OTHER_KINDS: dict[str, AlertKind] = {
    "held_too_long": AlertKind(
        "Scan held too long for {subject}",
        "The scan has waited longer than expected for a complete sheet row. Fill in (or correct) "
        "the barcode's row in the metadata sheet; the scan moves on its own once the row is complete.",
    ),
    "watcher_unhealthy": AlertKind(
        "Scanner folder watch unhealthy",
        "Check that the scanner's output folder is mounted and readable, then run `scanner-agent check`; "
        "new scans are picked up by the next full folder scan once it is reachable again.",
    ),
    "scan_never_finished": AlertKind(
        "Scan never finished for {subject}",
        "The file has kept growing for longer than [transfer] stall_hours. Check the scanner: a scan "
        "that hung or a program writing to the folder. Transfers stay slowed while it grows.",
    ),
    "missing_rescan": AlertKind(
        "Rescan overdue for {subject}",
        "Rescan the slide, or clear 'Rescan Requested' in the metadata sheet if no rescan is needed.",
    ),
    "qc_failed": AlertKind(
        "Slide QC failed for {subject}",
        "Look at the thumbnail; if the slide is out of focus or shows no tissue, rescan it "
        "(mark 'Rescan Requested' in the metadata sheet).",
    ),
    "rescan_requested": AlertKind(
        "Rescan requested for {subject}",
        "Rescan the slide; the new scan replaces the stored one and the old one is kept under superseded/.",
    ),
    "rescan_received": AlertKind(
        "Rescan received for {subject}",
        "Nothing to do; the rescan was stored and the previous scan was kept under superseded/.",
    ),
    "stored_file_changed": AlertKind(
        "Stored image changed: {subject}",
        "The stored file no longer has the sha256 recorded when it was stored (bit rot, or an edit on "
        "the share). Restore it from backup, or rescan the slide; `scanner-agent verify` lists every "
        "file it finds changed.",
    ),
    "stored_file_missing": AlertKind(
        "Stored image missing: {subject}",
        "A file its sidecar records is no longer in storage. Restore it from backup (or find who moved "
        "it); `scanner-agent verify` lists every missing file.",
    ),
    "recovered": AlertKind("Recovered: {subject}", RECOVERED_ACTION),
}


def _build_kinds() -> dict[str, AlertKind]:
    kinds: dict[str, AlertKind] = {}
    # Parents come first, so a subclass that keeps its parent's kind (LinkedScan: "scan_error")
    # never rewords it.
    for cls in errors.kind_classes():
        kinds.setdefault(cls.kind, AlertKind(cls.title, cls.default_action))
    for kind, words in _OTHER_KINDS.items():
        if kind in kinds:
            raise AssertionError(f"alert kind {kind!r} is worded both in core.errors and core.alerts")
        kinds[kind] = words
    return kinds


#: kind -> its words, for every kind the agent raises.
KINDS: dict[str, AlertKind] = _build_kinds()

_SUBJECT_GONE = re.compile(r":?\s*(?:\b(?:for|in|with)\s+)?\{subject\}")


def kind_info(kind: str) -> AlertKind:
    """The words for ``kind``; an unknown kind reads as a generic scan problem rather than failing."""
    known = KINDS.get(kind)
    if known is not None:
        return known
    return AlertKind(kind.replace("_", " ").capitalize() + " for {subject}", KINDS["scan_error"].action)


@dataclass
class Alert:
    """One thing a person should know about. ``key()`` identifies it for deduplication."""

    kind: str
    scanner: str
    message: str
    action: str | None = None
    barcode: str | None = None
    file: str | None = None
    run_url: str | None = None
    thumbnail_png: bytes | None = None
    recovery: bool = False
    details: dict[str, str] = field(default_factory=dict)
    #: Which scan this is about (the journal's scan id), when it is about one: a rescan under the
    #: same file name is a new scan, and its problems (or its arrival) are news again.
    scan: str | None = None
    #: The slide's label picture (PNG) for a "no barcode" alert; sent only with ``[alerts]
    #: attach_label = true`` (labels can carry patient identifiers).
    label_png: bytes | None = None

    def __post_init__(self) -> None:
        if self.kind == "recovered":
            self.recovery = True
        if self.action is None:
            self.action = RECOVERED_ACTION if self.recovery else kind_info(self.kind).action

    @classmethod
    def from_error(
        cls,
        err: errors.ScanError,
        *,
        scanner: str,
        file: str | None = None,
        run_url: str | None = None,
        thumbnail_png: bytes | None = None,
        details: dict[str, str] | None = None,
    ) -> Alert:
        """The alert for a ``ScanError``: its kind, message, action, barcode and path."""
        return cls(
            kind=err.kind,
            scanner=scanner,
            message=err.message,
            action=err.action,
            barcode=err.barcode,
            file=file or err.path,
            run_url=run_url,
            thumbnail_png=thumbnail_png,
            details=dict(details or {}),
        )

    def problem_key(self) -> str:
        """The key of the problem this alert is (or, for a recovery, resolves)."""
        return "|".join(
            [self.kind, self.scanner, self.barcode or "", self.file or ""]
            + ([self.scan] if self.scan else [])
        )

    def recovery_key(self) -> str:
        """The key a recovery of this alert's problem is sent (and deduplicated) under."""
        return f"recovered|{self.problem_key()}"

    def key(self) -> str:
        """Dedupe key: kind + scanner + barcode + file (+ scan); a recovery has its own key."""
        return self.recovery_key() if self.recovery else self.problem_key()

    @property
    def subject(self) -> str | None:
        """What the alert is about in one word: the barcode, else the file's name."""
        if self.barcode:
            return self.barcode
        if self.file:
            return PurePath(self.file).name or self.file
        return None

    @property
    def title(self) -> str:
        """A one-line headline, e.g. "Unknown barcode 545891 on Cardinal"."""
        template = kind_info(self.kind).title
        if self.subject:
            head = template.replace("{subject}", self.subject)
        else:
            head = _SUBJECT_GONE.sub("", template).strip()
        if self.recovery and self.kind != "recovered":
            head = f"Resolved: {head}"
        return f"{head} on {self.scanner}"

    def facts(self) -> list[tuple[str, str]]:
        """Label/value pairs shown as fields: scanner, barcode, file, then ``details``."""
        out = [("Scanner", self.scanner)]
        if self.barcode:
            out.append(("Barcode", self.barcode))
        if self.file:
            out.append(("File", self.file))
        out.extend((str(k), str(v)) for k, v in self.details.items())
        return out

    def to_json(self) -> str:
        data = asdict(self)
        for name in ("thumbnail_png", "label_png"):
            raw = getattr(self, name)
            data[name] = base64.b64encode(raw).decode("ascii") if raw is not None else None
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Alert:
        data: dict[str, Any] = json.loads(text)
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}  # tolerate rows written by a newer version
        for name in ("thumbnail_png", "label_png"):
            if data.get(name) is not None:
                data[name] = base64.b64decode(data[name])
        return cls(**data)
