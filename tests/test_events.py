"""Prefect events for every scan outcome, against the session's real Prefect server.

* every outcome kind arrives as ``scanner-agent.scan.<kind>`` with its resource, related resources
  and payload;
* bad input: events emitted while the Prefect server is down are not lost: they wait in the
  journal's file, survive the agent stopping, and arrive (once each, in order) when a server
  answers at the agent's address again;
* done when: a scan stored through the real pipeline triggers a served downstream deployment
  (``setup-prefect --on-stored``) that receives the stored path and barcode and reads the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from scanner_agent.core.outcomes import ReportKind, ScanReport
from scanner_agent.journal import EventOutbox
from scanner_agent.orchestration.automations import ON_STORED_AUTOMATION, remove
from scanner_agent.orchestration.events import PrefectEventSink
from scanner_agent.testing.synthetic import write_svs
from tests.harness import make_agent, process, write_config

SCANNER_AGENT = Path(sys.executable).with_name("scanner-agent")
T = TypeVar("T")


def _eventually(probe: Callable[[], T | None], what: str, timeout: float = 120) -> T:
    """Poll ``probe`` until it returns something truthy (generous: the server persists in batches)."""
    end = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.5)


def _server_events(ids: list[str]) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventIDFilter

    with get_client(sync_client=True) as c:
        page = c.read_events(EventFilter(id=EventIDFilter(id=[uuid.UUID(i) for i in ids])), limit=50)
    return list(page.events)


def _queued_ids(journal: Path) -> list[str]:
    with sqlite3.connect(journal) as db:
        return [r[0] for r in db.execute("SELECT event_id FROM prefect_events ORDER BY seq")]


def _report(kind: ReportKind, barcode: str | None, **kw: Any) -> ScanReport:
    return ScanReport(kind=kind, scanner="Cardinal", barcode=barcode, at=time.time(), status=kind.value, **kw)


def test_every_outcome_arrives_with_resource_related_and_payload(tmp_path: Path, prefect_api: str) -> None:
    journal = tmp_path / "state" / "cardinal.sqlite"
    journal.parent.mkdir()
    sink = PrefectEventSink(EventOutbox(journal))
    run_id = str(uuid.uuid4())
    tag = uuid.uuid4().hex[:8]
    stored = _report(
        ReportKind.STORED,
        f"62{tag}",
        file="/scanner/x.svs",
        stored_path="Prec01/Run-2/x.svs",
        sha256="ab" * 32,
        size=1234,
        sheet_row=3,
        study="Prec01",
        flow_run_id=run_id,
        extra={"path": "/mnt/slides/Prec01/Run-2/x.svs", "storage_root": "/mnt/slides"},
    )
    others = [_report(k, f"{k.value}-{tag}", study="Prec01") for k in ReportKind if k != ReportKind.STORED]
    no_barcode = _report(ReportKind.QUARANTINED, None, file=f"/scanner/unlabelled-{tag}.svs")
    try:
        for r in [stored, *others, no_barcode]:
            sink.report(r)
        ids = _queued_ids(journal)
        assert len(ids) == 7
        got = _eventually(lambda: (e := _server_events(ids)) and len(e) == 7 and e, "7 events on the server")
    finally:
        sink.close()
    by_id = {str(e.id): e for e in got}
    assert {e.event for e in got} == {f"scanner-agent.scan.{k.value}" for k in ReportKind}
    ev = by_id[ids[0]]
    assert ev.event == "scanner-agent.scan.stored"
    assert ev.resource.id == f"scanner-agent.scan.62{tag}"
    assert ev.resource["prefect.resource.name"] == f"62{tag}"
    assert ev.resource["scanner-agent.barcode"] == f"62{tag}"
    assert ev.resource["scanner-agent.scanner"] == "Cardinal"
    assert ev.resource["scanner-agent.study"] == "Prec01"
    related = {r.role: r.id for r in ev.related}
    assert related == {
        "scanner": "scanner-agent.scanner.Cardinal",
        "study": "scanner-agent.study.Prec01",
        "flow-run": f"prefect.flow-run.{run_id}",
    }
    assert ev.payload["stored_path"] == "Prec01/Run-2/x.svs" and ev.payload["path"].endswith("/x.svs")
    assert (ev.payload["sha256"], ev.payload["size"], ev.payload["sheet_row"]) == ("ab" * 32, 1234, 3)
    assert abs(ev.occurred.timestamp() - stored.at) < 1e-3
    assert by_id[ids[-1]].resource.id == f"scanner-agent.scan.unlabelled-{tag}.svs"  # no barcode: file name
    assert EventOutbox(journal).summary() is None  # nothing left queued


class Relay:
    """A port that is dead (connection refused) until ``up()``, then forwards to the real server:
    to the agent, its Prefect server went away and came back at the same address."""

    def __init__(self, upstream: str) -> None:
        parts = urllib.parse.urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}{parts.path}"
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []

    def up(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._upstream)
            self._sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()


def test_events_emitted_while_the_server_is_down_are_sent_when_it_returns(
    tmp_path: Path, prefect_api: str
) -> None:
    journal = tmp_path / "state" / "cardinal.sqlite"
    journal.parent.mkdir()
    relay = Relay(prefect_api)
    tag = uuid.uuid4().hex[:8]
    try:
        # The agent's Prefect server is down: outcomes are reported, nothing can be sent.
        first = PrefectEventSink(EventOutbox(journal), api_url=relay.url, min_backoff=0.2, max_backoff=0.5)
        for i in range(3):
            first.report(_report(ReportKind.STORED, f"{tag}-{i}", stored_path=f"a/{i}.svs"))
        outbox = EventOutbox(journal)
        summary = _eventually(
            lambda: (s := outbox.summary()) and s["attempts"] >= 2 and s, "two failed sends recorded"
        )
        assert summary["events"] == 3 and "ConnectError" in summary["last_error"]
        # The agent stops while the server is still down: the events stay queued in its journal file.
        first.close(timeout=0.5)
        ids = _queued_ids(journal)
        assert len(ids) == 3 and outbox.pending_count() == 3
        assert _server_events(ids) == []

        # Next start, the server is back at the same address: the backlog goes out, then new ones.
        relay.up()
        second = PrefectEventSink(EventOutbox(journal), api_url=relay.url, min_backoff=0.2, max_backoff=0.5)
        second.start()
        second.report(_report(ReportKind.HELD, f"{tag}-3"))
        ids = _queued_ids(journal)
        got = _eventually(lambda: (e := _server_events(ids)) and len(e) == 4 and e, "4 events after recovery")
        assert sorted(str(e.id) for e in got) == sorted(ids)  # each once, with the id it was queued with
        _eventually(lambda: outbox.pending_count() == 0, "the outbox emptied")
        with sqlite3.connect(journal) as db:
            sent = [r[0] for r in db.execute("SELECT sent FROM prefect_events ORDER BY seq")]
        assert sent == sorted(sent)  # sent in the order they were queued

        # A resend of an event the server already has (a crash between its answer and the mark)
        # keeps the event's id: the server still holds it once.
        with sqlite3.connect(journal) as db:
            db.execute("UPDATE prefect_events SET sent = NULL WHERE event_id = ?", (ids[0],))
        second.report(_report(ReportKind.HELD, f"{tag}-4"))  # queued after the resend: a marker
        marker = _queued_ids(journal)[-1]
        _eventually(lambda: outbox.pending_count() == 0, "the resend and the marker sent")
        _eventually(lambda: _server_events([marker]), "the marker stored")  # stored in order, after it
        assert len(_server_events([ids[0]])) == 1
        second.close()
        outbox.close()
    finally:
        relay.close()


# -- setup-prefect --on-stored: a stored scan runs a downstream deployment ------------------------------


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCANNER_AGENT), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def downstream(tmp_path: Path, prefect_api: str) -> Iterator[Path]:
    """The downstream flow served (``flow.serve``) in its own process; yields its receipt folder."""
    receipts = tmp_path / "receipts"
    receipts.mkdir()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("downstream_flow.py")), "events-test"],
        env={**os.environ, "RECEIPT_DIR": str(receipts), "PREFECT_RUNNER_POLL_FREQUENCY": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).parent.parent,
    )
    try:
        _eventually(lambda: _deployment("stored-scan-receipt/events-test"), "the served deployment")
        yield receipts
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _deployment(name: str) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as c:
        try:
            return c.read_deployment_by_name(name)
        except ObjectNotFound:
            return None


def _downstream_runs(deployment_id: Any) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as c:
        return list(
            c.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
        )


def test_a_stored_scan_triggers_a_downstream_deployment_run(tmp_path: Path, downstream: Path) -> None:
    cfg = write_config(tmp_path / "agent")
    # An unknown deployment, and a flow without `path`/`barcode`: clear errors, nothing created.
    bad = _cli("setup-prefect", "--config", str(cfg), "--on-stored", "no-such-flow/nothing")
    assert bad.returncode == 2 and "no such deployment" in bad.stderr, bad.stderr
    done = _cli("setup-prefect", "--config", str(cfg), "--on-stored", "stored-scan-receipt/events-test")
    assert done.returncode == 0, done.stderr
    assert "run stored-scan-receipt/events-test on stored scans" in done.stdout
    again = _cli("setup-prefect", "--config", str(cfg), "--on-stored", "stored-scan-receipt/events-test")
    assert again.returncode == 0 and "on stored scans': unchanged" in again.stdout, again.stdout

    dep = _deployment("stored-scan-receipt/events-test")
    agent = make_agent(cfg)
    try:
        _stored_scan_runs_downstream(tmp_path, downstream, agent, dep)
    finally:
        # Other tests on this server store scans too: no downstream runs for them.
        asyncio.run(remove([ON_STORED_AUTOMATION.format(deployment="stored-scan-receipt/events-test")]))


def _stored_scan_runs_downstream(tmp_path: Path, downstream: Path, agent: Any, dep: Any) -> None:
    try:
        src = write_svs(
            tmp_path / "agent" / "scanner" / "620995_x.svs", barcode="620995", width=512, height=384
        )
        [rec] = process(agent, src)
        assert rec.state == "stored", rec.reason
    finally:
        agent.close()  # flushes the queued events (bounded)
    stored = Path(rec.dest)

    def completed() -> Any:
        runs = [r for r in _downstream_runs(dep.id) if r.parameters.get("barcode") == "620995"]
        return next((r for r in runs if r.state and r.state.is_completed()), None)

    run = _eventually(completed, "the downstream run to complete", timeout=240)
    assert run.parameters["path"] == str(stored)
    assert run.parameters["stored_path"] == stored.relative_to(tmp_path / "agent" / "storage").as_posix()
    assert run.parameters["sha256"] == rec.sha256
    receipt = json.loads((downstream / "620995.json").read_text())
    assert receipt["sha256"] == hashlib.sha256(stored.read_bytes()).hexdigest() == rec.sha256
    assert receipt["size"] == stored.stat().st_size and receipt["path"] == str(stored)
