"""Tell a person when a scan needs them: one ``Alert`` sent to Slack and e-mail, deduplicated, never lost.

An ``Alert`` says what happened (naming the file, row or column), what to do, and links to the
Prefect run. The ``Alerter`` sends it to every channel; a channel that fails does not stop the
others or the transfer that raised it: the alert is kept in the outbox and ``retry_pending()``
delivers it later. The same alert is not repeated on a channel within ``repeat_after_seconds``
(the record lives in the outbox, so a restart does not re-spam); a recovery is announced once.

Secrets (the Slack token, the SMTP password) never reach a log line, an exception or a ``repr``.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import re
import smtplib
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.error import URLError

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)

from scanner_agent.core import errors

if TYPE_CHECKING:
    from scanner_agent.journal import AlertOutbox

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# What an alert is


@dataclass(frozen=True)
class AlertKind:
    """The fixed words for one kind of alert.

    ``title`` may hold ``{subject}`` (the barcode, else the file name); without a subject the
    placeholder and the word before it ("for", "in") are dropped.
    """

    title: str
    action: str


_RECOVERED_ACTION = "Nothing to do; this resolves an earlier alert."

KINDS: dict[str, AlertKind] = {
    "unknown_barcode": AlertKind("Unknown barcode {subject}", errors.UnknownBarcode.default_action),
    "incomplete_row": AlertKind("Incomplete sheet row for {subject}", errors.IncompleteRow.default_action),
    "sheet_malformed": AlertKind(
        "Metadata sheet needs fixing for {subject}", errors.SheetMalformed.default_action
    ),
    "held": AlertKind("Scan held for {subject}", errors.HeldScan.default_action),
    "held_too_long": AlertKind(
        "Scan held too long for {subject}",
        "The scan has waited longer than expected for a complete sheet row. Fill in (or correct) "
        "the barcode's row in the metadata sheet; the scan moves on its own once the row is complete.",
    ),
    "no_barcode": AlertKind("No barcode found in {subject}", errors.NoBarcode.default_action),
    "corrupt_slide": AlertKind("Unreadable slide {subject}", errors.CorruptSlide.default_action),
    "destination_collision": AlertKind(
        "Name already taken in storage for {subject}", errors.DestinationCollision.default_action
    ),
    "storage_unavailable": AlertKind(
        "Storage unavailable for {subject}", errors.StorageUnavailable.default_action
    ),
    "storage_full": AlertKind(
        "Storage full for {subject}",
        "Free space on the storage share (or extend it); scans stay on the scanner and are retried.",
    ),
    "source_changed": AlertKind("Scan changed while copying {subject}", errors.SourceChanged.default_action),
    "sheet_unreachable": AlertKind(
        "Metadata sheet unreachable for {subject}", errors.SheetUnavailable.default_action
    ),
    "watcher_unhealthy": AlertKind(
        "Scanner folder watch unhealthy",
        "Check that the scanner's output folder is mounted and readable, then run `scanner-agent check`; "
        "new scans are picked up by the next full folder scan once it is reachable again.",
    ),
    "missing_rescan": AlertKind(
        "Rescan overdue for {subject}",
        "Rescan the slide, or clear 'Rescan Requested' in the metadata sheet if no rescan is needed.",
    ),
    "qc_failed": AlertKind(
        "Slide QC failed for {subject}",
        "Look at the thumbnail; if the slide is out of focus or shows no tissue, rescan it "
        "(mark 'Rescan Requested' in the metadata sheet).",
    ),
    "rescan_requested": AlertKind(
        "Rescan requested for {subject}",
        "Rescan the slide; the new scan replaces the stored one and the old one is kept under superseded/.",
    ),
    "rescan_received": AlertKind(
        "Rescan received for {subject}",
        "Nothing to do; the rescan was stored and the previous scan was kept under superseded/.",
    ),
    "recovered": AlertKind("Recovered: {subject}", _RECOVERED_ACTION),
    "scan_error": AlertKind("Scan problem with {subject}", errors.ScanError.default_action),
}

_SUBJECT_GONE = re.compile(r":?\s*(?:\b(?:for|in|with)\s+)?\{subject\}")


def kind_info(kind: str) -> AlertKind:
    """The words for ``kind``; an unknown kind reads as a generic scan problem rather than failing."""
    known = KINDS.get(kind)
    if known is not None:
        return known
    return AlertKind(kind.replace("_", " ").capitalize() + " for {subject}", KINDS["scan_error"].action)


@dataclass
class Alert:
    """One thing a person should know about. ``key()`` identifies it for deduplication."""

    kind: str
    scanner: str
    message: str
    action: str | None = None
    barcode: str | None = None
    file: str | None = None
    run_url: str | None = None
    thumbnail_png: bytes | None = None
    recovery: bool = False
    details: dict[str, str] = field(default_factory=dict)
    #: Which scan this is about (the journal's scan id), when it is about one: a rescan under the
    #: same file name is a new scan, and its problems (or its arrival) are news again.
    scan: str | None = None

    def __post_init__(self) -> None:
        if self.kind == "recovered":
            self.recovery = True
        if self.action is None:
            self.action = _RECOVERED_ACTION if self.recovery else kind_info(self.kind).action

    @classmethod
    def from_error(
        cls,
        err: errors.ScanError,
        *,
        scanner: str,
        file: str | None = None,
        run_url: str | None = None,
        thumbnail_png: bytes | None = None,
        details: dict[str, str] | None = None,
    ) -> Alert:
        """The alert for a ``ScanError``: its kind, message, action, barcode and path."""
        return cls(
            kind=err.kind,
            scanner=scanner,
            message=err.message,
            action=err.action,
            barcode=err.barcode,
            file=file or err.path,
            run_url=run_url,
            thumbnail_png=thumbnail_png,
            details=dict(details or {}),
        )

    def problem_key(self) -> str:
        """The key of the problem this alert is (or, for a recovery, resolves)."""
        return "|".join(
            [self.kind, self.scanner, self.barcode or "", self.file or ""]
            + ([self.scan] if self.scan else [])
        )

    def key(self) -> str:
        """Dedupe key: kind + scanner + barcode + file (+ scan); a recovery has its own key."""
        base = self.problem_key()
        return f"recovered|{base}" if self.recovery else base

    @property
    def subject(self) -> str | None:
        """What the alert is about in one word: the barcode, else the file's name."""
        if self.barcode:
            return self.barcode
        if self.file:
            return PurePath(self.file).name or self.file
        return None

    @property
    def title(self) -> str:
        """A one-line headline, e.g. "Unknown barcode 545891 on Cardinal"."""
        template = kind_info(self.kind).title
        if self.subject:
            head = template.replace("{subject}", self.subject)
        else:
            head = _SUBJECT_GONE.sub("", template).strip()
        if self.recovery and self.kind != "recovered":
            head = f"Resolved: {head}"
        return f"{head} on {self.scanner}"

    def facts(self) -> list[tuple[str, str]]:
        """Label/value pairs shown as fields: scanner, barcode, file, then ``details``."""
        out = [("Scanner", self.scanner)]
        if self.barcode:
            out.append(("Barcode", self.barcode))
        if self.file:
            out.append(("File", self.file))
        out.extend((str(k), str(v)) for k, v in self.details.items())
        return out

    def to_json(self) -> str:
        data = asdict(self)
        data["thumbnail_png"] = (
            base64.b64encode(self.thumbnail_png).decode("ascii") if self.thumbnail_png is not None else None
        )
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Alert:
        data: dict[str, Any] = json.loads(text)
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}  # tolerate rows written by a newer version
        if data.get("thumbnail_png") is not None:
            data["thumbnail_png"] = base64.b64decode(data["thumbnail_png"])
        return cls(**data)


# --------------------------------------------------------------------------------------------
# Channels


class AlertDeliveryError(Exception):
    """A channel could not deliver an alert. The message says why and never holds a secret."""


@runtime_checkable
class Channel(Protocol):
    name: str

    def send(self, alert: Alert) -> None:
        """Deliver ``alert``; raise ``AlertDeliveryError`` if it did not arrive."""

    def check(self) -> list[str]:
        """Verify the channel without sending anything; return the problems found (empty = fine)."""


def _scrub(text: str, secrets: list[str | None]) -> str:
    """Blank out any secret that a library might have echoed into an error text."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _is_web_url(url: str | None) -> bool:
    return bool(url) and str(url).lower().startswith(("http://", "https://"))


# Slack Block Kit limits (https://docs.slack.dev/reference/block-kit/blocks): exceeding one
# makes Slack reject the whole message with invalid_blocks, so text is clipped to them.
_HEADER_MAX = 150
_SECTION_MAX = 3000
_FIELD_MAX = 2000
_FIELDS_MAX = 10
_BUTTON_URL_MAX = 3000


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mrkdwn(text: str) -> str:
    """Escape the three characters Slack treats as markup in mrkdwn text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_text(alert: Alert) -> str:
    """The plain fallback shown in notifications and to screen readers: all the essentials."""
    parts = [f"{alert.title}: {alert.message}", f"What to do: {alert.action}"]
    if alert.run_url:
        parts.append(f"Prefect run: {alert.run_url}")
    return _mrkdwn("\n".join(parts))


def slack_blocks(alert: Alert) -> list[dict[str, Any]]:
    """Block Kit layout: headline, what happened, facts, what to do, and a button to the run."""
    icon = "✅ " if alert.recovery else "⚠️ "
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _clip(icon + alert.title, _HEADER_MAX), "emoji": True},
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": _clip(_mrkdwn(alert.message), _SECTION_MAX)}},
    ]
    facts = [
        {"type": "mrkdwn", "text": _clip(f"*{_mrkdwn(label)}*\n{_mrkdwn(value)}", _FIELD_MAX)}
        for label, value in alert.facts()
    ]
    blocks.append({"type": "section", "fields": facts[:_FIELDS_MAX]})
    if len(facts) > _FIELDS_MAX:  # Slack allows ten fields; the rest go in a plain section
        rest = "\n".join(f["text"].replace("\n", ": ", 1) for f in facts[_FIELDS_MAX:])
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _clip(rest, _SECTION_MAX)}})
    blocks.append(
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": _clip(f"*What to do*\n{_mrkdwn(alert.action or '')}", _SECTION_MAX),
            },
        }
    )
    if _is_web_url(alert.run_url) and len(alert.run_url or "") <= _BUTTON_URL_MAX:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "action_id": "open_prefect_run",
                        "url": alert.run_url,
                        "text": {"type": "plain_text", "text": "Open run in Prefect"},
                    }
                ],
            }
        )
    elif alert.run_url:  # not a link Slack accepts on a button; still show it
        blocks.append(
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": _clip(f"Prefect run: {_mrkdwn(alert.run_url)}", _SECTION_MAX)}
                ],
            }
        )
    return blocks


# Slack error codes that a person fixes in configuration, with the hint that says how.
_SLACK_HINTS = {
    "invalid_auth": "the Slack token is not valid; check the bot token in the configuration",
    "not_authed": "no Slack token was sent; set the bot token in the configuration",
    "token_revoked": "the Slack token was revoked; create a new bot token",
    "token_expired": "the Slack token expired; create a new bot token",
    "account_inactive": "the Slack bot account is deactivated",
    "channel_not_found": "the Slack channel was not found; check its name and that the bot can see it",
    "not_in_channel": "the bot is not a member of the Slack channel; invite it (/invite @bot)",
    "is_archived": "the Slack channel is archived",
    "missing_scope": "the Slack app lacks a permission (needs chat:write and files:write)",
    "ratelimited": "Slack kept rate-limiting the agent",
}


class _ShortWaitRateLimitHandler(RateLimitErrorRetryHandler):
    """Honour a 429's Retry-After only when the wait is short.

    A long wait would stall the scan that raised the alert; the alert is queued instead and
    ``Alerter.retry_pending`` sends it later.
    """

    def __init__(self, max_retry_count: int, max_wait: float) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.max_wait = max_wait

    def _can_retry(self, *, state: Any, request: Any, response: Any = None, error: Any = None) -> bool:
        if not super()._can_retry(state=state, request=request, response=response, error=error):
            return False
        return _retry_after_seconds(response.headers) <= self.max_wait


def _retry_after_seconds(headers: Any) -> float:
    for name, value in dict(headers or {}).items():
        if str(name).lower() == "retry-after":
            first = value[0] if isinstance(value, (list, tuple)) else value
            try:
                return float(first)
            except (TypeError, ValueError):
                return 1.0
    return 1.0


class SlackChannel:
    """Posts alerts to one Slack channel with the real ``slack_sdk.WebClient``."""

    def __init__(
        self,
        token: str,
        channel: str,
        *,
        api_url: str = "",
        timeout: float = 10,
        max_rate_limit_retries: int = 2,
        max_rate_limit_wait: float = 30,
        name: str = "slack",
    ) -> None:
        self.name = name
        self.channel = channel
        self.api_url = api_url or WebClient.BASE_URL
        self._token = token
        handlers = [
            _ShortWaitRateLimitHandler(max_rate_limit_retries, max_rate_limit_wait),
            ConnectionErrorRetryHandler(max_retry_count=1),
            ServerErrorRetryHandler(max_retry_count=1),
        ]
        self._client = WebClient(
            token=token, base_url=self.api_url, timeout=int(max(1, timeout)), retry_handlers=handlers
        )

    def __repr__(self) -> str:
        return f"SlackChannel(name={self.name!r}, channel={self.channel!r}, api_url={self.api_url!r})"

    def send(self, alert: Alert) -> None:
        posted = self._call(
            "chat.postMessage",
            lambda: self._client.chat_postMessage(
                channel=self.channel,
                text=slack_text(alert),
                blocks=slack_blocks(alert),
                unfurl_links=False,
                unfurl_media=False,
            ),
        )
        if alert.thumbnail_png:
            self._upload_thumbnail(alert, posted)

    def _upload_thumbnail(self, alert: Alert, posted: Any) -> None:
        """Attach the thumbnail in the alert's thread.

        ``files_upload_v2`` needs a channel ID, not a name like ``#slide-scanning``;
        chat.postMessage answers with the ID, so that is used (no channels:read scope needed).
        The message itself has arrived by now, so a failed upload is logged, not re-sent: a
        retry would post the whole alert twice.
        """
        channel_id = posted.get("channel") or self.channel
        name = f"{alert.subject or 'slide'}-thumbnail.png"
        try:
            self._call(
                "files.upload",
                lambda: self._client.files_upload_v2(
                    channel=channel_id,
                    thread_ts=posted.get("ts"),
                    file=alert.thumbnail_png,
                    filename=name,
                    title=f"Thumbnail: {alert.subject or alert.scanner}",
                    alt_txt=f"Slide thumbnail for {alert.subject or 'the scan'}",
                ),
            )
        except AlertDeliveryError as exc:
            log.warning(
                "Alert %s: message posted to Slack but the thumbnail upload failed: %s", alert.key(), exc
            )

    def check(self) -> list[str]:
        try:
            reply = self._call("auth.test", self._client.auth_test)
        except AlertDeliveryError as exc:
            return [str(exc)]
        log.debug("Slack auth.test ok for team %s as %s", reply.get("team"), reply.get("user"))
        return []

    def _call(self, method: str, fn: Callable[[], Any]) -> Any:
        """Run one Web API call; turn any failure into an AlertDeliveryError with a usable reason."""
        try:
            return fn()
        except SlackApiError as exc:
            status = exc.response.status_code
            if status == 429:
                code = "ratelimited"
            elif status != 200:  # not an API answer at all (proxy page, Slack outage)
                code = f"HTTP {status}"
            else:
                code = str(exc.response.get("error") or "unknown error")
            hint = _SLACK_HINTS.get(code)
            reason = f"{code} ({hint})" if hint else code
            where = "" if method == "auth.test" else f" to {self.channel}"
            raise self._error(f"Slack {method}{where} failed: {reason}") from None
        except (SlackClientError, URLError, OSError) as exc:
            why = getattr(exc, "reason", None) or exc
            raise self._error(f"Slack {method} failed: could not reach {self.api_url}: {why}") from None

    def _error(self, message: str) -> AlertDeliveryError:
        return AlertDeliveryError(_scrub(message, [self._token]))


def email_message(alert: Alert, *, sender: str, recipients: list[str]) -> EmailMessage:
    """The alert as an e-mail: plain text, an HTML alternative, and the thumbnail as a PNG attachment."""
    msg = EmailMessage()
    msg["Subject"] = alert.title
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    msg.set_content(_email_plain(alert))
    msg.add_alternative(_email_html(alert), subtype="html")
    if alert.thumbnail_png:
        msg.add_attachment(
            alert.thumbnail_png,
            maintype="image",
            subtype="png",
            filename=f"{alert.subject or 'slide'}-thumbnail.png",
        )
    return msg


def _email_plain(alert: Alert) -> str:
    lines = [alert.title, "", alert.message, "", f"What to do: {alert.action}", ""]
    lines += [f"{label}: {value}" for label, value in alert.facts()]
    if alert.run_url:
        lines += ["", f"Prefect run: {alert.run_url}"]
    return "\n".join(lines) + "\n"


def _email_html(alert: Alert) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><th align='left'>{e(label)}</th><td>{e(value)}</td></tr>" for label, value in alert.facts()
    )
    link = ""
    if alert.run_url:
        href = e(alert.run_url, quote=True) if _is_web_url(alert.run_url) else ""
        link = (
            f'<p><a href="{href}">Open run in Prefect</a></p>'
            if href
            else f"<p>Prefect run: {e(alert.run_url)}</p>"
        )
    return (
        f"<html><body><h2>{e(alert.title)}</h2><p>{e(alert.message)}</p>"
        f"<p><b>What to do:</b> {e(alert.action or '')}</p><table>{rows}</table>{link}</body></html>"
    )


class EmailChannel:
    """Sends alerts by SMTP (``smtplib``), with STARTTLS and login when configured."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        sender: str,
        recipients: list[str],
        starttls: bool = True,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10,
        ssl_context: ssl.SSLContext | None = None,
        name: str = "email",
    ) -> None:
        if not recipients:
            raise ValueError("EmailChannel needs at least one recipient")
        self.name = name
        self.host = host
        self.port = port
        self.sender = sender
        self.recipients = list(recipients)
        self.starttls = starttls
        self.username = username
        self._password = password
        self.timeout = timeout
        self._ssl_context = ssl_context

    def __repr__(self) -> str:
        return (
            f"EmailChannel(name={self.name!r}, host={self.host!r}, port={self.port!r}, "
            f"sender={self.sender!r}, recipients={self.recipients!r}, username={self.username!r})"
        )

    def send(self, alert: Alert) -> None:
        msg = email_message(alert, sender=self.sender, recipients=self.recipients)
        refused: dict[str, Any] = {}
        self._session(
            lambda smtp: refused.update(
                smtp.send_message(msg, from_addr=self.sender, to_addrs=self.recipients)
            )
        )
        if refused:  # the others got it; say who did not rather than re-send to everyone
            log.warning("Alert %s: SMTP server refused some recipients: %s", alert.key(), ", ".join(refused))

    def check(self) -> list[str]:
        try:
            self._session(lambda smtp: None)  # connect, STARTTLS and login are the check
        except AlertDeliveryError as exc:
            return [str(exc)]
        return []

    def _session(self, work: Callable[[smtplib.SMTP], Any]) -> None:
        """Connect, STARTTLS, log in, do ``work``, QUIT; any failure becomes an AlertDeliveryError."""
        where = f"SMTP server {self.host}:{self.port}"
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                smtp.ehlo()
                if self.starttls:
                    smtp.starttls(context=self._ssl_context or ssl.create_default_context())
                    smtp.ehlo()
                if self.username:
                    smtp.login(self.username, self._password or "")
                work(smtp)
        except smtplib.SMTPAuthenticationError as exc:
            raise self._error(
                f"{where} rejected the login for user {self.username!r} "
                f"({exc.smtp_code} {_smtp_text(exc.smtp_error)}); check the SMTP username "
                "and password"
            ) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise self._error(
                f"{where} does not offer what the agent needs ({exc}); check the port and "
                "the starttls/username settings"
            ) from None
        except smtplib.SMTPRecipientsRefused as exc:
            refused = ", ".join(
                f"{rcpt} ({code} {_smtp_text(text)})" for rcpt, (code, text) in exc.recipients.items()
            )
            raise self._error(f"{where} refused the recipients: {refused}") from None
        except smtplib.SMTPResponseException as exc:
            raise self._error(f"{where} answered {exc.smtp_code} {_smtp_text(exc.smtp_error)}") from None
        except ssl.SSLError as exc:
            raise self._error(
                f"TLS with {where} failed: {exc.reason or exc}; check the server's "
                "certificate and the CA the agent trusts"
            ) from None
        except TimeoutError:
            raise self._error(f"{where} did not answer within {self.timeout:g} s") from None
        except (smtplib.SMTPException, OSError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise self._error(f"could not reach {where}: {why}") from None

    def _error(self, message: str) -> AlertDeliveryError:
        return AlertDeliveryError(_scrub(message, [self._password]))


def _smtp_text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


# --------------------------------------------------------------------------------------------
# The alerter


class Alerter:
    """Sends each alert to every channel, with dedupe and an outbox for the ones that failed.

    ``send`` never raises. A channel that has failed and is waiting for its retry time is not
    tried again for every new alert (each try could cost a full timeout during a burst); new
    alerts for it go straight to the outbox and ``retry_pending`` delivers them in order.
    """

    def __init__(
        self,
        channels: list[Channel],
        outbox: AlertOutbox | None,
        *,
        repeat_after_seconds: float = 3600,
        clock: Callable[[], float] = time.time,
        retry_base_seconds: float = 60,
        retry_max_seconds: float = 1800,
    ) -> None:
        names = [c.name for c in channels]
        if len(set(names)) != len(names):
            raise ValueError(f"alert channel names must be unique, got {names}")
        self.channels = list(channels)
        self.outbox = outbox
        self.repeat_after_seconds = repeat_after_seconds
        self.clock = clock
        self.retry_base_seconds = retry_base_seconds
        self.retry_max_seconds = retry_max_seconds
        self._lock = threading.Lock()
        self._retry_lock = threading.Lock()
        self._inflight: set[tuple[str, str]] = set()
        self._sent_here: dict[tuple[str, str], float] = {}  # used only without an outbox

    # -- public

    def send(self, alert: Alert) -> dict[str, str]:
        """Send to every channel: name -> "sent" | "suppressed" | "queued" ("failed" without an outbox)."""
        result: dict[str, str] = {}
        for channel in self.channels:
            try:
                result[channel.name] = self._send_one(channel, alert)
            except Exception:  # an alert must never break the transfer that raised it
                log.exception("Alert %s on %s: unexpected failure", alert.key(), channel.name)
                result[channel.name] = "failed"
        return result

    def retry_pending(self) -> int:
        """Resend queued alerts that are due; returns how many were delivered."""
        if self.outbox is None:
            return 0
        if not self._retry_lock.acquire(blocking=False):
            return 0  # a retry round is already running; two would send the same alert twice
        try:
            return self._retry_due()
        except Exception:
            log.exception("Retrying queued alerts failed")
            return 0
        finally:
            self._retry_lock.release()

    def check(self) -> list[str]:
        """Verify each channel without sending; problems are prefixed with the channel's name."""
        problems: list[str] = []
        for channel in self.channels:
            try:
                problems += [f"{channel.name}: {p}" for p in channel.check()]
            except Exception as exc:
                problems.append(f"{channel.name}: check failed: {type(exc).__name__}")
        return problems

    # -- one channel

    def _send_one(self, channel: Channel, alert: Alert) -> str:
        now = self.clock()
        slot = (alert.key(), channel.name)
        with self._lock:
            if slot in self._inflight:  # another thread is sending this very alert right now
                return "suppressed"
            if self._suppressed(alert, channel.name, now):
                log.debug("Alert %s on %s suppressed (sent recently)", alert.key(), channel.name)
                return "suppressed"
            self._inflight.add(slot)
        try:
            if self.outbox is not None:
                if self.outbox.pending_id(alert.key(), channel.name) is not None:
                    return "queued"  # already waiting for this channel; don't queue it twice
                if self._channel_backing_off(channel.name, now):
                    self.outbox.enqueue(
                        alert,
                        channel.name,
                        "channel failed recently; waiting to retry",
                        now=now,
                        next_try=self._backoff_until(channel.name, now),
                    )
                    return "queued"
            try:
                channel.send(alert)
            except Exception as exc:
                return self._failed(channel, alert, exc, now)
            self._mark_sent(alert.key(), channel.name, self.clock())
            log.info("Alert sent via %s: %s", channel.name, alert.title)
            return "sent"
        finally:
            with self._lock:
                self._inflight.discard(slot)

    def _failed(self, channel: Channel, alert: Alert, exc: Exception, now: float) -> str:
        reason = (
            str(exc) if isinstance(exc, AlertDeliveryError) else f"{type(exc).__name__} in {channel.name}"
        )
        if self.outbox is None:
            log.error("Alert %s not delivered via %s: %s", alert.key(), channel.name, reason)
            return "failed"
        self.outbox.enqueue(alert, channel.name, reason, now=now, next_try=now + self._delay(1))
        log.warning("Alert %s not delivered via %s: %s; queued for retry", alert.key(), channel.name, reason)
        return "queued"

    def _suppressed(self, alert: Alert, channel: str, now: float) -> bool:
        """Same alert within the window, or a recovery already announced for this episode."""
        recovery_key = "recovered|" + alert.problem_key()
        problem_at = self._last_sent(alert.problem_key(), channel)
        recovered_at = self._last_sent(recovery_key, channel)
        if alert.recovery:
            # Once per episode: a new problem alert after the last recovery opens a new one.
            return recovered_at is not None and (problem_at is None or recovered_at >= problem_at)
        if problem_at is None:
            return False
        if recovered_at is not None and recovered_at >= problem_at:
            return False  # it was resolved since; this is a new occurrence
        return now - problem_at < self.repeat_after_seconds

    # -- retrying

    def _retry_due(self) -> int:
        assert self.outbox is not None
        now = self.clock()
        by_name = {c.name: c for c in self.channels}
        broken: set[str] = set()
        delivered = 0
        for item_id, channel_name, alert, created in self.outbox.due_with_created(now):
            channel = by_name.get(channel_name)
            if channel is None:
                self.outbox.failed_again(
                    item_id, f"channel {channel_name!r} is not configured", now + self.retry_max_seconds
                )
                continue
            if channel_name in broken:  # it just failed; don't spend another timeout on it now
                self.outbox.failed_again(
                    item_id,
                    "channel failed again during this retry round",
                    self._backoff_until(channel_name, now),
                    count=False,
                )
                continue
            if self._superseded(alert, channel_name, created):
                self.outbox.delivered(item_id)
                continue
            late = dict(alert.details)
            late.setdefault("Raised", time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(created)))
            try:
                channel.send(Alert(**{**_fields_of(alert), "details": late}))
            except Exception as exc:
                reason = str(exc) if isinstance(exc, AlertDeliveryError) else type(exc).__name__
                attempts = self.outbox.attempts(item_id) + 1
                self.outbox.failed_again(item_id, reason, now + self._delay(attempts))
                broken.add(channel_name)
                log.warning(
                    "Queued alert %s still not delivered via %s: %s", alert.key(), channel_name, reason
                )
                continue
            self._mark_sent(alert.key(), channel_name, self.clock())
            self.outbox.delivered(item_id)
            delivered += 1
            log.info("Queued alert delivered via %s: %s", channel_name, alert.title)
        return delivered

    def _superseded(self, alert: Alert, channel: str, created: float) -> bool:
        """Skip a queued alert if the same one, or its recovery, was delivered after it was queued."""
        sent_at = self._last_sent(alert.key(), channel)
        if sent_at is not None and sent_at >= created:
            return True
        if not alert.recovery:
            recovered_at = self._last_sent("recovered|" + alert.problem_key(), channel)
            return recovered_at is not None and recovered_at >= created
        return False

    def _delay(self, attempts: int) -> float:
        return min(self.retry_base_seconds * 2 ** max(0, attempts - 1), self.retry_max_seconds)

    def _channel_backing_off(self, channel: str, now: float) -> bool:
        assert self.outbox is not None
        until = self.outbox.next_try_for(channel)
        return until is not None and until > now

    def _backoff_until(self, channel: str, now: float) -> float:
        assert self.outbox is not None
        until = self.outbox.next_try_for(channel)
        return until if until is not None and until > now else now + self.retry_base_seconds

    # -- sent records

    def _last_sent(self, key: str, channel: str) -> float | None:
        if self.outbox is not None:
            return self.outbox.last_sent(key, channel)
        return self._sent_here.get((key, channel))

    def _mark_sent(self, key: str, channel: str, at: float) -> None:
        if self.outbox is not None:
            self.outbox.record_sent(key, channel, at)
        else:
            self._sent_here[(key, channel)] = at


def _fields_of(alert: Alert) -> dict[str, Any]:
    return {f.name: getattr(alert, f.name) for f in fields(alert)}
