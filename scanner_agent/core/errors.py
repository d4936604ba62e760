"""The errors a scan can meet, grouped by what a person (or the daemon) should do about them.

Every error carries the words a person needs to act: what happened (the message, naming the
file, row or column) and what to do (``action``). ``kind`` is the stable alert kind used by
alerts, the journal and the Prefect run state.
"""

from __future__ import annotations


class ScanError(Exception):
    """A scan could not be placed. Subclasses say whether it is held, failed or retried."""

    kind: str = "scan_error"
    #: What a person should do about it; fixed per kind so alerts read the same every time.
    action: str = "Look at the scan and the agent's journal (`scanner-agent status`)."
    #: The journal state the scan moves to: "held" (re-checked on a timer), "failed"
    #: (needs a person or a retry), or "quarantined".
    state: str = "failed"
    #: Whether retrying the same step soon may help (storage blinked, sheet slow).
    transient: bool = False

    def __init__(
        self, message: str, *, barcode: str | None = None, path: str | None = None, action: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.barcode = barcode
        self.path = path
        if action is not None:
            self.action = action

    def __str__(self) -> str:
        # Prefect shows str(exc) as the failed task's state message: say what to do there too.
        return f"{self.message} — {self.action}"


class HeldScan(ScanError):
    """The sheet has no complete row for the barcode yet; the scan waits and is re-checked."""

    kind = "held"
    state = "held"
    action = "Fill in the barcode's row in the metadata sheet; the scan is held and moves on its own once the row is complete."


class UnknownBarcode(HeldScan):
    kind = "unknown_barcode"
    action = "Add a row for this barcode to the metadata sheet; the scan is held and moves on its own once the row is there."


class IncompleteRow(HeldScan):
    kind = "incomplete_row"
    action = "Fill in the named REQUIRED columns of this barcode's row; the scan is held and moves on its own once they are filled."

    def __init__(self, message: str, *, missing: list[str] | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.missing = list(missing or [])


class SheetMalformed(HeldScan):
    """The sheet itself is wrong (no flags row, duplicate barcode, unsafe value): never guess a name."""

    kind = "sheet_malformed"
    action = (
        "Correct the metadata sheet at the named row and column; affected scans are held until it is fixed."
    )


class NoBarcode(ScanError):
    kind = "no_barcode"
    state = "quarantined"
    # Not `retry`: that re-queues held and failed scans only; a quarantined scan is re-submitted by path.
    action = (
        "Rename the file in the quarantine folder so it contains the barcode (or fix the slide label), then run "
        "`scanner-agent process --config <config> <renamed file>`; the scan is kept in quarantine."
    )


class CorruptSlide(ScanError):
    kind = "corrupt_slide"
    state = "quarantined"
    action = "Rescan the slide; the unreadable file is kept in quarantine and was not moved to storage."


class DestinationCollision(ScanError):
    kind = "destination_collision"
    action = "A different file already has this name in storage. Check the sheet for two slides with the same metadata, then `scanner-agent retry`."


class StorageUnavailable(ScanError):
    kind = "storage_unavailable"
    transient = True
    action = "Check that the storage share is mounted, writable and has space; the scan stays on the scanner and is retried."


class SourceChanged(ScanError):
    """The scan changed or vanished while being copied (the scanner resumed writing, or someone moved it)."""

    kind = "source_changed"
    transient = True
    action = "Nothing, if the scanner is still writing: the scan is picked up again once it settles."


class SheetUnavailable(ScanError):
    kind = "sheet_unreachable"
    transient = True
    state = "held"
    action = "Check the network and the sheet's sharing; scans are held and proceed once the sheet answers."


class ConfigError(Exception):
    """The configuration is wrong. ``problems`` lists each one, naming the key, path or column."""

    def __init__(self, problems: list[str] | str, *, source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "; ".join(self.problems))
