"""``scanner-agent process``: the given scans, now, through the daemon's intake, dispatcher and flow."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from scanner_agent.config import AgentConfig
from scanner_agent.core.states import ScanState
from scanner_agent.journal import ScanRecord
from scanner_agent.scanunit import ScanUnit
from scanner_agent.service.bootstrap import Services, bootstrap
from scanner_agent.service.dispatcher import Dispatcher
from scanner_agent.service.intake import Offered, offer
from scanner_agent.service.lock import JournalLock

#: How long ``finish`` lets the workers wind down once nothing is queued or running.
_STOP_SECONDS = 5.0
#: A scan in one of these states is still waiting for, or in, its run.
_UNFINISHED = (ScanState.READY, ScanState.PROCESSING)


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

    @property
    def taken(self) -> list[ScanRecord]:
        """The journal rows of the scans taken so far (for a progress bar's total)."""
        rows = (self.services.journal.get(i) for i in dict.fromkeys(self._taken))
        return [r for r in rows if r is not None]

    def finish(
        self, on_done: Callable[[ScanRecord], None] | None = None, *, poll_seconds: float = 0.5
    ) -> dict[int, ScanRecord]:
        """Wait until every scan taken has run; returns their journal rows now, by id.

        ``on_done`` is told of each scan once, as its run ends (within ``poll_seconds``)."""
        told: set[int] = set()

        def tell() -> None:
            if on_done is None:
                return
            busy = set(self.dispatcher.in_flight)
            for i in dict.fromkeys(self._taken):
                if i in told or i in busy:
                    continue
                rec = self.services.journal.get(i)
                if rec is not None and rec.state not in _UNFINISHED:
                    told.add(i)
                    on_done(rec)

        while not self.dispatcher.wait_idle(poll_seconds):
            tell()
        self.dispatcher.stop(_STOP_SECONDS)
        tell()
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
