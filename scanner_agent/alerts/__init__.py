"""The alert adapters: Slack, e-mail, and the alerter that sends to both through the outbox.

Other layers import from this package, never from its modules, so the modules can be split
without touching their callers. The alert model itself (``Alert``, ``KINDS``, ``kind_info``)
lives in ``scanner_agent.core.alerts`` and is re-exported here.
"""

from scanner_agent.alerts.alerter import Alerter
from scanner_agent.alerts.channel import AlertDeliveryError, Channel, Original, Ref
from scanner_agent.alerts.email import EmailChannel, email_message
from scanner_agent.alerts.slack import SlackChannel, slack_blocks, slack_resolved_blocks, slack_text
from scanner_agent.core.alerts import KINDS, Alert, AlertKind, kind_info

__all__ = [
    "KINDS",
    "Alert",
    "AlertDeliveryError",
    "AlertKind",
    "Alerter",
    "Channel",
    "EmailChannel",
    "Original",
    "Ref",
    "SlackChannel",
    "email_message",
    "kind_info",
    "slack_blocks",
    "slack_resolved_blocks",
    "slack_text",
]
