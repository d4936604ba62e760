"""What every alert channel is: the ``Channel`` protocol, its one error, and the helpers both channels use."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from scanner_agent.core.alerts import Alert


class AlertDeliveryError(Exception):
    """A channel could not deliver an alert. The message says why and never holds a secret."""


@runtime_checkable
class Channel(Protocol):
    name: str

    def send(self, alert: Alert) -> None:
        """Deliver ``alert``; raise ``AlertDeliveryError`` if it did not arrive."""

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
