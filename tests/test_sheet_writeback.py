"""Sheet write-back against the local Sheets v4 server, with real gspread and google-auth.

The server (tests/servers/sheets_api.py) applies and records every ``values:batchUpdate``, so "one
batchUpdate per window" and "exactly these cells" are asserted on the wire and on the sheet's grid.
The sink's clock is a hand-driven one; nothing sleeps for a refresh window. The end-to-end tests run
scans through the real pipeline (Prefect, OpenSlide) with a Google sheet on the local server.
"""

from __future__ import annotations

import logging
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scanner_agent.config import load_config
from scanner_agent.core.outcomes import ReportKind, ScanReport
from scanner_agent.journal import WritebackQueue
from scanner_agent.reports.checks import run_checks
from scanner_agent.reports.status import gather_status, render_status
from scanner_agent.sheets import CsvWriteBackPreview, SheetWriteBack, write_back_sink
from scanner_agent.sheets.google_session import SCOPES, GoogleSession
from scanner_agent.testing.tiff_slides import write_svs
from tests.clock import ManualClock as Clock
from tests.daemon_helpers import unique_scanner_name
from tests.harness import dump_toml, make_agent, process, write_config
from tests.servers.sheets_api import FakeSheetsApi, sheets_api_server, write_service_account

KEY = "1WriteBackSheetKeyForScannerAgentTests00"
SA = "scanner-agent@test-project.iam.gserviceaccount.com"
FLAGS = ["Include in Name?", "REQUIRED", "REQUIRED", "REQUIRED", "", "", "", "", ""]
HEADER = ["Barcode", "Study", "Experiment", "Panel", "Rescan Requested", "Notes", "Scan Status", "Stored As"]
HEADER += ["Stored At"]
ROWS = [
    ["620995", "Prec01", "Run 2", "P1", "", "first"],
    ["645750", "Prec01", "Run 2", "", "", "panel not yet known"],
    ["545891", "Prec01", "Run 3", "P2", "yes", "blurry on first scan"],
]
COLUMNS = {
    "status": "Scan Status",
    "stored_as": "Stored As",
    "stored_at": "Stored At",
    "rescan": "Rescan Requested",
}


@pytest.fixture
def api() -> Iterator[FakeSheetsApi]:
    with sheets_api_server() as server:
        server.add_spreadsheet(KEY, {"Slides": [FLAGS, HEADER, *ROWS]})
        yield server


@pytest.fixture
def sa(tmp_path: Path, api: FakeSheetsApi) -> Path:
    return write_service_account(tmp_path, api, email=SA)


class Alerts(list[tuple[str, str, dict[str, Any]]]):
    """Stands in for ``Services.alert``: records (kind, message, fields)."""

    def __call__(self, kind: str, message: str, **kw: Any) -> dict[str, str]:
        self.append((kind, message, kw))
        return {}


@pytest.fixture
def alerts() -> Alerts:
    return Alerts()


@pytest.fixture
def make(api: FakeSheetsApi, sa: Path, tmp_path: Path, alerts: Alerts) -> Any:
    clock = Clock()

    def build(api_url: str | None = None) -> SheetWriteBack:
        session = GoogleSession(
            KEY, credentials_file=sa, worksheet="Slides", api_url=api_url or api.url, timeout=5, write=True
        )
        sink = SheetWriteBack(
            session,
            WritebackQueue(tmp_path / "journal.sqlite"),
            columns=COLUMNS,
            refresh_seconds=60,
            alert=alerts,
            clock=clock,
            background=False,
        )
        sink.clock = clock  # type: ignore[attr-defined]  # the test drives it
        return sink

    return build


def stored(barcode: str, path: str, *, at: float | None = None, **kw: Any) -> ScanReport:
    return ScanReport(
        ReportKind.STORED, "Cardinal", barcode, at or time.time(), "stored", stored_path=path, **kw
    )


def held(barcode: str, status: str = "held: REQUIRED Panel empty") -> ScanReport:
    return ScanReport(ReportKind.HELD, "Cardinal", barcode, time.time(), status)


def row_of(api: FakeSheetsApi, barcode: str) -> dict[str, str]:
    values = api.values_of(KEY, "Slides")
    for r in values[2:]:
        if r and r[0] == barcode:
            return dict(zip(values[1], r + [""] * (len(values[1]) - len(r)), strict=False))
    raise KeyError(barcode)


def written_ranges(api: FakeSheetsApi) -> list[list[tuple[str, str]]]:
    return [[(d["range"], d["values"][0][0]) for d in body["data"]] for body in api.writes]


# --- the sink on its own -----------------------------------------------------------------------


def test_one_batch_update_per_window_with_exactly_the_cells(make: Any, api: FakeSheetsApi) -> None:
    sink = make()
    before = api.values_of(KEY, "Slides")
    sink.report(stored("620995", "Prec01/Run-2/Prec01_Run-2_P1_620995.svs", rescan_done=False))
    sink.report(held("645750", "held: not yet"))
    sink.report(held("645750"))  # the latest outcome for a cell wins
    assert sink.flush() == 4
    assert sink.flush() == 0  # nothing queued
    sink.report(held("545891", "failed: storage full"))
    assert sink.flush() == 0 and len(api.writes) == 1  # same window: waits
    assert api.counts["write"] == 1 and api.writes[0]["valueInputOption"] == "RAW"
    ranges = dict(written_ranges(api)[0])
    assert set(ranges) == {"'Slides'!G3", "'Slides'!H3", "'Slides'!I3", "'Slides'!G4"}
    assert ranges["'Slides'!G4"] == "held: REQUIRED Panel empty"
    after = api.values_of(KEY, "Slides")
    changed = {
        (r, c)
        for r in range(len(after))
        for c in range(len(after[r]))
        if (before[r] + [""] * 9)[c] != after[r][c]
    }
    assert changed == {(2, 6), (2, 7), (2, 8), (3, 6)}  # no other cell touched
    r = row_of(api, "620995")
    assert r["Scan Status"] == "stored" and r["Stored As"] == "Prec01/Run-2/Prec01_Run-2_P1_620995.svs"
    assert r["Stored At"].startswith(time.strftime("%Y-%m-%d", time.localtime(sink.clock())))
    sink.clock.advance(60)
    assert sink.flush() == 1 and len(api.writes) == 2
    assert row_of(api, "545891")["Scan Status"] == "failed: storage full"


def test_rescan_done_marked_and_formula_text_stays_text(make: Any, api: FakeSheetsApi) -> None:
    sink = make()
    sink.report(stored("545891", '=HYPERLINK("x")/a.svs', rescan_done=True, at=1.7e9))
    sink.flush()
    r = row_of(api, "545891")
    assert r["Rescan Requested"] == "done " + time.strftime("%Y-%m-%d", time.localtime(1.7e9))
    assert r["Stored As"] == '=HYPERLINK("x")/a.svs'  # RAW: stored as typed, never a formula


def test_sorted_sheet_writes_the_moved_row(make: Any, api: FakeSheetsApi) -> None:
    sink = make()
    sink.report(stored("620995", "a/620995.svs"))
    api.set_values(KEY, "Slides", [FLAGS, HEADER, ROWS[2], ROWS[1], ROWS[0]])  # staff sort Z→A
    sink.flush()
    assert row_of(api, "620995")["Stored As"] == "a/620995.svs"
    assert [rng for rng, _ in written_ranges(api)[0]] == ["'Slides'!G5", "'Slides'!H5", "'Slides'!I5"]
    assert row_of(api, "545891")["Scan Status"] == ""


def test_staff_edit_is_overwritten_only_by_the_next_outcome(make: Any, api: FakeSheetsApi) -> None:
    sink = make()
    sink.report(stored("620995", "a/620995.svs"))
    sink.flush()
    values = api.values_of(KEY, "Slides")
    values[2][6] = "checked by Ana"
    api.set_values(KEY, "Slides", values)
    for _ in range(5):
        sink.clock.advance(61)
        assert sink.flush() == 0
    assert row_of(api, "620995")["Scan Status"] == "checked by Ana" and len(api.writes) == 1
    sink.report(held("620995", "held: sheet unreachable"))
    sink.clock.advance(61)
    sink.flush()
    assert row_of(api, "620995")["Scan Status"] == "held: sheet unreachable"


def test_missing_status_columns_one_warning_then_written_once_added(
    make: Any, api: FakeSheetsApi, caplog: pytest.LogCaptureFixture
) -> None:
    api.set_values(KEY, "Slides", [FLAGS[:6], HEADER[:6], *ROWS])
    sink = make()
    with caplog.at_level(logging.WARNING, logger="scanner_agent.sheets.write_back"):
        for i in range(4):
            sink.report(stored("620995", f"a/{i}.svs"))
            sink.report(held("645750"))
            sink.clock.advance(61)
            assert sink.flush() == 0
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 1
    assert "'Scan Status', 'Stored As', 'Stored At'" in warnings[0]
    assert api.writes == [] and sink.queue.summary()["cells"] == 4
    assert any("'Scan Status'" in p and "'Stored At'" in p for p in sink.check())
    api.set_values(KEY, "Slides", [FLAGS, HEADER, *ROWS])  # staff add the columns
    sink.clock.advance(61)
    assert sink.flush() == 4 and row_of(api, "620995")["Stored As"] == "a/3.svs"


def test_duplicate_barcode_not_written_and_alerted_once(
    make: Any, api: FakeSheetsApi, alerts: Alerts
) -> None:
    api.set_values(KEY, "Slides", [FLAGS, HEADER, *ROWS, ["620995", "Prec02", "Run 1", "P3"]])
    sink = make()
    sink.report(stored("620995", "a/620995.svs"))
    sink.report(held("645750"))
    sink.flush()
    assert [rng for rng, _ in written_ranges(api)[0]] == ["'Slides'!G4"]  # only the other barcode
    assert row_of(api, "620995")["Scan Status"] == ""
    assert [(k, kw) for k, _, kw in alerts] == [("sheet_malformed", {"barcode": "620995"})]
    assert "rows 3, 6" in alerts[0][1]
    for _ in range(3):
        sink.clock.advance(61)
        sink.flush()
    assert len(alerts) == 1 and len(api.writes) == 1  # one alert; kept queued, never written


@pytest.mark.parametrize("fault", ["500", "403", "unreachable"])
def test_write_failure_is_retried_and_shown_in_status(
    make: Any, api: FakeSheetsApi, tmp_path: Path, fault: str
) -> None:
    if fault == "500":
        sink = make()
        api.fail("write", 500, times=1)
    elif fault == "403":
        sink = make()
        api.read_only(KEY, SA)
    else:
        sink = make(api_url="http://127.0.0.1:9")  # nothing listens there
    sink.report(stored("620995", "a/620995.svs"))
    assert sink.flush() == 0
    backlog = sink.queue.summary()
    assert backlog is not None and backlog["cells"] == 3 and backlog["attempts"] == 1
    if fault == "403":
        assert "can read it but not write" in backlog["last_error"]
        assert any("can read it but not write" in p for p in sink.check())
        api.spreadsheets[KEY].viewers.clear()
    elif fault == "unreachable":
        sink.session.api_url = api.url
        sink.session._client = None
    sink.clock.advance(30)
    assert sink.flush() == 0  # retried in the next window, not before
    sink.clock.advance(31)
    assert sink.flush() == 3 and sink.queue.summary() is None
    assert row_of(api, "620995")["Scan Status"] == "stored"


def test_report_never_waits_for_google(make: Any, api: FakeSheetsApi) -> None:
    sink = make()
    sink.background = True
    api.hang("values", 30, times=1)  # the flush's read stalls
    sink.report(stored("620995", "a/620995.svs"))  # starts the flush thread, returns at once
    sink.report(held("645750"))  # queued while the flush is stuck
    assert sink._flush_lock.locked() and api.writes == []
    assert sink.queue.summary()["cells"] == 4
    api._stopping.set()  # release the hang


def test_backlog_survives_a_restart(make: Any, api: FakeSheetsApi) -> None:
    first = make()
    api.fail("write", 503, times=1)
    first.report(stored("620995", "a/620995.svs"))
    first.flush()
    first.close()
    second = make()
    assert second.queue.summary()["cells"] == 3
    assert second.flush() == 3 and row_of(api, "620995")["Stored As"] == "a/620995.svs"


def test_read_only_scope_when_write_back_is_off(sa: Path, api: FakeSheetsApi) -> None:
    reader = GoogleSession(KEY, credentials_file=sa, worksheet="Slides", api_url=api.url)
    assert reader.scopes == SCOPES and "https://www.googleapis.com/auth/spreadsheets.readonly" in SCOPES
    reader.fetch_once()
    assert set().union(*api.token_scopes.values()) == set(SCOPES)
    with pytest.raises(Exception, match="can read it but not write"):
        reader.write_cells("Slides", [("A2", "Barcode")])  # a read-only token is refused
    assert api.writes == []


def test_csv_preview_says_what_it_would_write(tmp_path: Path) -> None:
    csv = tmp_path / "sheet.csv"
    csv.write_text("Include in Name?,REQUIRED\nBarcode,Study\n111111,S\n620995,S\n", encoding="utf-8")
    lines: list[str] = []
    preview = CsvWriteBackPreview(csv, columns=COLUMNS, echo=lines.append)
    before = csv.read_bytes()
    preview.report(stored("620995", "S/620995.svs", at=1.7e9))
    assert lines == [
        'sheet write-back (CSV, not written): row 4 620995: Scan Status="stored", Stored As="S/620995.svs", '
        f'Stored At="{time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(1.7e9))}"'
    ]
    assert csv.read_bytes() == before


# --- through the real agent ----------------------------------------------------------------------


def _agent_config(tmp_path: Path, sa: Path, api: FakeSheetsApi, **sheet: Any) -> Path:
    cfg = write_config(tmp_path / "lab", name=unique_scanner_name("WriteBack"))
    data = tomllib.loads(cfg.read_text())
    data["sheet"] = {
        "spreadsheet_key": KEY,
        "worksheet": "Slides",
        "credentials_file": str(sa),
        "api_url": api.url,
        "timeout_seconds": 5,
        "recheck_seconds": 1,
        "write_back": True,
        **sheet,
    }
    cfg.write_text(dump_toml(data))
    return cfg


def test_end_to_end_stored_held_and_sorted(
    tmp_path: Path, sa: Path, api: FakeSheetsApi, prefect_api: str
) -> None:
    cfg = _agent_config(tmp_path, sa, api)
    agent = make_agent(cfg)
    try:
        sink = agent.sheet_writeback
        assert isinstance(sink, SheetWriteBack)
        sink.background = False
        watch = load_config(cfg).scanner.watch
        good = write_svs(watch / "620995.svs", width=1024, height=768)
        hold = write_svs(watch / "645750.svs", width=1024, height=768, seed=1)
        recs = process(agent, good, hold)
        assert [r.state for r in recs] == ["stored", "held"]
        # staff sort the sheet between the outcomes and the write
        api.set_values(KEY, "Slides", [FLAGS, HEADER, ROWS[2], ROWS[1], ROWS[0]])
        st = gather_status(load_config(cfg))
        assert st["sheet_writeback"]["cells"] == 4
        assert "sheet write-back: 4 cells waiting, oldest" in render_status(st)
        assert sink.flush() == 4 and api.counts["write"] == 1
        r = row_of(api, "620995")
        assert r["Scan Status"] == "stored" and r["Stored As"] == "Prec01/Run-2/Prec01_Run-2_P1_620995.svs"
        assert (load_config(cfg).storage.root / r["Stored As"]).is_file() and r["Stored At"]
        assert [rng for rng, _ in written_ranges(api)[0]] == [
            "'Slides'!G5",
            "'Slides'!H5",
            "'Slides'!I5",
            "'Slides'!G4",
        ]
        assert row_of(api, "645750")["Scan Status"] == "held: REQUIRED Panel empty"
        assert row_of(api, "545891")["Scan Status"] == ""
        assert gather_status(load_config(cfg))["sheet_writeback"] is None
    finally:
        agent.close()


def test_check_names_missing_columns_and_read_only_access(
    tmp_path: Path, sa: Path, api: FakeSheetsApi, prefect_api: str
) -> None:
    cfg = load_config(_agent_config(tmp_path, sa, api))
    texts = [r.text for r in run_checks(cfg) if not r.ok]
    assert not any("write-back" in t for t in texts)
    assert any(r.ok and "sheet write-back: status columns found, writable" in r.text for r in run_checks(cfg))
    before = api.values_of(KEY, "Slides")
    assert all(body["data"][0]["range"] == "'Slides'!A2" for body in api.writes)
    assert api.values_of(KEY, "Slides") == before  # the writability probe changed no data
    api.set_values(KEY, "Slides", [FLAGS[:6], HEADER[:6], *ROWS])
    api.read_only(KEY, SA)
    texts = [r.text for r in run_checks(cfg) if not r.ok]
    assert any("'Scan Status', 'Stored As', 'Stored At'" in t for t in texts)
    assert any("can read it but not write" in t for t in texts)


def test_write_back_off_adds_no_sink(tmp_path: Path, sa: Path, api: FakeSheetsApi) -> None:
    cfg = load_config(_agent_config(tmp_path, sa, api, write_back=False))
    assert write_back_sink(cfg) is None
    assert gather_status(cfg)["sheet_writeback"] is None


def test_background_flush_writes_without_a_caller(make: Any, api: FakeSheetsApi) -> None:
    sink = make()
    sink.background = True
    sink.report(stored("620995", "a/620995.svs"))  # kicks a flush on its own thread
    deadline = time.monotonic() + 60
    while sink.queue.summary() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert row_of(api, "620995")["Stored As"] == "a/620995.svs" and api.counts["write"] == 1
    sink.report(held("645750"))
    sink.kick()  # what the maintenance timer does every second: same window, nothing happens
    assert sink.queue.summary()["cells"] == 1 and api.counts["write"] == 1


def test_csv_sheet_gets_the_preview_sink(tmp_path: Path) -> None:
    path = write_config(tmp_path / "lab")
    path.write_text(path.read_text().replace("[sheet]\n", "[sheet]\nwrite_back = true\n"))
    assert isinstance(write_back_sink(load_config(path)), CsvWriteBackPreview)
    assert write_back_sink(load_config(write_config(tmp_path / "lab2"))) is None
