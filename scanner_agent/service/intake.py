"""Intake: the one way a scan enters the journal and the queue, for the watcher (``run``) and ``process``.

A scan is recorded as ``ready`` under its identity (path, size, newest mtime), so the same
bytes are never queued twice, and handed to the dispatcher. What each caller then tells a
person (a log line and an alert for the daemon, a line on stderr for ``process``) is its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from scanner_agent.core.states import ScanState
from scanner_agent.journal import ScanRecord
from scanner_agent.scanunit import ScanUnit
from scanner_agent.service.bootstrap import Services
from scanner_agent.service.dispatcher import Dispatcher


@dataclass(frozen=True)
class Offered:
    """What became of one scan offered to the intake."""

    unit: ScanUnit
    #: Its journal row; None when it was not recorded (``bad_name``, or gone from the disk).
    record: ScanRecord | None = None
    #: True when this offer created the row (a scan seen for the first time).
    new: bool = False
    #: The name with its undecodable bytes escaped, when it is not valid UTF-8 (then not recorded).
    bad_name: str | None = None

    @property
    def gone(self) -> bool:
        return self.record is None and self.bad_name is None


def undecodable_name(path: Path) -> str | None:
    """``path`` with its undecodable bytes shown as escapes, if its name is not valid UTF-8; else None.

    Such a name (a share mounted with the wrong charset) cannot go into the journal, Prefect or an
    alert, which all carry text: the scan is refused by name instead of failing on every listing."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")
    return None


def offer(
    services: Services, dispatcher: Dispatcher, unit: ScanUnit, *, requested_by: str | None = None
) -> Offered:
    """Record ``unit`` as ready and queue it, unless the journal already knows these bytes.

    ``requested_by`` is None for the watcher. A command (``"process"``) is a person asking for this
    scan now: it is noted in the row's details, a held or failed row goes back to ``ready``, and a
    unit with no files is still recorded, so that its flow says what is wrong with it (a link, say).
    From the watcher, a unit with no files is gone: typically the flow that stored it removed it a
    moment ago, and recording it would make a second, empty scan that fails for ever as "no longer
    on the scanner's disk" (the fault suite's SIGKILL run caught one). If it comes back, the
    watcher offers it again. A ``sqlite3.Error`` (the journal cannot be written) propagates.
    """
    shown = undecodable_name(unit.primary)
    if shown is not None:
        return Offered(unit, bad_name=shown)
    try:
        fp = unit.fingerprint()
    except FileNotFoundError:
        return Offered(unit)
    if fp.file_count == 0 and requested_by is None:
        return Offered(unit)
    details = {"via": requested_by} if requested_by else None
    rec, new = services.journal.record_ready(
        str(unit.primary), fp.total_size, fp.newest_mtime_ns, details=details
    )
    if requested_by and not new and rec.state in (ScanState.HELD, ScanState.FAILED):
        rec = services.journal.transition(
            rec.id, ScanState.READY, reason=f"scanner-agent {requested_by}", expect=(rec.state,)
        )
    if new or (requested_by and rec.state == ScanState.READY):
        dispatcher.submit(rec.id, rec.ready_at)
    return Offered(unit, rec, new=new)
