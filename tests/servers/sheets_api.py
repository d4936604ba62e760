"""A fake Google Sheets v4 API and OAuth token endpoint on 127.0.0.1, speaking Google's real JSON.

Real gspread + google-auth talk to it unchanged (the client is pointed here by ``api_url`` and by the
service-account file's ``token_uri``). It implements what ``scanner_agent.sheets.google`` calls:

* ``POST /token`` - the JWT-bearer grant: the assertion's RS256 signature is checked against the
  public key of the service account that ``write_service_account`` registered; returns a bearer token.
* ``GET /v4/spreadsheets/{id}`` - spreadsheet metadata (``sheets[].properties``).
* ``GET /v4/spreadsheets/{id}/values/{range}`` - cell values, trimmed the way Google trims them.
* ``POST /v4/spreadsheets/{id}/values:batchUpdate`` - writes cells (counted as "write"); every request
  body is kept in ``writes``. The token must carry the ``spreadsheets`` scope (a read-only token gets
  403 "insufficient authentication scopes") and the account must not be ``read_only`` (403
  PERMISSION_DENIED, as for a Viewer). ``USER_ENTERED`` is refused: write-back must write RAW.
* ``GET /v1/projects/-/serviceAccounts/{email}/allowedLocations`` - the IAM lookup google-auth makes
  in the background after fetching a token (counted as "rab").

Every API call needs ``Authorization: Bearer <issued token>``, and the service account must be
shared on the spreadsheet (all are, until ``unshare``). Tests can change the data, rename worksheets,
inject faults (any status, with or without ``Retry-After``, or a hang) and read per-endpoint counts.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"

_STATUS_WORDS = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "Request had invalid authentication credentials."),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: ("NOT_FOUND", "Requested entity was not found."),
    429: (
        "RESOURCE_EXHAUSTED",
        "Quota exceeded for quota metric 'Read requests' and limit "
        "'Read requests per minute per user' of service 'sheets.googleapis.com'.",
    ),
    500: ("INTERNAL", "Internal error encountered."),
    502: ("UNAVAILABLE", "Bad gateway."),
    503: ("UNAVAILABLE", "The service is currently unavailable."),
}


@dataclass
class Fault:
    """An injected misbehaviour for one endpoint ("token", "meta", "values", "rab" or "any")."""

    endpoint: str
    status: int | None = 500  # None: answer normally (after any hang)
    retry_after: str | None = None
    hang: float = 0.0  # seconds to stall before answering; cut short when the server stops
    times: int | None = 1  # None: until cleared
    message: str | None = None


@dataclass
class Worksheet:
    title: str
    sheet_id: int
    values: list[list[str]] = field(default_factory=list)


@dataclass
class Spreadsheet:
    key: str
    title: str
    worksheets: list[Worksheet]
    unshared: set[str] = field(default_factory=set)  # service-account e-mails refused with 403
    viewers: set[str] = field(default_factory=set)  # may read, refused with 403 on write


class FakeSheetsApi:
    """State and behaviour of the fake API; the HTTP layer is ``_Handler``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.spreadsheets: dict[str, Spreadsheet] = {}
        self.public_keys: dict[str, rsa.RSAPublicKey] = {}
        self.tokens: dict[str, str] = {}  # issued access token -> service-account e-mail
        self.token_scopes: dict[str, set[str]] = {}  # issued access token -> its granted scopes
        self.writes: list[dict[str, Any]] = []  # the body of every values:batchUpdate that was applied
        self.faults: list[Fault] = []
        self.counts: Counter[str] = Counter()
        self.log: list[tuple[str, str, int]] = []  # (method, path, status) of every request
        self.url = ""  # set once listening: http://127.0.0.1:<port>
        self._next_sheet_id = 0

    # -- set-up used by tests ------------------------------------------------------------------
    @property
    def token_uri(self) -> str:
        return self.url + "/token"

    def register_service_account(self, email: str, public_key: rsa.RSAPublicKey) -> None:
        with self._lock:
            self.public_keys[email] = public_key

    def add_spreadsheet(
        self, key: str, worksheets: dict[str, list[list[str]]], title: str = "Slide metadata"
    ) -> None:
        with self._lock:
            sheets = []
            for name, values in worksheets.items():
                sheets.append(Worksheet(name, self._next_sheet_id, [list(r) for r in values]))
                self._next_sheet_id += 1
            self.spreadsheets[key] = Spreadsheet(key, title, sheets)

    def set_values(self, key: str, worksheet: str, values: list[list[str]]) -> None:
        with self._lock:
            self._worksheet(key, worksheet).values = [list(r) for r in values]

    def rename_worksheet(self, key: str, old: str, new: str) -> None:
        with self._lock:
            self._worksheet(key, old).title = new

    def remove_spreadsheet(self, key: str) -> None:
        with self._lock:
            del self.spreadsheets[key]

    def values_of(self, key: str, worksheet: str) -> list[list[str]]:
        with self._lock:
            return [list(r) for r in self._worksheet(key, worksheet).values]

    def read_only(self, key: str, email: str) -> None:
        """Share ``key`` with ``email`` as a Viewer: reads work, writes get 403."""
        with self._lock:
            self.spreadsheets[key].viewers.add(email)

    def unshare(self, key: str, email: str) -> None:
        with self._lock:
            self.spreadsheets[key].unshared.add(email)

    def fail(
        self,
        endpoint: str,
        status: int,
        *,
        retry_after: str | int | None = None,
        times: int | None = 1,
        message: str | None = None,
    ) -> None:
        """Answer the next ``times`` calls to ``endpoint`` with ``status`` (Google's error JSON)."""
        with self._lock:
            self.faults.append(
                Fault(
                    endpoint,
                    status,
                    None if retry_after is None else str(retry_after),
                    times=times,
                    message=message,
                )
            )

    def hang(
        self, endpoint: str, seconds: float, *, times: int | None = 1, status: int | None = None
    ) -> None:
        """Stall the next ``times`` calls to ``endpoint`` for ``seconds`` before answering."""
        with self._lock:
            self.faults.append(Fault(endpoint, status, hang=seconds, times=times))

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()
            self.log.clear()

    # -- behaviour ------------------------------------------------------------------------------
    def _worksheet(self, key: str, title: str) -> Worksheet:
        for ws in self.spreadsheets[key].worksheets:
            if ws.title == title:
                return ws
        raise KeyError(title)

    def take_fault(self, endpoint: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.endpoint in (endpoint, "any"):
                    if f.times is not None:
                        f.times -= 1
                        if f.times <= 0:
                            self.faults.remove(f)
                    return f
        return None

    def stall(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def issue_token(self, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        if form.get("grant_type", [""])[0] != JWT_GRANT:
            return 400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type."}
        try:
            claims = self._verify_jwt(form.get("assertion", [""])[0])
        except ValueError as e:
            return 400, {"error": "invalid_grant", "error_description": str(e)}
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        with self._lock:
            self.tokens[token] = claims["iss"]
            self.token_scopes[token] = set(str(claims.get("scope", "")).split())
        return 200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}

    def _verify_jwt(self, assertion: str) -> dict[str, Any]:
        try:
            head_b64, body_b64, sig_b64 = assertion.split(".")
            header = json.loads(_b64decode(head_b64))
            claims = json.loads(_b64decode(body_b64))
            signature = _b64decode(sig_b64)
        except (ValueError, json.JSONDecodeError):
            raise ValueError("Invalid JWT: malformed assertion.") from None
        if header.get("alg") != "RS256":
            raise ValueError("Invalid JWT: alg must be RS256.")
        key = self.public_keys.get(claims.get("iss", ""))
        if key is None:
            raise ValueError("Invalid JWT: unknown service account.")
        try:
            key.verify(signature, f"{head_b64}.{body_b64}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise ValueError("Invalid JWT Signature.") from None
        if claims.get("aud") not in (GOOGLE_TOKEN_AUDIENCE, self.token_uri):
            raise ValueError(
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                "reasonable timeframe. Check your iat and exp values in the JWT claim."
            )
        now = time.time()
        if not (claims.get("iat", 0) - 300 <= now <= claims.get("exp", 0) + 300):
            raise ValueError("Invalid JWT: Token must be a short-lived token (60 minutes).")
        return claims

    def authorise(self, header: str | None, key: str) -> tuple[int, str] | None:
        """None if the bearer may read ``key``; else (status, message) as Google words it."""
        token = header[len("Bearer ") :] if header and header.startswith("Bearer ") else ""
        email = self.tokens.get(token)
        if email is None:
            return 401, (
                "Request had invalid authentication credentials. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential."
            )
        sheet = self.spreadsheets.get(key)
        if sheet is None:
            return 404, "Requested entity was not found."
        if email in sheet.unshared:
            return 403, "The caller does not have permission"
        return None

    def batch_update(self, header: str | None, key: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """``values:batchUpdate``: set each range's cells, as Google does with RAW input."""
        token = header[len("Bearer ") :] if header and header.startswith("Bearer ") else ""
        if "https://www.googleapis.com/auth/spreadsheets" not in self.token_scopes.get(token, set()):
            return 403, _error(403, "Request had insufficient authentication scopes.")
        if self.tokens[token] in self.spreadsheets[key].viewers:
            return 403, _error(403)
        if body.get("valueInputOption") not in ("RAW", "USER_ENTERED"):
            return 400, _error(400, "Invalid valueInputOption")
        if body["valueInputOption"] != "RAW":
            return 400, _error(400, "this fake refuses USER_ENTERED: write-back must write RAW")
        sheet = self.spreadsheets[key]
        titles = [ws.title for ws in sheet.worksheets]
        responses = []
        for item in body.get("data", []):
            parsed = _parse_range(item.get("range", ""), titles)
            if parsed is None:
                return 400, _error(400, f"Unable to parse range: {item.get('range')}")
            title, (c0, r0, _c1, _r1) = parsed
            grid = self._worksheet(key, title).values
            for dr, row in enumerate(item.get("values", [])):
                for dc, v in enumerate(row):
                    r, c = r0 + dr, c0 + dc
                    while len(grid) <= r:
                        grid.append([])
                    while len(grid[r]) <= c:
                        grid[r].append("")
                    grid[r][c] = str(v)
            responses.append({"spreadsheetId": key, "updatedRange": item["range"], "updatedCells": 1})
        self.writes.append(body)
        return 200, {"spreadsheetId": key, "totalUpdatedCells": len(responses), "responses": responses}

    def metadata(self, key: str) -> dict[str, Any]:
        sheet = self.spreadsheets[key]
        return {
            "spreadsheetId": key,
            "properties": {
                "title": sheet.title,
                "locale": "en_GB",
                "autoRecalc": "ON_CHANGE",
                "timeZone": "Europe/London",
            },
            "sheets": [
                {
                    "properties": {
                        "sheetId": ws.sheet_id,
                        "title": ws.title,
                        "index": i,
                        "sheetType": "GRID",
                        "gridProperties": {
                            "rowCount": max(1000, len(ws.values)),
                            "columnCount": max(26, max((len(r) for r in ws.values), default=0)),
                        },
                    }
                }
                for i, ws in enumerate(sheet.worksheets)
            ],
            "spreadsheetUrl": f"https://docs.google.com/spreadsheets/d/{key}/edit",
        }

    def values(self, key: str, a1: str, major: str) -> tuple[int, dict[str, Any]]:
        sheet = self.spreadsheets[key]
        parsed = _parse_range(a1, [ws.title for ws in sheet.worksheets])
        if parsed is None:
            return 400, _error(400, f"Unable to parse range: {a1}")
        title, (c0, r0, c1, r1) = parsed
        grid = self._worksheet(key, title).values
        rows = [[str(c) for c in row[c0:c1]] for row in grid[r0:r1]]
        rows = _trim(rows)
        if major == "COLUMNS":
            width = max((len(r) for r in rows), default=0)
            rows = _trim([[r[i] if i < len(r) else "" for r in rows] for i in range(width)])
        last_col = _col_letters(c0 + max((len(r) for r in rows), default=1) - 1)
        body: dict[str, Any] = {
            "range": f"'{title}'!{_col_letters(c0)}{r0 + 1}:{last_col}{r0 + max(len(rows), 1)}",
            "majorDimension": major,
        }
        if rows:
            body["values"] = rows  # Google omits "values" entirely for an empty range
        return 200, body


def _error(status: int, message: str | None = None) -> dict[str, Any]:
    name, default = _STATUS_WORDS.get(status, ("UNKNOWN", "Unknown error."))
    return {"error": {"code": status, "message": message or default, "status": name}}


def _b64decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _trim(rows: list[list[str]]) -> list[list[str]]:
    out = []
    for r in rows:
        r = list(r)
        while r and r[-1] == "":
            r.pop()
        out.append(r)
    while out and not out[-1]:
        out.pop()
    return out


def _col_letters(index: int) -> str:
    s, n = "", index + 1
    while n:
        n, rem = divmod(n - 1, 26)
        s = chr(65 + rem) + s
    return s


def _col_index(letters: str) -> int:
    n = 0
    for ch in letters.upper():
        n = n * 26 + ord(ch) - 64
    return n - 1


_CELL = re.compile(r"^([A-Za-z]*)(\d*)$")
_BIG = 10**7


def _parse_range(a1: str, titles: list[str]) -> tuple[str, tuple[int, int, int, int]] | None:
    """(sheet title, (col0, row0, col1, row1) half-open) for A1 notation, or None if unparseable."""
    if a1.startswith("'"):
        m = re.match(r"^'((?:[^']|'')*)'(?:!(.*))?$", a1)
        if not m:
            return None
        title, cells = m.group(1).replace("''", "'"), m.group(2)
    elif "!" in a1:
        title, cells = a1.split("!", 1)
    elif a1 in titles:
        title, cells = a1, None
    else:
        title, cells = (titles[0] if titles else ""), a1  # bare cells: the first sheet
    if title not in titles:
        return None
    if not cells:
        return title, (0, 0, _BIG, _BIG)
    parts = cells.split(":")
    if len(parts) > 2:
        return None
    ends = []
    for p in parts:
        m = _CELL.match(p)
        if not m or not (m.group(1) or m.group(2)):
            return None
        ends.append(m.groups())
    (ca, ra), (cb, rb) = ends[0], ends[-1]
    c0 = _col_index(ca) if ca else 0
    r0 = int(ra) - 1 if ra else 0
    c1 = _col_index(cb) + 1 if cb else _BIG
    r1 = int(rb) if rb else _BIG
    return title, (c0, r0, c1, r1)


class _Handler(BaseHTTPRequestHandler):
    api: FakeSheetsApi  # set on the subclass made per server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.api.log.append((self.command, self.path, status))
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timed out); nothing to tell it

    def _fault(self, endpoint: str) -> bool:
        """Apply an injected fault; True if it already answered the request."""
        with self.api._lock:
            self.api.counts[endpoint] += 1
        fault = self.api.take_fault(endpoint)
        if fault is None:
            return False
        if fault.hang:
            self.api.stall(fault.hang)
        if fault.status is None:
            return False
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
        if endpoint == "token":
            self._send(
                fault.status, {"error": "internal_failure", "error_description": fault.message or ""}, headers
            )
        else:
            self._send(fault.status, _error(fault.status, fault.message), headers)
        return True

    def _allowed_locations(self) -> None:
        """google-auth's background "regional access boundary" lookup (IAM credentials API)."""
        if self._fault("rab"):
            return
        header = self.headers.get("Authorization") or ""
        if header[len("Bearer ") :] not in self.api.tokens:
            self._send(401, _error(401))
            return
        self._send(200, {"locations": ["europe-west2"], "encodedLocations": "0x4"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode()
        segments = urlsplit(self.path).path.split("/")
        if (
            len(segments) == 5
            and segments[1:3] == ["v4", "spreadsheets"]
            and segments[4] == "values:batchUpdate"
        ):
            self._write(unquote(segments[3]), raw)
            return
        if urlsplit(self.path).path != "/token":
            self.api.counts["other"] += 1
            self._send(404, _error(404))
            return
        if self._fault("token"):
            return
        status, body = self.api.issue_token(parse_qs(raw))
        self._send(status, body)

    def _write(self, key: str, raw: str) -> None:
        if self._fault("write"):
            return
        denied = self.api.authorise(self.headers.get("Authorization"), key)
        if denied:
            self._send(denied[0], _error(*denied))
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._send(400, _error(400, "Invalid JSON payload received."))
            return
        with self.api._lock:
            status, answer = self.api.batch_update(self.headers.get("Authorization"), key, body)
        self._send(status, answer)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        segments = parts.path.split("/")  # split before unquoting: a range may hold an encoded "/"
        query = parse_qs(parts.query)
        if parts.path.startswith("/v1/projects/-/serviceAccounts/") and parts.path.endswith(
            "/allowedLocations"
        ):
            self._allowed_locations()
            return
        if len(segments) == 4 and segments[1:3] == ["v4", "spreadsheets"]:
            endpoint, key, a1 = "meta", unquote(segments[3]), None
        elif len(segments) == 6 and segments[1:3] == ["v4", "spreadsheets"] and segments[4] == "values":
            endpoint, key, a1 = "values", unquote(segments[3]), unquote(segments[5])
        else:
            self.api.counts["other"] += 1
            self._send(404, _error(404, "Method not found."))
            return
        if self._fault(endpoint):
            return
        denied = self.api.authorise(self.headers.get("Authorization"), key)
        if denied:
            self._send(denied[0], _error(*denied))
            return
        with self.api._lock:  # a consistent snapshot while tests edit the sheet
            if endpoint == "meta":
                status, body = 200, self.api.metadata(key)
            else:
                status, body = self.api.values(key, a1 or "", query.get("majorDimension", ["ROWS"])[0])
        self._send(status, body)


@contextlib.contextmanager
def sheets_api_server() -> Iterator[FakeSheetsApi]:
    """Run a fake Sheets API on 127.0.0.1 for the duration of the ``with`` block."""
    api = FakeSheetsApi()
    handler = type("Handler", (_Handler,), {"api": api})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-sheets-api", daemon=True
    )
    thread.start()
    try:
        yield api
    finally:
        api._stopping.set()  # release any hanging handler
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@functools.lru_cache(maxsize=1)
def _throwaway_key() -> rsa.RSAPrivateKey:
    # One key per test process: generating RSA keys is the slow part, and the key is never real.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def write_service_account(
    directory: Path,
    api: FakeSheetsApi,
    *,
    email: str = "scanner-agent@test-project.iam.gserviceaccount.com",
    name: str = "service-account.json",
    mode: int = 0o600,
) -> Path:
    """Write a service-account JSON whose ``token_uri`` is the fake server, and register its key there."""
    key = _throwaway_key()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": email,
        "client_id": str(secrets.randbelow(10**20)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": api.token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/" + email,
        "universe_domain": "googleapis.com",
    }
    api.register_service_account(email, key.public_key())
    path = Path(directory) / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f, indent=2)
    os.chmod(path, mode)  # O_CREAT's mode is filtered by the umask
    return path
