"""What every alert channel is: the ``Channel`` protocol, its one error, and the helpers both channels use.

A channel's ``send`` returns where the alert landed (``Ref``: Slack's channel id and ts, an e-mail's
Message-ID and subject). The ``Alerter`` keeps it for the problem, and hands it back as ``Original``
when that problem recovers, so the channel can answer the first message instead of posting a new one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from scanner_agent.core.alerts import Alert


class AlertDeliveryError(Exception):
    """A channel could not deliver an alert. The message says why and never holds a secret.

    ``code`` is the service's own error code when it gave one (Slack's ``message_not_found``...),
    for a channel that handles some answers itself."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


#: Where one message landed on one channel, as the channel itself understands it.
Ref = dict[str, str]


@dataclass(frozen=True)
class Original:
    """The problem alert a recovery answers: where it landed (``ref``) and what it said (``alert``,
    None when it could not be read back)."""

    ref: Ref
    alert: Alert | None = None


@runtime_checkable
class Channel(Protocol):
    name: str

    def send(self, alert: Alert, *, original: Original | None = None) -> Ref | None:
        """Deliver ``alert``; raise ``AlertDeliveryError`` if it did not arrive.

        ``original`` (recoveries only) is the problem's first message on this channel: the channel
        closes it (Slack: update and reply in its thread; e-mail: a reply). Returns where the alert
        landed, or None when the channel cannot be answered later."""

    def check(self) -> list[str]:
        """Verify the channel without sending anything; return the problems found (empty = fine)."""


def scrub(text: str, secrets: list[str | None]) -> str:
    """Blank out any secret that a library might have echoed into an error text."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def is_web_url(url: str | None) -> bool:
    return bool(url) and str(url).lower().startswith(("http://", "https://"))
