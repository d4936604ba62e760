"""The systemd adapter: the sd_notify protocol, and logging to journald (``journald``).

Its public surface is the ``notify`` module, used as a namespace
(``from scanner_agent.systemd import notify as sdnotify``; ``sdnotify.ready(...)``).
"""

from __future__ import annotations

from scanner_agent.systemd import journald, notify

__all__ = ["journald", "notify"]
