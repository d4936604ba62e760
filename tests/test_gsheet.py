"""GoogleSheetSource against a local fake of the Sheets v4 API, with real gspread and google-auth.

The fake (tests/servers/sheets_api.py) checks the JWT grant's signature and the bearer token, and
counts requests per endpoint, so "one read per refresh" is asserted on the wire. Time is an injected
clock (nothing sleeps for a refresh interval); backoff sleeps are recorded, not slept.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from scanner_agent.core.errors import SheetMalformed, SheetUnavailable, UnknownBarcode
from scanner_agent.core.sheet_table import lookup
from scanner_agent.sheets import GoogleSheetSource
from tests.clock import ManualClock as Clock
from tests.servers.sheets_api import FakeSheetsApi, sheets_api_server, write_service_account

KEY = "1AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdEF"
SA_EMAIL = "scanner-agent@test-project.iam.gserviceaccount.com"
SAMPLE = [
    ["Include in Name?", "REQUIRED", "REQUIRED", "REQUIRED", "REQUIRED", "", "", ""],
    ["Barcode", "Study", "Experiment", "Panel", "Scanner", "Scan Date", "Rescan Requested", "Notes"],
    ["620995", "Prec01", "Run 2", "P1", "Cardinal", "", "", ""],
    ["645750", "Prec01", "Run 2", "P1", "Cardinal", "", "", ""],
    ["317335", "Prec01", "Run 2", "P1", "Cardinal", "", "", ""],
    ["407871", "Prec01", "Run 2", "P1", "Cardinal", "", "", ""],
    ["465551", "Prec01", "Run 2", "P1", "Cardinal", "", "", ""],
    ["754788", "Prec01", "Run 2", "P1", "Cardinal", "", "", ""],
    ["545891", "Prec01", "Run 3", "P2", "Raven", "", "yes", "blurry on first scan"],
]


@pytest.fixture
def api() -> Iterator[FakeSheetsApi]:
    with sheets_api_server() as server:
        server.add_spreadsheet(KEY, {"Sheet1": SAMPLE, "Archive": [["old"]]})
        yield server


@pytest.fixture
def sa(tmp_path: Path, api: FakeSheetsApi) -> Path:
    return write_service_account(tmp_path, api, email=SA_EMAIL)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make(api: FakeSheetsApi, sa: Path, tmp_path: Path, clock: Clock, sleeps: list[float]) -> Any:
    def build(**kw: Any) -> GoogleSheetSource:
        args: dict[str, Any] = {
            "credentials_file": sa,
            "worksheet": "Sheet1",
            "refresh_seconds": 60,
            "cache_path": tmp_path / "cache" / "sheet.json",
            "api_url": api.url,
            "timeout": 5,
            "clock": clock,
            "retries": 2,
            "backoff": 0.25,
            "max_backoff": 2.0,
            "sleep": sleeps.append,
        }
        args.update(kw)
        return GoogleSheetSource(args.pop("key", KEY), **args)

    return build


def test_happy_path(make: Any, api: FakeSheetsApi) -> None:
    src = make()
    table = src.table(want="545891")
    row = lookup(table, "545891")
    assert row.row_number == 9 and row.values["Scanner"] == "Raven"
    assert table.source == "spreadsheet 1AbCdEfG… worksheet 'Sheet1'"
    assert api.counts["values"] == 1 and api.counts["meta"] == 0 and api.counts["token"] == 1
    assert src.reads == 1 and src.cache_age() == 0 and src.last_error is None
    assert KEY in src.describe()


def test_first_worksheet_when_none_named(make: Any, api: FakeSheetsApi) -> None:
    table = make(worksheet=None).table()
    assert "worksheet 'Sheet1'" in table.source and len(table.rows) == 7
    assert api.counts["meta"] == 1 and api.counts["values"] == 1


def test_burst_of_300_costs_one_read(make: Any, api: FakeSheetsApi) -> None:
    src = make()
    known = [r[0] for r in SAMPLE[2:]]
    with ThreadPoolExecutor(max_workers=8) as pool:
        tables = list(pool.map(lambda i: src.table(want=known[i % len(known)]), range(300)))
    assert all(t is tables[0] for t in tables)
    assert api.counts["values"] == 1

    # 300 scans of barcodes the sheet lacks: one early read between them, not 300.
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: src.table(want=f"9{i:05d}"), range(300)))
    assert api.counts["values"] == 2


def test_refresh_after_interval(make: Any, api: FakeSheetsApi, clock: Clock) -> None:
    src = make()
    src.table()
    clock.advance(59)
    src.table()
    assert api.counts["values"] == 1
    clock.advance(2)
    src.table()
    assert api.counts["values"] == 2
    assert src.cache_age() == 0


def test_unknown_barcode_refreshes_early_once_per_window(make: Any, api: FakeSheetsApi, clock: Clock) -> None:
    src = make()
    src.table()
    clock.advance(5)
    src.table(want="111111")  # early read
    src.table(want="111111")
    clock.advance(5)
    src.table(want="222222")  # still the same window
    assert api.counts["values"] == 2
    clock.advance(56)  # 61s after the early read: scheduled read
    src.table(want="222222")
    assert api.counts["values"] == 3
    clock.advance(5)  # 61s after the last early read: one more early read allowed
    src.table(want="333333")
    assert api.counts["values"] == 4
    src.table(want="444444")
    assert api.counts["values"] == 4


def test_new_row_becomes_visible(make: Any, api: FakeSheetsApi, clock: Clock) -> None:
    src = make()
    with pytest.raises(UnknownBarcode):
        lookup(src.table(want="700001"), "700001")  # first read lacks it; no early read yet: just read
    api.set_values(KEY, "Sheet1", SAMPLE + [["700001", "Prec02", "Run 1", "", "Raven"]])
    clock.advance(1)
    table = src.table(want="700001")  # early read finds the row typed meanwhile
    assert table.rows["700001"].values["Study"] == "Prec02"
    assert api.counts["values"] == 2

    # Filling a REQUIRED cell shows up at the next scheduled read (the barcode was already there).
    api.set_values(KEY, "Sheet1", SAMPLE + [["700001", "Prec02", "Run 1", "P9", "Raven"]])
    clock.advance(30)
    assert src.table(want="700001").rows["700001"].values["Panel"] == ""
    clock.advance(31)
    assert lookup(src.table(want="700001"), "700001").values["Panel"] == "P9"


def test_404_wrong_key(make: Any, api: FakeSheetsApi, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(SheetUnavailable, match=r"Spreadsheet 1NoSuchSheet\w* was not found \(404\)") as e:
        make(key="1NoSuchSheetKey0000").table()
    assert e.value.transient and e.value.state == "held"
    assert "spreadsheet key" in e.value.action

    # Deleted after a good read: the good copy goes on serving, and the log says why and how old.
    src = make()
    src.table()
    api.remove_spreadsheet(KEY)
    clock.advance(120)
    with caplog.at_level(logging.WARNING, logger="scanner_agent.sheets.google"):
        table = src.table()
    assert len(table.rows) == 7
    assert "was not found (404)" in caplog.text and "read 2 min ago" in caplog.text
    assert "404" in (src.last_error or "")


def test_403_names_the_service_account(make: Any, api: FakeSheetsApi) -> None:
    api.unshare(KEY, SA_EMAIL)
    src = make()
    with pytest.raises(SheetUnavailable, match=f"share the sheet with {SA_EMAIL}") as e:
        src.table()
    assert SA_EMAIL in e.value.action
    assert api.counts["values"] == 1  # permission errors are not retried
    assert any(SA_EMAIL in p for p in src.check())


def test_429_honours_retry_after(make: Any, api: FakeSheetsApi, sleeps: list[float]) -> None:
    api.fail("values", 429, retry_after=1)
    table = make().table()
    assert len(table.rows) == 7 and sleeps == [1.0]
    assert api.counts["values"] == 2


def test_429_without_retry_after_backs_off_exponentially(
    make: Any, api: FakeSheetsApi, sleeps: list[float]
) -> None:
    api.fail("values", 429, times=2)
    src = make()
    assert len(src.table().rows) == 7
    assert sleeps == [0.25, 0.5]
    assert api.counts["values"] == 3 and src.reads == 3


def test_429_with_long_retry_after_waits_it_out_on_the_cached_copy(
    make: Any, api: FakeSheetsApi, clock: Clock, sleeps: list[float]
) -> None:
    src = make()
    src.table()
    clock.advance(60)
    api.fail("values", 429, retry_after=300, times=None)
    assert len(src.table().rows) == 7  # cached copy
    assert sleeps == [] and api.counts["values"] == 2  # no in-call wait longer than max_backoff
    clock.advance(200)
    src.table()
    assert api.counts["values"] == 2  # Retry-After not yet over
    api.clear_faults()
    clock.advance(101)
    src.table()
    assert api.counts["values"] == 3 and src.last_error is None


def test_500_then_success(make: Any, api: FakeSheetsApi, sleeps: list[float]) -> None:
    api.fail("values", 500)
    src = make()
    assert len(src.table().rows) == 7
    assert sleeps == [0.25] and api.counts["values"] == 2 and src.last_error is None


def test_persistent_5xx_is_bounded_then_uses_cache(
    make: Any, api: FakeSheetsApi, clock: Clock, sleeps: list[float]
) -> None:
    src = make()
    src.table()
    clock.advance(61)
    api.fail("values", 503, times=None)
    assert len(src.table().rows) == 7
    assert api.counts["values"] == 1 + 3  # 1 good, then 1 try + 2 retries
    assert sleeps == [0.25, 0.5]
    src.table()  # within the next interval: no more hammering
    assert api.counts["values"] == 4


def test_hang_past_timeout_uses_cached_copy(make: Any, api: FakeSheetsApi, clock: Clock) -> None:
    src = make(timeout=0.3, retries=1)
    src.table()
    clock.advance(61)
    api.hang("values", 30, times=None)
    table = src.table()
    assert len(table.rows) == 7
    assert "timed out after 0.3s" in (src.last_error or "")
    assert api.counts["values"] == 3


def test_no_cache_and_outage_raises_unavailable(make: Any, api: FakeSheetsApi, clock: Clock) -> None:
    api.fail("values", 500, times=None)
    src = make(cache_path=None)
    with pytest.raises(
        SheetUnavailable,
        match=r"^Google failed reading spreadsheet 1AbCdEfG… worksheet "
        r"'Sheet1' \(500.* No earlier copy",
    ):
        src.table()
    assert api.counts["values"] == 3
    with pytest.raises(SheetUnavailable):
        src.table(want="545891")  # held, and no new read inside the interval
    assert api.counts["values"] == 3
    assert src.cache_age() is None


def test_restart_uses_the_disk_cache(
    make: Any, api: FakeSheetsApi, clock: Clock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make().table()
    cache = json.loads((tmp_path / "cache" / "sheet.json").read_text())
    assert cache["values"][8][0] == "545891" and cache["spreadsheet_key"] == KEY

    # A restart within the interval does not read again.
    restarted = make()
    assert len(restarted.table().rows) == 7 and api.counts["values"] == 1

    # A restart during an outage serves the disk copy and says how old it is.
    clock.advance(3600)
    api.fail("values", 500, times=None)
    with caplog.at_level(logging.WARNING, logger="scanner_agent.sheets.google"):
        table = make().table(want="545891")
    assert lookup(table, "545891").values["Experiment"] == "Run 3"
    assert "read 60 min ago" in caplog.text
    assert make().cache_age() == pytest.approx(3600)

    # A cache written for another sheet is never used for this one.
    with pytest.raises(SheetUnavailable):
        make(worksheet="Archive").table()


def test_worksheet_renamed(make: Any, api: FakeSheetsApi, clock: Clock) -> None:
    src = make()
    src.table()
    api.rename_worksheet(KEY, "Sheet1", "Samples 2024")
    clock.advance(61)
    assert len(src.table().rows) == 7  # cached copy
    assert "No worksheet 'Sheet1'" in (src.last_error or "")
    assert "'Samples 2024', 'Archive'" in (src.last_error or "")

    with pytest.raises(SheetUnavailable, match=r"No worksheet 'Sheet1' .*'Samples 2024', 'Archive'") as e:
        make(cache_path=None).table()
    assert "worksheet name" in e.value.action


def test_empty_sheet_is_malformed_and_keeps_the_good_cache(
    make: Any, api: FakeSheetsApi, clock: Clock, tmp_path: Path
) -> None:
    src = make()
    src.table()
    api.set_values(KEY, "Sheet1", [])
    clock.advance(61)
    with pytest.raises(SheetMalformed, match=r"spreadsheet 1AbCdEfG… worksheet 'Sheet1' is empty"):
        src.table()
    with pytest.raises(SheetMalformed):
        src.table()
    assert api.counts["values"] == 2  # the malformed answer is remembered for the interval too
    cache = json.loads((tmp_path / "cache" / "sheet.json").read_text())
    assert len(cache["values"]) == 9 and "is empty" in cache["malformed"]["message"]

    # An outage now must not quietly revert to the pre-edit copy, nor must a restart.
    clock.advance(61)
    api.fail("values", 500, times=None)
    with pytest.raises(SheetMalformed):
        src.table()
    with pytest.raises(SheetMalformed):
        make().table()

    # Fixed: back to normal.
    api.clear_faults()
    api.set_values(KEY, "Sheet1", SAMPLE)
    clock.advance(61)
    assert len(src.table().rows) == 7


def test_malformed_header(make: Any, api: FakeSheetsApi) -> None:
    api.set_values(KEY, "Sheet1", [SAMPLE[0], ["Slide"] + SAMPLE[1][1:], ["1", "x"]])
    with pytest.raises(SheetMalformed, match="no 'Barcode' column"):
        make().table()


def test_check_reports_credentials_mode_and_sheet_problems(make: Any, api: FakeSheetsApi, sa: Path) -> None:
    assert make().check() == []
    sa.chmod(0o644)
    problems = make().check()
    assert len(problems) == 1 and "readable by other users" in problems[0] and "chmod 600" in problems[0]
    sa.chmod(0o600)
    api.set_values(KEY, "Sheet1", SAMPLE + [SAMPLE[2]])
    assert any("barcode 620995 is on rows 3, 10" in p for p in make().check())
    assert "No worksheet 'Nope'" in make(worksheet="Nope", cache_path=None).check()[0]


def test_bad_credentials_files(make: Any, tmp_path: Path) -> None:
    missing = make(credentials_file=tmp_path / "nope.json", cache_path=None)
    with pytest.raises(SheetUnavailable, match="nope.json"):
        missing.table()
    assert "nope.json" in missing.check()[0]
    broken = tmp_path / "broken.json"
    broken.write_text('{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\\nMIIsecret')
    with pytest.raises(SheetUnavailable, match="not valid JSON") as e:
        make(credentials_file=broken, cache_path=None).table()
    assert "MIIsecret" not in str(e.value)


def test_token_refused(make: Any, api: FakeSheetsApi, tmp_path: Path) -> None:
    sa = write_service_account(
        tmp_path, api, email="stranger@test-project.iam.gserviceaccount.com", name="other.json"
    )
    api.public_keys.pop("stranger@test-project.iam.gserviceaccount.com")  # key deleted in the console
    with pytest.raises(SheetUnavailable, match="did not issue a token for stranger@") as e:
        make(credentials_file=sa, cache_path=None).table()
    assert api.counts["values"] == 0 and "key" in e.value.action


def test_secrets_never_logged_or_raised(
    make: Any, api: FakeSheetsApi, sa: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    info = json.loads(sa.read_text())
    key_body = info["private_key"].splitlines()[5]
    messages: list[str] = []
    with caplog.at_level(logging.DEBUG):
        src = make()
        src.table()
        for status in (403, 404, 429, 500):
            api.fail("values", status, times=None)
            clock.advance(61)
            src.table()
            messages.append(src.last_error or "")
            api.clear_faults()
        api.unshare(KEY, SA_EMAIL)
        try:
            make(cache_path=None).table()
        except SheetUnavailable as e:
            messages.append(str(e) + e.action)
        messages += make(cache_path=None).check()
    assert api.tokens, "the fake issued tokens"
    text = caplog.text + "\n".join(messages)
    for token in api.tokens:
        assert token not in text
    assert key_body not in text and info["private_key_id"] not in text
    assert SA_EMAIL in text  # the e-mail is not a secret, and people need it


def test_clock_stepping_back_does_not_stall_reads(make: Any, api: FakeSheetsApi, clock: Clock) -> None:
    src = make()
    src.table()
    clock.advance(-3600)  # NTP correction after a bad boot clock
    src.table()
    assert api.counts["values"] == 2


def test_cache_file_is_replaced_whole(make: Any, clock: Clock, tmp_path: Path) -> None:
    src = make()
    for _ in range(3):
        src.table()
        clock.advance(61)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["sheet.json"]  # no temp files left
