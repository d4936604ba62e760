"""The alert adapters: Slack, e-mail, and the alerter that sends to both through the outbox.

Other layers import from this package, never from its modules, so the modules can be split
without touching their callers.
"""

from scanner_agent.alerts.alerter import (
    KINDS,
    Alert,
    AlertDeliveryError,
    Alerter,
    Channel,
    EmailChannel,
    SlackChannel,
    kind_info,
)

__all__ = [
    "Alert",
    "AlertDeliveryError",
    "Alerter",
    "Channel",
    "EmailChannel",
    "KINDS",
    "SlackChannel",
    "kind_info",
]
