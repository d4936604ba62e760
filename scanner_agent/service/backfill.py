"""``scanner-agent process``: the given scans, now, through the daemon's intake, dispatcher and flow."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scanner_agent.config import AgentConfig
from scanner_agent.journal import ScanRecord
from scanner_agent.scanunit import ScanUnit
from scanner_agent.service.bootstrap import Services, bootstrap
from scanner_agent.service.dispatcher import Dispatcher
from scanner_agent.service.intake import Offered, offer
from scanner_agent.service.lock import JournalLock

#: How long ``finish`` lets the workers wind down once nothing is queued or running.
_STOP_SECONDS = 5.0


class Backfill:
    """Scans offered by a person: recorded and queued at once, then waited for together."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.dispatcher = Dispatcher(services, services.cfg.scanner.max_parallel)
        self._taken: list[int] = []

    def offer(self, path: Path) -> Offered:
        """Take the scan at ``path``; ``Offered.gone`` when there is no such file or folder."""
        unit = ScanUnit.from_path(Path(path).absolute())
        if not unit.exists():
            return Offered(unit)
        got = offer(self.services, self.dispatcher, unit, requested_by="process")
        if got.record is not None:
            self._taken.append(got.record.id)
        return got

    def finish(self) -> dict[int, ScanRecord]:
        """Wait until every scan taken has run; returns their journal rows now, by id."""
        self.dispatcher.wait_idle()
        self.dispatcher.stop(_STOP_SECONDS)
        rows = {i: self.services.journal.get(i) for i in self._taken}
        return {i: r for i, r in rows.items() if r is not None}


@contextmanager
def backfill(cfg: AgentConfig) -> Iterator[Backfill]:
    """A ``Backfill`` holding the journal's lock (``AlreadyRunning`` while a daemon runs on it)."""
    lock = JournalLock(cfg.journal.path)
    lock.acquire()
    services = bootstrap(cfg)
    try:
        bf = Backfill(services)
        bf.dispatcher.start()
        yield bf
    finally:
        services.close()
        lock.release()
