"""The metadata sheet read from Google Sheets (gspread, service account), cached so a burst costs one read.

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

Pointing at another server (``api_url``)
    gspread builds Google's URLs from module constants at import time. Rather than patch gspread,
    the ``requests`` sessions it and google-auth use have a transport adapter mounted on Google's
    API hosts that rewrites the scheme+host of each request to ``api_url`` just before sending. Auth,
    gspread's own code and the wire format are untouched; tests run real gspread + google-auth
    against a local server. (The OAuth token endpoint comes from the service-account file's
    ``token_uri``, so it needs no rerouting.)

Secrets: the service-account JSON's contents and the access token never appear in logs or messages;
the only thing taken from the file for messages is ``client_email`` (to say whom to share with).
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google.auth.exceptions
import gspread
import requests
from google.auth.transport.requests import AuthorizedSession
from google.auth.transport.requests import Request as GoogleAuthRequest
from google.oauth2.service_account import Credentials
from gspread.utils import absolute_range_name
from requests.adapters import HTTPAdapter

from scanner_agent.core.errors import SheetMalformed, SheetUnavailable
from scanner_agent.core.humanize import age_text
from scanner_agent.core.sheet_table import SheetTable, parse_table

log = logging.getLogger(__name__)

SCOPES = (
    "https://www.googleapis.com/auth/spreadsheets.readonly",
    # gspread's Drive calls (listing, opening by title) need Drive; reading by key does not, but a
    # read-only Drive scope keeps the client usable for those without widening write access.
    "https://www.googleapis.com/auth/drive.readonly",
)
#: Hosts rerouted to ``api_url``: Sheets, Drive (gspread), and IAM credentials, where google-auth
#: looks up the service account's "regional access boundary" in a background thread.
_GOOGLE_API_HOSTS = (
    "https://sheets.googleapis.com",
    "https://www.googleapis.com",
    "https://iamcredentials.googleapis.com",
)
_CACHE_VERSION = 1
_RETRYABLE = frozenset({429, 500, 502, 503, 504})


class _RerouteAdapter(HTTPAdapter):
    """Sends requests addressed to one Google API host to ``target`` instead (same path and query)."""

    # google-auth deep-copies its auth transport for background lookups; keep our fields in the copy.
    __attrs__ = HTTPAdapter.__attrs__ + ["_prefix", "_target"]

    def __init__(self, prefix: str, target: str) -> None:
        super().__init__()
        self._prefix = prefix
        self._target = target.rstrip("/")

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        url = request.url or ""
        if url.startswith(self._prefix):
            request.url = self._target + url[len(self._prefix) :]
        return super().send(request, *args, **kwargs)


@dataclass
class _ReadFailed(Exception):
    """One failed attempt to read the sheet, already worded for a person."""

    message: str
    retryable: bool = False
    retry_after: float | None = None
    action: str | None = None

    def __str__(self) -> str:
        return self.message


def _short_key(key: str) -> str:
    return key if len(key) <= 12 else key[:8] + "…"


def _retry_after_seconds(response: requests.Response | None, now: float) -> float | None:
    value = response.headers.get("Retry-After") if response is not None else None
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


def _google_message(e: gspread.exceptions.APIError) -> str:
    msg = str(e.error.get("message", "")).strip() if isinstance(e.error, dict) else ""
    return msg[:300]


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

        self._state_lock = threading.Lock()  # guards the fields below; held only briefly
        self._read_lock = threading.Lock()  # one read of Google at a time
        self._client: gspread.Client | None = None
        self._client_email: str | None = None
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
        problems = self._check_credentials_file()
        with self._read_lock:
            with self._state_lock:
                self._load_disk_cache()
            try:
                values, source = self._fetch_once()
            except _ReadFailed as e:
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
                raise SheetUnavailable(f"The sheet ({self._where()}) has not been read yet.")
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
        except _ReadFailed as e:
            self._failed(e, started)
            return
        try:
            self._accept(values, source)
        except SheetMalformed:
            pass  # recorded by _accept; _serve raises it

    def _fetch_with_retries(self) -> tuple[list[list[str]], str]:
        delay = self._backoff
        for attempt in range(self._retries + 1):
            try:
                return self._fetch_once()
            except _ReadFailed as e:
                if not e.retryable or attempt == self._retries:
                    raise
                wait = e.retry_after if e.retry_after is not None else delay
                if wait > self._max_backoff:
                    raise  # honour a long Retry-After by not reading until then (see _failed)
                log.info(
                    "Reading %s failed (%s); retry %d/%d in %.1fs",
                    self._where(),
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

    def _failed(self, e: _ReadFailed, started: float) -> None:
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

    # -- talking to Google ----------------------------------------------------------------------
    def _where(self, title: str | None = None) -> str:
        ws = title or self.worksheet
        return f"spreadsheet {_short_key(self.spreadsheet_key)} " + (
            f"worksheet '{ws}'" if ws else "first worksheet"
        )

    def _gspread(self) -> gspread.Client:
        if self._client is None:
            info = self._load_service_account()
            creds = Credentials.from_service_account_info(info, scopes=list(SCOPES))
            # google-auth's own calls (token, access-boundary lookup) go through this session; it is
            # built here, as AuthorizedSession would build it, so it can be rerouted too.
            auth_session = requests.Session()
            auth_session.mount("https://", HTTPAdapter(max_retries=3))
            # A token fetch that hangs must time out like any other request.
            session = AuthorizedSession(
                creds, refresh_timeout=self.timeout, auth_request=GoogleAuthRequest(auth_session)
            )
            if self.api_url:
                for s in (session, auth_session):
                    for host in _GOOGLE_API_HOSTS:
                        s.mount(host + "/", _RerouteAdapter(host, self.api_url))
            client = gspread.Client(auth=creds, session=session)
            client.set_timeout(self.timeout)
            self._client = client
        return self._client

    def _load_service_account(self) -> dict[str, Any]:
        path = self.credentials_file
        try:
            with open(path, encoding="utf-8") as f:
                info = json.load(f)
        except OSError as e:
            raise _ReadFailed(
                f"Cannot read the Google credentials file {path}: {e.strerror or e}.",
                action="Point the config at the service account's JSON key file.",
            ) from None
        except ValueError:
            # Deliberately no detail: a JSON error can quote the file's (secret) text.
            raise _ReadFailed(
                f"The Google credentials file {path} is not valid JSON.",
                action="Download the service account's JSON key again.",
            ) from None
        required = ("type", "client_email", "private_key", "token_uri")
        missing = [k for k in required if not isinstance(info, dict) or not info.get(k)]
        if missing or info.get("type") != "service_account":
            what = f"lacks {', '.join(missing)}" if missing else f"is of type {info.get('type')!r}"
            raise _ReadFailed(
                f"The Google credentials file {path} {what}; a service-account JSON key is needed.",
                action="Download the service account's JSON key again.",
            )
        self._client_email = str(info["client_email"])
        return info

    def _fetch_once(self) -> tuple[list[list[str]], str]:
        """Raw values of the worksheet and the source description; ``_ReadFailed`` if it can't."""
        title = self.worksheet
        try:
            http = self._gspread().http_client
            if title is None:
                title = self._first_title(http.fetch_sheet_metadata(self.spreadsheet_key))
            response = http.values_get(
                self.spreadsheet_key,
                absolute_range_name(title),
                params={"valueRenderOption": "FORMATTED_VALUE", "majorDimension": "ROWS"},
            )
        except gspread.exceptions.APIError as e:
            if e.response.status_code == 400 and "parse range" in _google_message(e).lower():
                raise self._worksheet_missing(title) from None
            raise self._api_failure(e, title) from None
        except _ReadFailed:
            raise
        except requests.Timeout:
            raise _ReadFailed(
                f"Reading {self._where(title)} timed out after {self.timeout:g}s.", retryable=True
            ) from None
        except (requests.ConnectionError, google.auth.exceptions.TransportError) as e:
            raise _ReadFailed(
                f"Cannot reach Google to read {self._where(title)} ({type(e).__name__}).", retryable=True
            ) from None
        except google.auth.exceptions.RefreshError as e:
            raise self._refresh_failure(e) from None
        except ValueError:
            raise _ReadFailed(
                f"Google sent an unreadable answer for {self._where(title)}.", retryable=True
            ) from None
        except Exception as e:  # anything else still must not stop the daemon; name only its type
            log.debug("Unexpected %s reading %s", type(e).__name__, self._where(title))
            raise _ReadFailed(
                f"Unexpected {type(e).__name__} reading {self._where(title)}.", retryable=True
            ) from None
        rows = response.get("values", []) if isinstance(response, dict) else []
        values = [["" if c is None else str(c) for c in row] for row in rows]
        return values, self._where(title)

    def _first_title(self, metadata: Any) -> str:
        sheets = (metadata.get("sheets") or []) if isinstance(metadata, dict) else []
        if not sheets:
            raise _ReadFailed(f"Spreadsheet {_short_key(self.spreadsheet_key)} has no worksheets.")
        return str(sheets[0]["properties"]["title"])

    def _worksheet_missing(self, title: str) -> _ReadFailed:
        try:
            meta = self._gspread().http_client.fetch_sheet_metadata(self.spreadsheet_key)
            titles = [str(s["properties"]["title"]) for s in meta.get("sheets", [])]
        except Exception:  # listing the titles is a courtesy; the main error stands without it
            titles = []
        if title in titles:  # renamed back between our two calls: just try again
            return _ReadFailed(f"Worksheet '{title}' was briefly missing.", retryable=True)
        listed = ", ".join(repr(t) for t in titles) or "none that could be listed"
        return _ReadFailed(
            f"No worksheet '{title}' in spreadsheet {_short_key(self.spreadsheet_key)} (renamed or "
            f"deleted?); its worksheets are: {listed}. Rename it back or set the worksheet name in "
            "the config.",
            action="Rename the worksheet back, or set the worksheet name in the agent's config.",
        )

    def _api_failure(self, e: gspread.exceptions.APIError, title: str | None) -> _ReadFailed:
        code = e.response.status_code
        where = self._where(title)
        said = _google_message(e)
        if code == 404:
            return _ReadFailed(
                f"Spreadsheet {self.spreadsheet_key} was not found (404); check the "
                "spreadsheet key in the config.",
                action="Fix the spreadsheet key in the agent's config.",
            )
        if code == 403:
            who = self._client_email or "the service account"
            if "has not been used" in said or "disabled" in said.lower():
                return _ReadFailed(
                    f"Google refused to read {where}: the Sheets API is not enabled for "
                    f"the service account's project ({said}).",
                    action="Enable the Google Sheets API in the Google Cloud project.",
                )
            return _ReadFailed(
                f"Permission denied reading {where}: share the sheet with {who} (Viewer is enough).",
                action=f"Share the sheet with {who} as a Viewer.",
            )
        if code == 401:
            return _ReadFailed(
                f"Google rejected the service account's credentials reading {where} "
                "(401); check the service account key is still valid.",
                action="Check the service account key is still valid.",
            )
        retry_after = _retry_after_seconds(e.response, time.time())
        if code == 429:
            return _ReadFailed(
                f"Google's read quota is exhausted for {where} (429).",
                retryable=True,
                retry_after=retry_after,
            )
        if code in _RETRYABLE or code >= 500:
            return _ReadFailed(
                f"Google failed reading {where} ({code}: {said or 'no detail'}).",
                retryable=True,
                retry_after=retry_after,
            )
        return _ReadFailed(f"Google refused to read {where} ({code}: {said or 'no detail'}).")

    def _refresh_failure(self, e: google.auth.exceptions.RefreshError) -> _ReadFailed:
        # The token endpoint's words ("invalid_grant: Invalid JWT Signature.") hold no secret,
        # but keep only the first argument and cap it: the second is the raw response body.
        detail = str(e.args[0])[:200] if e.args else type(e).__name__
        who = self._client_email or "the service account"
        return _ReadFailed(
            f"Google did not issue a token for {who} ({detail}); check the service "
            "account key is valid and not deleted or disabled.",
            retryable=bool(getattr(e, "retryable", False)),
            action="Check the service account key is valid and not deleted or disabled.",
        )

    def _check_credentials_file(self) -> list[str]:
        path = self.credentials_file
        try:
            st = path.stat()
        except OSError as e:
            return [f"Google credentials file {path}: {e.strerror or e}."]
        problems = []
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            problems.append(
                f"Google credentials file {path} is readable by other users (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}`."
            )
        return problems

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
            _atomic_write_json(self.cache_path, data)
        except OSError as e:
            log.warning(
                "Could not write the sheet cache %s (%s); the in-memory copy is still used.",
                self.cache_path,
                e.strerror or e,
            )


def _atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    """Write-then-rename, so a crash leaves the old cache or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
