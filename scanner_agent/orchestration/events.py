"""Prefect events for every scan outcome, queued durably and delivered in order, never lost.

``PrefectEventSink`` is a ``ReportSink``: each ``ScanReport`` (stored, held, failed, quarantined,
rescan-missing, verify-failed) becomes a Prefect event ``scanner-agent.scan.<kind>`` about the
resource ``scanner-agent.scan.<barcode>``, related to its scanner, its study and its flow run, with
the outcome's payload (stored path, sha256, size, sheet row...). Automations hang downstream work
on them (``setup-prefect --on-stored``, docs/events.md).

Why not ``prefect.events.emit_event``: its worker keeps events in memory and drops them after a
few failed tries, and its websocket send cannot tell a dead server from a live one. Here an event
is first written to the journal's file (``journal.EventOutbox``), then a background thread posts
the queue, oldest first, to the server's ``POST /api/events`` and marks rows sent only after the
server answered 204. A server that is down is retried with backoff until it is back; each event
keeps its id, so one sent twice (a crash between the answer and the mark) is stored once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any

from scanner_agent.core.outcomes import ScanReport
from scanner_agent.journal import EventOutbox, QueuedEvent

log = logging.getLogger(__name__)

#: Events posted per request (the server takes a list; a long backlog goes out in a few requests).
BATCH = 100
#: HTTP timeout of one post, so a hung server never holds ``close`` past its bound.
POST_TIMEOUT_SECONDS = 15.0


def scan_name(outcome: ScanReport) -> str:
    """The scan's name in events: its barcode, else its file's name (a scan whose barcode was not found)."""
    if outcome.barcode:
        return outcome.barcode
    if outcome.file:
        return PurePath(outcome.file).name
    return f"scan-{outcome.scan_id}" if outcome.scan_id is not None else "unknown"


def event_fields(outcome: ScanReport, event_id: uuid.UUID | None = None) -> dict[str, Any]:
    """The Prefect event for one outcome, as the JSON the events API takes."""
    name = scan_name(outcome)
    resource = {
        "prefect.resource.id": f"scanner-agent.scan.{name}",
        "prefect.resource.name": name,
        "scanner-agent.barcode": outcome.barcode or "",
        "scanner-agent.scanner": outcome.scanner,
        "scanner-agent.study": outcome.study or "",
    }
    related = [
        {
            "prefect.resource.id": f"scanner-agent.scanner.{outcome.scanner}",
            "prefect.resource.role": "scanner",
            "prefect.resource.name": outcome.scanner,
        }
    ]
    if outcome.study:
        related.append(
            {
                "prefect.resource.id": f"scanner-agent.study.{outcome.study}",
                "prefect.resource.role": "study",
                "prefect.resource.name": outcome.study,
            }
        )
    if outcome.flow_run_id:
        related.append(
            {
                "prefect.resource.id": f"prefect.flow-run.{outcome.flow_run_id}",
                "prefect.resource.role": "flow-run",
            }
        )
    return {
        "id": str(event_id or uuid.uuid4()),
        "occurred": datetime.fromtimestamp(outcome.at, UTC).isoformat(),
        "event": outcome.event,
        "resource": resource,
        "related": related,
        "payload": outcome.payload(),
    }


def validated(fields: dict[str, Any]) -> str:
    """The event's JSON, checked against Prefect's own ``Event`` model (a bad event fails here, not
    at the server, where it would block the queue behind it)."""
    from prefect.events import Event

    return Event.model_validate(fields).model_dump_json()


class PrefectEventSink:
    """Queues each outcome's event in the journal file and sends the queue from a background thread."""

    def __init__(
        self,
        outbox: EventOutbox,
        *,
        api_url: str | None = None,
        min_backoff: float = 2.0,
        max_backoff: float = 300.0,
    ) -> None:
        self.outbox = outbox
        #: None: Prefect's own settings (``PREFECT_API_URL``, as the rest of the agent).
        self.api_url = api_url
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._send_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._down_since: float | None = None

    def __repr__(self) -> str:
        return f"PrefectEventSink({self.outbox.db_path})"

    # -- ReportSink

    def report(self, outcome: ScanReport) -> None:
        """Queue the outcome's event (durably) and wake the sender; never raises, never waits on Prefect."""
        try:
            fields = event_fields(outcome)
            self.outbox.put(fields["id"], outcome.event, validated(fields))
        except Exception:
            log.exception("could not queue the Prefect event %s for %s", outcome.event, scan_name(outcome))
            return
        self.start()
        self._wake.set()

    # -- the sender

    def start(self) -> None:
        """Start the sender thread (once); it sends what an earlier run left queued at once."""
        with self._start_lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._run, name="prefect-events", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        backoff = self.min_backoff
        while True:
            stopping = self._stop.is_set()  # set during a pass: one more pass sends what came meanwhile
            try:
                self.send_pending()
            except Exception as exc:
                self._note_down(exc)
                # Backoff: only stopping cuts it short (new outcomes are queued meanwhile, not sent).
                # Stopped while the server is down: the backlog stays queued for the next start.
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, self.max_backoff)
                continue
            if stopping:  # the last pass after ``close`` went through
                return
            backoff = self.min_backoff
            # Idle until an outcome arrives (or close); look again now and then for rows another
            # process queued.
            self._wake.wait(60)
            self._wake.clear()

    def _note_down(self, exc: Exception) -> None:
        # One warning per outage, not one per try; the backlog is in the journal (status shows it).
        if self._down_since is None:
            self._down_since = time.time()
            log.warning(
                "Prefect events are queued, not sent: the Prefect server did not take them (%s); "
                "retrying with backoff, nothing is lost",
                _describe(exc),
            )
        else:
            log.debug("Prefect events still not sent: %s", _describe(exc))

    def send_pending(self) -> int:
        """Send every queued event, oldest first; returns how many went out. Raises on the first batch
        the server did not take (that batch and the ones after it stay queued, in order)."""
        sent = 0
        with self._send_lock:
            batch = self.outbox.pending(BATCH)
            if not batch:
                return 0
            with self._client() as client:
                while batch:
                    try:
                        self._post(client, batch)
                    except Exception as exc:
                        self.outbox.failed(batch, _describe(exc))
                        raise
                    self.outbox.mark_sent(batch)
                    sent += len(batch)
                    batch = self.outbox.pending(BATCH)
        if self._down_since is not None:
            log.info("Prefect server is back: queued events sent (%d)", sent)
            self._down_since = None
        return sent

    def _client(self) -> Any:
        from prefect.client.orchestration import SyncPrefectClient, get_client

        httpx_settings = {"timeout": POST_TIMEOUT_SECONDS}
        if self.api_url is None:
            return get_client(httpx_settings=httpx_settings, sync_client=True)
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY

        return SyncPrefectClient(
            self.api_url,
            auth_string=PREFECT_API_AUTH_STRING.value(),
            api_key=PREFECT_API_KEY.value(),
            httpx_settings=httpx_settings,
        )

    @staticmethod
    def _post(client: Any, batch: list[QueuedEvent]) -> None:
        # 204 only after the server published the events to its event pipeline (persister, triggers).
        response = client.request("POST", "/events", json=[json.loads(q.body) for q in batch])
        response.raise_for_status()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the sender after its last pass (what was reported is sent now if the server answers),
        waiting at most ``timeout``; what is still queued goes out on the next start."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():  # a post hanging on a slow server: its rows are durable, leave it
                log.warning(
                    "Prefect events: the last send is still waiting on the server; not waiting longer"
                )
                return
        left = self.outbox.pending_count()
        if left:
            log.warning(
                "%d Prefect event(s) not sent yet (Prefect server unreachable); they stay queued in %s "
                "and are sent when the agent next runs",
                left,
                self.outbox.db_path,
            )
        self.outbox.close()


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__


def build_event_sink(enabled: bool, journal_path: Any) -> PrefectEventSink | None:
    """``[prefect] events``: the sink for this agent, or None when events are off."""
    if not enabled:
        return None
    return PrefectEventSink(EventOutbox(journal_path))
