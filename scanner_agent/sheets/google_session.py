"""One gspread session with a Google Sheet: the service account, the reroute to ``api_url``, one read of
the worksheet's values, and Google's failures worded for a person.

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

import json
import logging
import stat
import time
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

from scanner_agent.core.retry_after import retry_after_from_headers

log = logging.getLogger(__name__)

SCOPES = (
    "https://www.googleapis.com/auth/spreadsheets.readonly",
    # gspread's Drive calls (listing, opening by title) need Drive; reading by key does not, but a
    # read-only Drive scope keeps the client usable for those without widening write access.
    "https://www.googleapis.com/auth/drive.readonly",
)
#: With ``[sheet] write_back = true`` only: the status cells are written, so Sheets needs write access.
WRITE_SCOPES = (
    "https://www.googleapis.com/auth/spreadsheets",
    "https://www.googleapis.com/auth/drive.readonly",
)
#: Hosts rerouted to ``api_url``: Sheets, Drive (gspread), and IAM credentials, where google-auth
#: looks up the service account's "regional access boundary" in a background thread.
_GOOGLE_API_HOSTS = (
    "https://sheets.googleapis.com",
    "https://www.googleapis.com",
    "https://iamcredentials.googleapis.com",
)
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
class ReadFailed(Exception):
    """One failed attempt to read the sheet, already worded for a person."""

    message: str
    retryable: bool = False
    retry_after: float | None = None
    action: str | None = None

    def __str__(self) -> str:
        return self.message


def _short_key(key: str) -> str:
    return key if len(key) <= 12 else key[:8] + "…"


def _google_message(e: gspread.exceptions.APIError) -> str:
    msg = str(e.error.get("message", "")).strip() if isinstance(e.error, dict) else ""
    return msg[:300]


class GoogleSession:
    """Reads one worksheet of one spreadsheet with a service account; every failure is a ``ReadFailed``.

    The gspread client (and its token) is built on first use and kept. Not thread-safe: the caller
    makes one read at a time.
    """

    def __init__(
        self,
        spreadsheet_key: str,
        *,
        credentials_file: Path,
        worksheet: str | None = None,
        api_url: str = "",
        timeout: float = 30,
        write: bool = False,
    ) -> None:
        self.spreadsheet_key = spreadsheet_key
        #: Write scope only for the write-back session; the reader's stays read-only.
        self.scopes = WRITE_SCOPES if write else SCOPES
        #: The worksheet's title at the last successful read (found from the metadata when not named).
        self.title: str | None = worksheet
        self.credentials_file = Path(credentials_file)
        self.worksheet = worksheet
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self._client: gspread.Client | None = None
        self._client_email: str | None = None

    def where(self, title: str | None = None) -> str:
        """The sheet in a person's words, for messages: "spreadsheet 1AbC… worksheet 'Samples'"."""
        ws = title or self.worksheet
        return f"spreadsheet {_short_key(self.spreadsheet_key)} " + (
            f"worksheet '{ws}'" if ws else "first worksheet"
        )

    def _gspread(self) -> gspread.Client:
        if self._client is None:
            info = self._load_service_account()
            # google-auth ships no annotations for these two calls.
            creds = Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                info, scopes=list(self.scopes)
            )
            # google-auth's own calls (token, access-boundary lookup) go through this session; it is
            # built here, as AuthorizedSession would build it, so it can be rerouted too.
            auth_session = requests.Session()
            auth_session.mount("https://", HTTPAdapter(max_retries=3))
            # A token fetch that hangs must time out like any other request.
            session = AuthorizedSession(  # type: ignore[no-untyped-call]
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
            raise ReadFailed(
                f"Cannot read the Google credentials file {path}: {e.strerror or e}.",
                action="Point the config at the service account's JSON key file.",
            ) from None
        except ValueError:
            # Deliberately no detail: a JSON error can quote the file's (secret) text.
            raise ReadFailed(
                f"The Google credentials file {path} is not valid JSON.",
                action="Download the service account's JSON key again.",
            ) from None
        required = ("type", "client_email", "private_key", "token_uri")
        missing = [k for k in required if not isinstance(info, dict) or not info.get(k)]
        if missing or info.get("type") != "service_account":
            what = f"lacks {', '.join(missing)}" if missing else f"is of type {info.get('type')!r}"
            raise ReadFailed(
                f"The Google credentials file {path} {what}; a service-account JSON key is needed.",
                action="Download the service account's JSON key again.",
            )
        self._client_email = str(info["client_email"])
        return dict(info)

    def fetch_once(self) -> tuple[list[list[str]], str]:
        """Raw values of the worksheet and the source description; ``ReadFailed`` if it can't."""
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
            parse_range = e.response.status_code == 400 and "parse range" in _google_message(e).lower()
            if parse_range and title is not None:
                raise self._worksheet_missing(title) from None
            raise self._api_failure(e, title) from None
        except ReadFailed:
            raise
        except requests.Timeout:
            raise ReadFailed(
                f"Reading {self.where(title)} timed out after {self.timeout:g}s.", retryable=True
            ) from None
        except (requests.ConnectionError, google.auth.exceptions.TransportError) as e:
            raise ReadFailed(
                f"Cannot reach Google to read {self.where(title)} ({type(e).__name__}).", retryable=True
            ) from None
        except google.auth.exceptions.RefreshError as e:
            raise self._refresh_failure(e) from None
        except ValueError:
            raise ReadFailed(
                f"Google sent an unreadable answer for {self.where(title)}.", retryable=True
            ) from None
        except Exception as e:  # anything else still must not stop the daemon; name only its type
            log.debug("Unexpected %s reading %s", type(e).__name__, self.where(title))
            raise ReadFailed(
                f"Unexpected {type(e).__name__} reading {self.where(title)}.", retryable=True
            ) from None
        rows = response.get("values", []) if isinstance(response, dict) else []
        values = [["" if c is None else str(c) for c in row] for row in rows]
        self.title = title
        return values, self.where(title)

    def write_cells(self, title: str, cells: list[tuple[str, str]]) -> None:
        """Set each (A1 cell, text) of worksheet ``title`` in ONE ``values.batchUpdate``; ``ReadFailed``
        (worded for writing) if it can't. RAW, never USER_ENTERED: a value from a scan is text, and a
        status starting with "=" must not become a formula in the lab's sheet."""
        body = {
            "valueInputOption": "RAW",
            "data": [{"range": absolute_range_name(title, a1), "values": [[v]]} for a1, v in cells],
        }
        try:
            self._gspread().http_client.values_batch_update(self.spreadsheet_key, body)
        except gspread.exceptions.APIError as e:
            said = _google_message(e)
            if e.response.status_code == 403 and not (
                "has not been used" in said or "disabled" in said.lower()
            ):
                who = self._client_email or "the service account"
                raise ReadFailed(
                    f"Permission denied writing {self.where(title)}: {who} can read it but not write "
                    "(share the sheet with it as an Editor for write_back).",
                    action=f"Share the sheet with {who} as an Editor, or set [sheet] write_back = false.",
                ) from None
            failure = self._api_failure(e, title)
            raise ReadFailed(
                failure.message.replace("reading", "writing").replace("read ", "write "),
                failure.retryable,
                failure.retry_after,
                failure.action,
            ) from None
        except ReadFailed:
            raise
        except google.auth.exceptions.RefreshError as e:
            raise self._refresh_failure(e) from None
        except (requests.RequestException, google.auth.exceptions.GoogleAuthError, ValueError) as e:
            raise ReadFailed(
                f"Cannot write {self.where(title)} ({type(e).__name__}).", retryable=True
            ) from None

    def _first_title(self, metadata: Any) -> str:
        sheets = (metadata.get("sheets") or []) if isinstance(metadata, dict) else []
        if not sheets:
            raise ReadFailed(f"Spreadsheet {_short_key(self.spreadsheet_key)} has no worksheets.")
        return str(sheets[0]["properties"]["title"])

    def _worksheet_missing(self, title: str) -> ReadFailed:
        try:
            meta = self._gspread().http_client.fetch_sheet_metadata(self.spreadsheet_key)
            titles = [str(s["properties"]["title"]) for s in meta.get("sheets", [])]
        except Exception:  # listing the titles is a courtesy; the main error stands without it
            titles = []
        if title in titles:  # renamed back between our two calls: just try again
            return ReadFailed(f"Worksheet '{title}' was briefly missing.", retryable=True)
        listed = ", ".join(repr(t) for t in titles) or "none that could be listed"
        return ReadFailed(
            f"No worksheet '{title}' in spreadsheet {_short_key(self.spreadsheet_key)} (renamed or "
            f"deleted?); its worksheets are: {listed}. Rename it back or set the worksheet name in "
            "the config.",
            action="Rename the worksheet back, or set the worksheet name in the agent's config.",
        )

    def _api_failure(self, e: gspread.exceptions.APIError, title: str | None) -> ReadFailed:
        code = e.response.status_code
        where = self.where(title)
        said = _google_message(e)
        if code == 404:
            return ReadFailed(
                f"Spreadsheet {self.spreadsheet_key} was not found (404); check the "
                "spreadsheet key in the config.",
                action="Fix the spreadsheet key in the agent's config.",
            )
        if code == 403:
            who = self._client_email or "the service account"
            if "has not been used" in said or "disabled" in said.lower():
                return ReadFailed(
                    f"Google refused to read {where}: the Sheets API is not enabled for "
                    f"the service account's project ({said}).",
                    action="Enable the Google Sheets API in the Google Cloud project.",
                )
            return ReadFailed(
                f"Permission denied reading {where}: share the sheet with {who} (Viewer is enough).",
                action=f"Share the sheet with {who} as a Viewer.",
            )
        if code == 401:
            return ReadFailed(
                f"Google rejected the service account's credentials reading {where} "
                "(401); check the service account key is still valid.",
                action="Check the service account key is still valid.",
            )
        retry_after = retry_after_from_headers(e.response.headers, time.time())
        if code == 429:
            return ReadFailed(
                f"Google's read quota is exhausted for {where} (429).",
                retryable=True,
                retry_after=retry_after,
            )
        if code in _RETRYABLE or code >= 500:
            return ReadFailed(
                f"Google failed reading {where} ({code}: {said or 'no detail'}).",
                retryable=True,
                retry_after=retry_after,
            )
        return ReadFailed(f"Google refused to read {where} ({code}: {said or 'no detail'}).")

    def _refresh_failure(self, e: google.auth.exceptions.RefreshError) -> ReadFailed:
        # The token endpoint's words ("invalid_grant: Invalid JWT Signature.") hold no secret,
        # but keep only the first argument and cap it: the second is the raw response body.
        detail = str(e.args[0])[:200] if e.args else type(e).__name__
        who = self._client_email or "the service account"
        return ReadFailed(
            f"Google did not issue a token for {who} ({detail}); check the service "
            "account key is valid and not deleted or disabled.",
            retryable=bool(getattr(e, "retryable", False)),
            action="Check the service account key is valid and not deleted or disabled.",
        )

    def check_credentials_file(self) -> list[str]:
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
