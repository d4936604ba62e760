"""Tell systemd how the agent is doing: the sd_notify protocol over the ``$NOTIFY_SOCKET`` datagram socket.

systemd (``Type=notify``) waits for ``READY=1`` before it calls the service started, shows
``STATUS=`` in ``systemctl status``, and with ``WatchdogSec=`` kills and restarts an agent that
stops sending ``WATCHDOG=1``. Outside systemd (a terminal, tests, Docker) every call is a
harmless no-op that returns False, so callers never need to ask where they run.

No dependency: the protocol is one ``KEY=value`` line per assignment in one datagram.
"""

from __future__ import annotations

import logging
import os
import re
import socket

log = logging.getLogger(__name__)

#: Control characters would let text (a file name, an error message) end the STATUS= line and
#: smuggle in another assignment such as ``READY=1`` or ``MAINPID=``; they become spaces.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# Warn once per address, not on every watchdog ping.
_warned: set[str] = set()


def _address() -> bytes | None:
    """The socket address from ``$NOTIFY_SOCKET``, or None when systemd is not listening.

    An address starting with ``@`` is in the abstract namespace (a leading NUL byte on the wire).
    """
    raw = os.environ.get("NOTIFY_SOCKET", "")
    if raw.startswith("@") and len(raw) > 1:
        return b"\0" + os.fsencode(raw[1:])
    if raw.startswith("/"):
        return os.fsencode(raw)
    # Unset, empty, or a transport this client does not speak (e.g. ``vsock:`` in newer systemd).
    return None


def notify(state: str) -> bool:
    """Send ``state`` (one or more ``KEY=value`` lines) to systemd.

    Returns True when the datagram was handed to systemd, False when not running under
    systemd or the socket could not be reached. Never raises for either.
    """
    address = _address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode("utf-8"), address)
    except OSError as exc:
        # A dead socket must not take the agent down, but a lost READY=1 means systemd
        # will time the start out, so say so once.
        key = os.environ.get("NOTIFY_SOCKET", "")
        if key not in _warned:
            _warned.add(key)
            log.warning("Could not notify systemd via NOTIFY_SOCKET=%s: %s", key, exc)
        return False
    return True


def _one_line(text: str) -> str:
    """``text`` as one line with no control characters, so it cannot add an assignment."""
    return _CONTROL.sub(" ", text).strip()


def ready(status_text: str | None = None) -> bool:
    """Start-up is done: the watcher runs and scans are being taken. Optionally set STATUS too."""
    message = "READY=1"
    if status_text:
        message += "\nSTATUS=" + _one_line(status_text)
    return notify(message)


def stopping(status_text: str | None = None) -> bool:
    """Shutdown has begun (in-flight copies are finishing)."""
    message = "STOPPING=1"
    if status_text:
        message += "\nSTATUS=" + _one_line(status_text)
    return notify(message)


def watchdog() -> bool:
    """Keep-alive ping; send it only while the agent is really healthy (watcher thread alive)."""
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    """One line shown by ``systemctl status``, e.g. ``"watching /data/scanner; 2 copying, 5 held"``."""
    return notify("STATUS=" + _one_line(text))


def extend_timeout(seconds: float) -> bool:
    """Ask for ``seconds`` more before the start (or stop) timeout fires; for a long catch-up scan."""
    return notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")


def watchdog_interval() -> float | None:
    """The watchdog timeout in seconds from ``$WATCHDOG_USEC``, or None if none is set for us.

    Ping at half this interval. None when the variable is absent or malformed, or when
    ``$WATCHDOG_PID`` names another process (the watchdog belongs to our parent, not to us).
    """
    usec = _positive_int(os.environ.get("WATCHDOG_USEC"))
    if usec is None:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid is not None and _positive_int(pid) != os.getpid():
        return None
    return usec / 1_000_000


def _positive_int(text: str | None) -> int | None:
    """``text`` as a positive decimal integer, or None when it is not one."""
    # isascii() too: str.isdigit() accepts digits such as "²" that int() rejects.
    if not text or not (text.isascii() and text.isdigit()) or int(text) == 0:
        return None
    return int(text)
