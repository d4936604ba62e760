"""Every error the agent raises on purpose, grouped by what a person (or the daemon) does about it.

::

    Exception
     ├── ConfigError                  the configuration is wrong (exit 78 from ``run``, 2 elsewhere)
     └── ScanError                    a scan could not be placed; ``kind``, ``state``, ``transient``,
          │                           ``title`` and ``action`` are fixed by the class
          ├── HeldScan                held: re-checked against the sheet on a timer
          │    ├── UnknownBarcode     no row for the barcode yet
          │    ├── IncompleteRow      a REQUIRED cell is empty (``missing`` names the columns)
          │    ├── SheetMalformed     the sheet itself is wrong (flags row, duplicate barcode, …)
          │    └── SheetUnavailable   the sheet cannot be read now (transient)
          ├── Quarantine              moved aside, never stored
          │    ├── NoBarcode          no barcode in the name, the metadata or the label
          │    ├── CorruptSlide       the slide does not open or decode
          │    └── SlideReaderCrashed reading it crashed, exhausted or outlasted its worker
          ├── AgentStoppedTwice       the agent died twice while processing it (set aside)
          ├── DestinationCollision    a different file already has the name in storage
          ├── LinkedScan              the scan is or holds a symbolic link
          ├── UnreadableSource        the scan cannot be read (permissions, I/O error)
          ├── StorageUnavailable      storage missing, unmounted, read-only (transient)
          │    └── StorageFull        no room on the storage share (transient)
          ├── SourceChanged           the scan changed or vanished while copying (transient)
          │    └── SourceRewritten    it changed after it was judged complete: wait for the new version
          └── UnexpectedError         a bug or an unmapped OS error; retried a few times

A class fixes everything a caller acts on: ``kind`` (the stable alert kind, also written to the
journal and the Prefect state), ``state`` (the journal state the scan moves to), ``transient``
(whether retrying soon may help), ``title`` (the alert's headline, with ``{subject}`` for the
barcode or file) and ``action`` (what a person should do). An instance adds only the message, the
barcode and the path, and optionally a more specific ``action``: nothing is changed after
construction. ``kind_classes()`` lists every kind for the alert model.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar


class ConfigError(Exception):
    """The configuration is wrong. ``problems`` lists each one, naming the key, path or column."""

    def __init__(self, problems: list[str] | str, *, source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "; ".join(self.problems))


class ScanError(Exception):
    """A scan could not be placed. Subclasses say whether it is held, quarantined, failed or retried."""

    kind: ClassVar[str] = "scan_error"
    #: The journal state the scan moves to: "held", "failed" or "quarantined".
    state: ClassVar[str] = "failed"
    #: Whether retrying the same step soon may help (storage blinked, sheet slow).
    transient: ClassVar[bool] = False
    title: ClassVar[str] = "Scan problem with {subject}"
    #: What a person should do about it; fixed per kind so alerts read the same every time.
    default_action: ClassVar[str] = "Look at the scan and the agent's journal (`scanner-agent status`)."

    def __init__(
        self, message: str, *, barcode: str | None = None, path: str | None = None, action: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.barcode = barcode
        self.path = path
        self.action: str = action if action is not None else self.default_action

    def __str__(self) -> str:
        # Prefect shows str(exc) as the failed task's state message: say what to do there too.
        return f"{self.message} — {self.action}"


class HeldScan(ScanError):
    """The sheet has no complete row for the barcode yet; the scan waits and is re-checked."""

    kind = "held"
    state = "held"
    title = "Scan held for {subject}"
    default_action = (
        "Fill in the barcode's row in the metadata sheet; the scan is held and moves on its own once the row "
        "is complete."
    )


class UnknownBarcode(HeldScan):
    kind = "unknown_barcode"
    title = "Unknown barcode {subject}"
    default_action = (
        "Add a row for this barcode to the metadata sheet; the scan is held and moves on its own once the "
        "row is there."
    )


class IncompleteRow(HeldScan):
    kind = "incomplete_row"
    title = "Incomplete sheet row for {subject}"
    default_action = (
        "Fill in the named REQUIRED columns of this barcode's row; the scan is held and moves on its own "
        "once they are filled."
    )

    def __init__(
        self,
        message: str,
        *,
        missing: list[str] | None = None,
        barcode: str | None = None,
        path: str | None = None,
        action: str | None = None,
    ) -> None:
        super().__init__(message, barcode=barcode, path=path, action=action)
        self.missing = list(missing or [])


class SheetMalformed(HeldScan):
    """The sheet itself is wrong (no flags row, duplicate barcode, unsafe value): never guess a name."""

    kind = "sheet_malformed"
    title = "Metadata sheet needs fixing for {subject}"
    default_action = (
        "Correct the metadata sheet at the named row and column; affected scans are held until it is fixed."
    )


class SheetUnavailable(HeldScan):
    """The sheet cannot be read now (network, Google, permissions); scans wait for it."""

    kind = "sheet_unreachable"
    transient = True
    title = "Metadata sheet unreachable for {subject}"
    default_action = (
        "Check the network and the sheet's sharing; scans are held and proceed once the sheet answers."
    )


class Quarantine(ScanError):
    """The scan can never be placed as it is: it is moved to the quarantine folder, never stored."""

    state = "quarantined"


class NoBarcode(Quarantine):
    kind = "no_barcode"
    title = "No barcode found in {subject}"
    # Not `retry`: that re-queues held and failed scans only; a quarantined scan is re-submitted by path.
    default_action = (
        "Rename the file in the quarantine folder so it contains the barcode (or fix the slide label), then "
        "run `scanner-agent process --config <config> <renamed file>`; the scan is kept in quarantine."
    )

    def __init__(
        self,
        message: str,
        *,
        barcode: str | None = None,
        path: str | None = None,
        action: str | None = None,
        label_png: bytes | None = None,
    ) -> None:
        super().__init__(message, barcode=barcode, path=path, action=action)
        #: The slide's label picture (PNG), only when ``[alerts] attach_label`` asked for it: it
        #: lets a person read the label by eye, but labels can carry patient identifiers.
        self.label_png = label_png


class CorruptSlide(Quarantine):
    kind = "corrupt_slide"
    title = "Unreadable slide {subject}"
    default_action = (
        "Rescan the slide; the unreadable file is kept in quarantine and was not moved to storage."
    )


class SlideReaderCrashed(Quarantine):
    """Reading the slide killed its worker process (a signal, its memory cap) or outlasted its time
    limit: the file is moved aside so it cannot take the agent, or the next scan, down with it."""

    kind = "slide_reader_crashed"
    title = "Slide crashed the slide reader: {subject}"
    default_action = (
        "Rescan the slide; the file is kept in quarantine and was not stored. If good slides do this "
        "too, raise [scanner] slide_memory_mb or slide_timeout_seconds, or report the file."
    )


class AgentStoppedTwice(ScanError):
    """The agent died twice in a row while processing this scan: it is set aside (failed) at the next
    start so the agent can go on with everything else; ``retry`` brings it back deliberately."""

    kind = "crash_loop"
    title = "Scan set aside after stopping the agent twice: {subject}"
    default_action = (
        "Look at the agent's log (`journalctl -u scanner-agent@<scanner>`) for what stopped it, then run "
        "`scanner-agent retry --config <config> --barcode <barcode>` to try the scan again."
    )


class DestinationCollision(ScanError):
    kind = "destination_collision"
    title = "Name already taken in storage for {subject}"
    default_action = (
        "A different file already has this name in storage. Check the sheet for two slides with the same "
        "metadata, then `scanner-agent retry`."
    )


class LinkedScan(ScanError):
    """The scan is, or holds, a symbolic link: nothing is read through a link or stored."""

    title = "Scan problem with {subject}"
    default_action = (
        "Put the real files in the scanner's folder in place of the link, then run `scanner-agent retry`; "
        "nothing was read through the link or stored."
    )


class UnreadableSource(ScanError):
    """The scan's files cannot be read (permission denied, an I/O error on the scanner's disk)."""


class StorageUnavailable(ScanError):
    kind = "storage_unavailable"
    transient = True
    title = "Storage unavailable for {subject}"
    default_action = (
        "Check that the storage share is mounted, writable and has space; the scan stays on the scanner and "
        "is retried."
    )


class StorageFull(StorageUnavailable):
    kind = "storage_full"
    title = "Storage full for {subject}"
    default_action = (
        "Free space on the storage share (or extend it); scans stay on the scanner and are retried."
    )


class SourceChanged(ScanError):
    """The scan changed or vanished while being copied (the scanner resumed writing, or someone moved it)."""

    kind = "source_changed"
    transient = True
    title = "Scan changed while copying {subject}"
    default_action = "Nothing, if the scanner is still writing: the scan is picked up again once it settles."


class SourceRewritten(SourceChanged):
    """The scan is no longer the version judged complete: only the new version, once settled (a new
    journal row), may be stored, so retrying this one cannot help."""

    transient = False


class UnexpectedError(ScanError):
    """A bug or an unmapped OS error. The scan is kept; ``core.policy`` retries it a few times."""

    transient = True


def kind_classes() -> Iterator[type[ScanError]]:
    """Every ScanError class, parents first: the alert model takes each kind's title and action here."""
    todo: list[type[ScanError]] = [ScanError]
    while todo:
        cls = todo.pop(0)
        yield cls
        todo.extend(cls.__subclasses__())
