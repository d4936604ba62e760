"""Alerts on Slack: the Block Kit message, the real ``slack_sdk.WebClient``, and a rate-limit policy
that never stalls the scan that raised the alert.

A recovery closes its problem's message: ``chat.update`` marks it resolved and a reply in its thread
says how and when. A message Slack will not update (deleted, too old to edit) gets a reply in its
thread shown in the channel too, or failing that a plain new message: the recovery is never lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.error import URLError

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)

from scanner_agent.alerts.channel import AlertDeliveryError, Original, Ref, is_web_url, scrub
from scanner_agent.core.alerts import Alert
from scanner_agent.core.retry_after import retry_after_from_headers

log = logging.getLogger(__name__)


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
    if is_web_url(alert.run_url) and len(alert.run_url or "") <= _BUTTON_URL_MAX:
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


def slack_resolved_blocks(recovery: Alert, original: Alert | None) -> list[dict[str, Any]]:
    """What the problem's first message becomes once it is resolved: its headline marked resolved,
    what it said, and a line saying how and when it cleared (``recovery``)."""
    first = original or recovery
    when = recovery.details.get("Resolved")
    how = f"*Resolved{' ' + _mrkdwn(when) if when else ''}*: {_mrkdwn(recovery.message)}"
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _clip("✅ " + recovery.title, _HEADER_MAX), "emoji": True},
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": _clip(_mrkdwn(first.message), _SECTION_MAX)}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": _clip(how, _SECTION_MAX)}]},
    ]
    facts = [
        {"type": "mrkdwn", "text": _clip(f"*{_mrkdwn(label)}*\n{_mrkdwn(value)}", _FIELD_MAX)}
        for label, value in first.facts()
    ]
    blocks.append({"type": "section", "fields": facts[:_FIELDS_MAX]})
    url = first.run_url or recovery.run_url
    if is_web_url(url) and len(url or "") <= _BUTTON_URL_MAX:
        button = {
            "type": "button",
            "action_id": "open_prefect_run",
            "url": url,
            "text": {"type": "plain_text", "text": "Open run in Prefect"},
        }
        blocks.append({"type": "actions", "elements": [button]})
    return blocks


#: chat.update answers meaning "this message will not change": post the recovery anew instead.
_NOT_UPDATABLE = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})
#: chat.postMessage answers meaning "no such thread any more": post it as a plain message.
_NO_THREAD = frozenset({"thread_not_found", "message_not_found", "invalid_thread_ts"})


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
        # Slack always sends Retry-After on a 429; without a readable one, assume its usual 1 s.
        wait = retry_after_from_headers(dict(response.headers or {}), time.time())
        return (1.0 if wait is None else wait) <= self.max_wait


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

    def send(self, alert: Alert, *, original: Original | None = None) -> Ref | None:
        """Post ``alert``; a recovery with its problem's ``original`` message closes that instead.
        Returns the channel id and ts of what was posted."""
        cid, ts = (original.ref.get("channel"), original.ref.get("ts")) if original else (None, None)
        if original is None or not cid or not ts:
            return self._post(alert)
        return self._close(alert, original, cid, ts)

    def _close(self, alert: Alert, original: Original, cid: str, ts: str) -> Ref | None:
        """Update the problem's message to resolved, then reply in its thread with how and when."""
        updated = True
        try:
            self._call(
                "chat.update",
                lambda: self._client.chat_update(
                    channel=cid,
                    ts=ts,
                    text=_mrkdwn(f"{alert.title}: {alert.message}"),
                    blocks=slack_resolved_blocks(alert, original.alert),
                ),
            )
        except AlertDeliveryError as exc:
            if exc.code not in _NOT_UPDATABLE:
                raise  # transient or configuration: queued, and the retry updates it then
            updated = False
            log.warning(
                "Alert %s: Slack will not update its first message (%s); posting anew", alert.key(), exc.code
            )
        try:
            # Updated: the reply stays in the thread. Not updated: it is the new message, so the
            # channel shows it too (reply_broadcast).
            return self._post(alert, channel=cid, thread_ts=ts, broadcast=not updated)
        except AlertDeliveryError as exc:
            if exc.code not in _NO_THREAD:
                raise
            log.warning(
                "Alert %s: its Slack thread is gone (%s); posting a new message", alert.key(), exc.code
            )
            return self._post(alert)

    def _post(
        self,
        alert: Alert,
        *,
        channel: str | None = None,
        thread_ts: str | None = None,
        broadcast: bool = False,
    ) -> Ref | None:
        thread: dict[str, Any] = {"thread_ts": thread_ts, "reply_broadcast": broadcast} if thread_ts else {}
        posted = self._call(
            "chat.postMessage",
            lambda: self._client.chat_postMessage(
                channel=channel or self.channel,
                text=slack_text(alert),
                blocks=slack_blocks(alert),
                unfurl_links=False,
                unfurl_media=False,
                **thread,
            ),
        )
        for png, what in ((alert.thumbnail_png, "thumbnail"), (alert.label_png, "label")):
            if png:
                self._upload_picture(alert, posted, png, what)
        cid, ts = posted.get("channel"), posted.get("ts")
        return {"channel": str(cid), "ts": str(ts)} if cid and ts else None

    def post_text(self, headline: str, lines: list[str]) -> Ref | None:
        """A plain informational message (the daily digest): a header and one section of lines."""
        blocks = [
            {"type": "header", "text": {"type": "plain_text", "text": _clip(headline, _HEADER_MAX)}},
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": _clip(_mrkdwn("\n".join(lines)), _SECTION_MAX)},
            },
        ]
        posted = self._call(
            "chat.postMessage",
            lambda: self._client.chat_postMessage(
                channel=self.channel, text=_mrkdwn("\n".join([headline, *lines])), blocks=blocks
            ),
        )
        cid, ts = posted.get("channel"), posted.get("ts")
        return {"channel": str(cid), "ts": str(ts)} if cid and ts else None

    def _upload_picture(self, alert: Alert, posted: Any, png: bytes, what: str) -> None:
        """Attach a picture (the slide's ``thumbnail`` or its ``label``) in the alert's thread.

        ``files_upload_v2`` needs a channel ID, not a name like ``#slide-scanning``;
        chat.postMessage answers with the ID, so that is used (no channels:read scope needed).
        The message itself has arrived by now, so a failed upload is logged, not re-sent: a
        retry would post the whole alert twice.
        """
        channel_id = posted.get("channel") or self.channel
        name = f"{alert.subject or 'slide'}-{what}.png"
        try:
            self._call(
                "files.upload",
                lambda: self._client.files_upload_v2(
                    channel=channel_id,
                    thread_ts=posted.get("ts"),
                    file=png,
                    filename=name,
                    title=f"{what.capitalize()}: {alert.subject or alert.scanner}",
                    alt_txt=f"Slide {what} for {alert.subject or 'the scan'}",
                ),
            )
        except AlertDeliveryError as exc:
            log.warning(
                "Alert %s: message posted to Slack but the %s upload failed: %s", alert.key(), what, exc
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
            raise self._error(f"Slack {method}{where} failed: {reason}", code=code) from None
        except (SlackClientError, URLError, OSError) as exc:
            why = getattr(exc, "reason", None) or exc
            raise self._error(f"Slack {method} failed: could not reach {self.api_url}: {why}") from None

    def _error(self, message: str, *, code: str | None = None) -> AlertDeliveryError:
        return AlertDeliveryError(scrub(message, [self._token]), code=code)
