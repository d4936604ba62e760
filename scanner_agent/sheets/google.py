"""The metadata sheet read from Google Sheets, cached so a burst of scans costs one read.

How reads are spent
    The whole worksheet is read in one ``values.get`` call at most once per ``refresh_seconds`` and
    shared by every scan. A scan asking for a barcode the cached copy lacks (``want=``) may pull the
    next read forward, at most once per ``refresh_seconds``: a person who just typed the row should
    not wait a full interval, but 300 scans of unknown barcodes must not cost 300 reads. With a named
    worksheet a read is one request; with ``worksheet=None`` it is two (metadata to find the first
    worksheet's title, then its values), so name the worksheet when quota is tight.

When Google fails
    429 and 5xx and timeouts are retried in the same call with bounded backoff (``Retry-After`` is
    honoured when it fits under ``max_backoff``; when it does not, the next read waits for it). Then,
    and for 404 / 403 / renamed worksheet / bad credentials, the last good copy is served (its age is
    logged) and the next read is tried one interval later. With no good copy, ``SheetUnavailable``.
    The last good copy lives in memory and, if ``cache_path`` is set, in a JSON file written
    atomically, so a restart during an outage still has it.

When the sheet is malformed (no barcode column, duplicate headers...)
    ``table()`` raises ``SheetMalformed`` until a read shows the sheet fixed: a copy from before the
    edit could silently name a scan from data the person is in the middle of changing, so affected
    scans are held instead. The last good copy is *not* discarded (memory or disk): it is what an
    outage falls back to once the sheet is fixed and read again. The malformed state itself is
    remembered (also on disk), so an outage right after a malformed read keeps scans held rather
    than quietly reverting to the older copy.

The talking to Google (service account, ``api_url`` reroute, one read, error wording) is
``sheets.google_session``; this module decides when to read and what to serve.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scanner_agent.core.errors import SheetMalformed, SheetUnavailable
from scanner_agent.core.humanize import age_text
from scanner_agent.core.sheet_table import SheetTable, parse_table
from scanner_agent.fileio import write_atomic
from scanner_agent.sheets.google_session import GoogleSession, ReadFailed

log = logging.getLogger(__name__)

_CACHE_VERSION = 1


class GoogleSheetSource:
    """A ``MetadataSource`` over one worksheet of a Google Sheet, read with a service account."""

    def __init__(
        self,
        spreadsheet_key: str,
        *,
        credentials_file: Path,
        worksheet: str | None = None,
        refresh_seconds: float = 60,
        cache_path: Path | None = None,
        api_url: str = "",
        timeout: float = 30,
        barcode_column: str = "Barcode",
        clock: Callable[[], float] = time.time,
        retries: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not spreadsheet_key.strip():
            raise ValueError("spreadsheet_key is empty")
        if refresh_seconds <= 0:
            raise ValueError("refresh_seconds must be positive")
        self.spreadsheet_key = spreadsheet_key.strip()
        self.credentials_file = Path(credentials_file)
        self.worksheet = worksheet
        self.refresh_seconds = float(refresh_seconds)
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.barcode_column = barcode_column
        self._clock = clock
        self._retries = max(0, retries)
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._sleep = sleep
        self._session = GoogleSession(
            self.spreadsheet_key,
            credentials_file=self.credentials_file,
            worksheet=worksheet,
            api_url=self.api_url,
            timeout=timeout,
        )

        self._state_lock = threading.Lock()  # guards the fields below; held only briefly
        self._read_lock = threading.Lock()  # one read of Google at a time
        self._good: SheetTable | None = None
        self._good_values: list[list[str]] | None = None
        self._malformed: SheetMalformed | None = None
        self._malformed_at: float | None = None
        self._last_error: str | None = None
        self._last_action: str | None = None
        self._next_read_at = 0.0
        self._last_attempt_at: float | None = None
        self._early_at: float | None = None
        self._disk_loaded = False
        self._reads = 0

    # -- public surface -------------------------------------------------------------------------
    def describe(self) -> str:
        ws = f"worksheet '{self.worksheet}'" if self.worksheet else "first worksheet"
        return f"Google Sheet {self.spreadsheet_key} {ws}"

    @property
    def reads(self) -> int:
        """Read attempts made against the API so far (successful and failed; each retry counts)."""
        return self._reads

    @property
    def last_error(self) -> str | None:
        """Why the latest read failed, or None if it succeeded (for ``status``)."""
        return self._last_error

    def cache_age(self) -> float | None:
        """Seconds since the last good read (memory or disk copy), or None if there is none."""
        with self._state_lock:
            self._load_disk_cache()
            return None if self._good is None else max(0.0, self._clock() - self._good.fetched_at)

    def table(self, *, want: str | None = None) -> SheetTable:
        """The sheet as last read; reads Google first if the copy is due (or lacks ``want``, once)."""
        with self._state_lock:
            self._load_disk_cache()
            due = self._due(want)
            have_copy = self._good is not None or self._malformed is not None
        # While another thread reads, callers with a copy in hand use it rather than queue.
        if due and self._read_lock.acquire(blocking=not have_copy):
            try:
                with self._state_lock:
                    due = self._due(want)  # another thread may have just read
                    early = not self._scheduled_due()
                if due:
                    self._read(early=early)
            finally:
                self._read_lock.release()
        return self._serve()

    def check(self) -> list[str]:
        """Problems a person should fix: credentials file, access to the sheet, the sheet's content."""
        problems = self._session.check_credentials_file()
        with self._read_lock:
            with self._state_lock:
                self._load_disk_cache()
            try:
                values, source = self._session.fetch_once()
            except ReadFailed as e:
                return problems + [e.message]
            finally:
                self._reads += 1
            try:
                table = self._accept(values, source)
            except SheetMalformed as e:
                return problems + [str(e)]
        return problems + list(table.problems)

    # -- scheduling -----------------------------------------------------------------------------
    def _scheduled_due(self) -> bool:
        now = self._clock()
        # After the clock steps back, "next read at" may be hours away: read now instead.
        clock_went_back = self._last_attempt_at is not None and now < self._last_attempt_at
        return now >= self._next_read_at or clock_went_back

    def _due(self, want: str | None) -> bool:
        if self._scheduled_due():
            return True
        if want is None or self._good is None or self._malformed is not None or self._last_error:
            return False  # early reads only chase a new row; they never hammer a failing sheet
        if want.strip() in self._good.rows:
            return False
        return self._early_at is None or self._clock() - self._early_at >= self.refresh_seconds

    def _serve(self) -> SheetTable:
        with self._state_lock:
            if self._malformed is not None:
                raise SheetMalformed(self._malformed.message)  # a fresh exception per caller
            if self._good is not None:
                return self._good
            if self._last_error is None:
                raise SheetUnavailable(f"The sheet ({self._session.where()}) has not been read yet.")
            raise SheetUnavailable(
                f"{self._last_error} No earlier copy of the sheet is cached.", action=self._last_action
            )

    # -- one read, with retries -----------------------------------------------------------------
    def _read(self, *, early: bool) -> None:
        started = self._clock()
        with self._state_lock:
            self._last_attempt_at = started
            if early:
                self._early_at = started
        try:
            values, source = self._fetch_with_retries()
        except ReadFailed as e:
            self._failed(e, started)
            return
        # A malformed sheet is recorded by _accept and raised by _serve.
        with contextlib.suppress(SheetMalformed):
            self._accept(values, source)

    def _fetch_with_retries(self) -> tuple[list[list[str]], str]:
        delay = self._backoff
        for attempt in range(self._retries + 1):
            try:
                return self._session.fetch_once()
            except ReadFailed as e:
                if not e.retryable or attempt == self._retries:
                    raise
                wait = e.retry_after if e.retry_after is not None else delay
                if wait > self._max_backoff:
                    raise  # honour a long Retry-After by not reading until then (see _failed)
                log.info(
                    "Reading %s failed (%s); retry %d/%d in %.1fs",
                    self._session.where(),
                    e.message,
                    attempt + 1,
                    self._retries,
                    wait,
                )
                self._sleep(wait)
                delay = min(delay * 2, self._max_backoff)
            finally:
                self._reads += 1
        raise AssertionError("unreachable")

    def _failed(self, e: ReadFailed, started: float) -> None:
        wait = self.refresh_seconds
        if e.retry_after is not None:
            wait = max(wait, e.retry_after)
        with self._state_lock:
            self._last_error = e.message
            self._last_action = e.action
            self._next_read_at = started + wait
            good, malformed = self._good, self._malformed
        if malformed is not None:
            log.error("%s The sheet was malformed when last read, so scans stay held.", e.message)
        elif good is not None:
            age = max(0.0, self._clock() - good.fetched_at)
            log.warning("%s Using the last good copy, read %s ago.", e.message, age_text(age))
        else:
            log.error("%s No cached copy: scans are held until the sheet can be read.", e.message)

    def _accept(self, values: list[list[str]], source: str) -> SheetTable:
        """Parse a fresh read and make it current; a malformed sheet becomes the current state."""
        now = self._clock()
        try:
            table = parse_table(values, source=source, barcode_column=self.barcode_column, fetched_at=now)
        except SheetMalformed as e:
            with self._state_lock:
                news = self._malformed is None or self._malformed.message != e.message
                self._malformed, self._malformed_at = e, now
                self._last_error, self._last_action = None, None
                self._next_read_at = now + self.refresh_seconds
            log.log(
                logging.ERROR if news else logging.DEBUG,
                "%s Scans needing the sheet are held until it is fixed.",
                e,
            )
            self._write_disk_cache()
            raise
        with self._state_lock:
            previous = self._good
            self._good, self._good_values = table, values
            self._malformed = self._malformed_at = None
            self._last_error, self._last_action = None, None
            self._next_read_at = now + self.refresh_seconds
        # Once a minute for months: say things when they change, not on every read.
        changed = previous is None or len(previous.rows) != len(table.rows)
        log.log(
            logging.INFO if changed else logging.DEBUG,
            "Read %s: %d barcodes, %d problem(s)",
            source,
            len(table.rows),
            len(table.problems),
        )
        seen = set(previous.problems) if previous is not None else set()
        for p in table.problems:
            if p not in seen:
                log.warning("Sheet problem: %s", p)
        self._write_disk_cache()
        return table

    # -- the on-disk copy -----------------------------------------------------------------------
    def _cache_identity(self) -> dict[str, Any]:
        return {
            "spreadsheet_key": self.spreadsheet_key,
            "worksheet": self.worksheet,
            "barcode_column": self.barcode_column,
        }

    def _load_disk_cache(self) -> None:
        """Adopt the cache file once, if it belongs to this sheet. Caller holds ``_state_lock``."""
        if self._disk_loaded or self.cache_path is None:
            return
        self._disk_loaded = True
        try:
            data = json.loads(self.cache_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            log.warning("Ignoring the sheet cache %s: unreadable (%s).", self.cache_path, type(e).__name__)
            return
        if (
            not isinstance(data, dict)
            or data.get("version") != _CACHE_VERSION
            or any(data.get(k) != v for k, v in self._cache_identity().items())
        ):
            log.warning("Ignoring the sheet cache %s: it is for another sheet or format.", self.cache_path)
            return
        try:
            if data.get("values") is not None:
                self._good = parse_table(
                    data["values"],
                    source=data["source"],
                    barcode_column=self.barcode_column,
                    fetched_at=float(data["fetched_at"]),
                )
                self._good_values = data["values"]
                self._last_attempt_at = self._good.fetched_at
                self._next_read_at = self._good.fetched_at + self.refresh_seconds
            bad = data.get("malformed")
            if bad:
                self._malformed = SheetMalformed(str(bad["message"]))
                self._malformed_at = float(bad["fetched_at"])
                self._last_attempt_at = self._malformed_at
                self._next_read_at = self._malformed_at + self.refresh_seconds
        except (KeyError, TypeError, ValueError, SheetMalformed) as e:
            log.warning("Ignoring the sheet cache %s: %s", self.cache_path, e)
            self._good = self._good_values = self._malformed = None
            self._next_read_at = 0.0
            return
        if self._good is not None:
            log.info(
                "Loaded the cached copy of %s, read %s ago.",
                self._good.source,
                age_text(max(0.0, self._clock() - self._good.fetched_at)),
            )

    def _write_disk_cache(self) -> None:
        if self.cache_path is None:
            return
        with self._state_lock:
            good, values = self._good, self._good_values
            data: dict[str, Any] = {
                "version": _CACHE_VERSION,
                **self._cache_identity(),
                "source": good.source if good else None,
                "fetched_at": good.fetched_at if good else None,
                "values": values,
                "malformed": None
                if self._malformed is None
                else {"message": self._malformed.message, "fetched_at": self._malformed_at},
            }
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            # 0600: the copy holds the sheet's data, which may be more private than the agent's logs.
            write_atomic(self.cache_path, json.dumps(data, ensure_ascii=False).encode("utf-8"), mode=0o600)
        except OSError as e:
            log.warning(
                "Could not write the sheet cache %s (%s); the in-memory copy is still used.",
                self.cache_path,
                e.strerror or e,
            )
