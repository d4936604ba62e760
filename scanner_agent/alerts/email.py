"""Alerts by e-mail: the message (plain text, HTML, thumbnail) and the SMTP channel that sends it.

Every e-mail carries a Message-ID the ``Alerter`` keeps; a recovery goes out as a reply to its
problem's e-mail (``In-Reply-To``/``References``, subject ``Re: <original subject>``), so mail
clients show the problem and its end as one conversation.
"""

from __future__ import annotations

import html
import logging
import re
import smtplib
import ssl
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from scanner_agent.alerts.channel import AlertDeliveryError, Original, Ref, is_web_url, scrub
from scanner_agent.core.alerts import Alert

log = logging.getLogger(__name__)


#: A Message-ID as ``make_msgid`` writes it: anything else read back from the outbox is not trusted
#: into a header (a line break there would forge headers).
_MSGID = re.compile(r"<[^<>\s@]+@[^<>\s@]+>")


def email_message(
    alert: Alert, *, sender: str, recipients: list[str], original: Original | None = None
) -> EmailMessage:
    """The alert as an e-mail: plain text, an HTML alternative, and the thumbnail as a PNG attachment.
    With ``original`` (a recovery's problem e-mail: its Message-ID and subject) it is a reply to it."""
    msg = EmailMessage()
    msg_id = (original.ref.get("message_id") or "") if original else ""
    first_subject = " ".join(((original.ref.get("subject") or "") if original else "").split())
    if _MSGID.fullmatch(msg_id) and first_subject:
        msg["Subject"] = first_subject if first_subject.startswith("Re: ") else f"Re: {first_subject}"
        msg["In-Reply-To"] = msg_id
        msg["References"] = msg_id
    else:
        msg["Subject"] = alert.title
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    msg.set_content(_email_plain(alert))
    msg.add_alternative(_email_html(alert), subtype="html")
    for png, what in ((alert.thumbnail_png, "thumbnail"), (alert.label_png, "label")):
        if png:
            msg.add_attachment(
                png, maintype="image", subtype="png", filename=f"{alert.subject or 'slide'}-{what}.png"
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
        href = e(alert.run_url, quote=True) if is_web_url(alert.run_url) else ""
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

    def send(self, alert: Alert, *, original: Original | None = None) -> Ref | None:
        """Send ``alert``; a recovery with its problem's ``original`` e-mail is a reply to it.
        Returns the Message-ID and subject, which a later recovery answers."""
        msg = email_message(alert, sender=self.sender, recipients=self.recipients, original=original)
        refused: dict[str, Any] = {}
        self._session(
            lambda smtp: refused.update(
                smtp.send_message(msg, from_addr=self.sender, to_addrs=self.recipients)
            )
        )
        if refused:  # the others got it; say who did not rather than re-send to everyone
            log.warning("Alert %s: SMTP server refused some recipients: %s", alert.key(), ", ".join(refused))
        return {"message_id": str(msg["Message-ID"]), "subject": str(msg["Subject"])}

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
        return AlertDeliveryError(scrub(message, [self._password]))


def _smtp_text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
