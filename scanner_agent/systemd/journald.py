"""Logging to journald: priorities a ``journalctl -p warning`` can filter on, and per-scan fields.

Under systemd the agent's stderr is a stream into the journal, and systemd says so in
``$JOURNAL_STREAM`` (``<st_dev>:<st_ino>`` of that stream). Only when stderr *is* that stream
(a child whose stderr was redirected inherits the variable but not the stream) does the agent
log for journald:

- where the native socket ``/run/systemd/journal/socket`` answers, each record is one datagram
  of the Native Journal Protocol with ``MESSAGE``, ``PRIORITY`` and the scan's fields
  ``SCANNER``, ``BARCODE``, ``SCAN_ID``, ``FLOW_RUN_ID`` (so ``journalctl BARCODE=620995`` finds a
  slide's whole story);
- otherwise, and for a record the socket refuses, each line on stderr starts with its syslog
  priority (``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>`` debug) and carries no timestamp.

The scan's fields come from the record (``extra={"barcode": ...}``) or, so that few call sites
change, from ``scan_context``, a context variable the flow binds around one scan.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import socket
import struct
import sys
from collections.abc import Iterator, Mapping
from typing import IO

#: Where journald listens for native-protocol datagrams.
JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_IDENTIFIER = "scanner-agent"

#: The scan fields: record attribute (``extra=`` key) -> journal field name.
SCAN_FIELDS = {"scanner": "SCANNER", "barcode": "BARCODE", "scan_id": "SCAN_ID", "flow_run_id": "FLOW_RUN_ID"}

_CONTEXT: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("scanner_agent_log_context")
#: Fields every record of this process carries (the scanner's name, once the config is read).
_PROCESS_FIELDS: dict[str, str] = {}


def priority(levelno: int) -> int:
    """The syslog priority of a logging level: 2 critical, 3 error, 4 warning, 6 info, 7 debug."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def stderr_is_journal(environ: Mapping[str, str] | None = None, fd: int | None = None) -> bool:
    """Whether ``fd`` (stderr) is the journal stream ``$JOURNAL_STREAM`` names (device and inode)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(sys.stderr.fileno() if fd is None else fd)
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def set_process_fields(**fields: object) -> None:
    """Fields for every record of this process, e.g. ``set_process_fields(scanner="Cardinal")``."""
    _PROCESS_FIELDS.update({k: str(v) for k, v in fields.items() if v is not None})


@contextlib.contextmanager
def scan_context(**fields: object) -> Iterator[None]:
    """Records logged inside this block (this thread or task, and what it starts) carry ``fields``."""
    token = _CONTEXT.set({**_CONTEXT.get({}), **{k: str(v) for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def bind_scan_context(**fields: object) -> None:
    """Add ``fields`` to the current scan context until the enclosing ``scan_context`` ends
    (for a value learned midway, such as the barcode once the file or slide gave it)."""
    _CONTEXT.set({**_CONTEXT.get({}), **{k: str(v) for k, v in fields.items() if v is not None}})


def record_fields(record: logging.LogRecord) -> dict[str, str]:
    """The journal fields of the scan this record is about: process, context, then the record's own."""
    merged = {**_PROCESS_FIELDS, **_CONTEXT.get({})}
    for attr in SCAN_FIELDS:
        value = getattr(record, attr, None)
        if value is not None and value != "":
            merged[attr] = str(value)
    return {SCAN_FIELDS[k]: v for k, v in merged.items() if k in SCAN_FIELDS and v}


class PriorityFormatter(logging.Formatter):
    """``<4>scanner_agent.watch: text``: journald takes the prefix as the line's priority and
    stamps the time itself. Each line of a multi-line record (a traceback) gets the prefix too:
    journald reads every line as its own entry."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines() or [""])


def encode_field(name: str, value: str | bytes) -> bytes:
    """One field of the native protocol: ``NAME=value\\n``, or for a value with a newline
    ``NAME\\n`` + its length as 64-bit little-endian + the value + ``\\n``."""
    data = value.encode("utf-8", "replace") if isinstance(value, str) else value
    key = name.encode("ascii")
    if b"\n" in data:
        return key + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return key + b"=" + data + b"\n"


class NativeJournalHandler(logging.Handler):
    """Sends each record to journald as one native-protocol datagram; a record the socket refuses
    (journald gone, a message larger than a datagram) goes to ``fallback`` with its priority prefix."""

    def __init__(self, address: str = JOURNAL_SOCKET, fallback: IO[str] | None = None) -> None:
        super().__init__()
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.fallback = logging.StreamHandler(fallback if fallback is not None else sys.stderr)
        self.fallback.setFormatter(PriorityFormatter())
        self.setFormatter(logging.Formatter("%(message)s"))

    def datagram(self, record: logging.LogRecord) -> bytes:
        fields = {
            "MESSAGE": self.format(record),
            "PRIORITY": str(priority(record.levelno)),
            "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER,
            "LOGGER": record.name,
            "CODE_FILE": record.pathname,
            "CODE_LINE": str(record.lineno),
            "CODE_FUNC": record.funcName,
            "THREAD_NAME": record.threadName or "",
            **record_fields(record),
        }
        return b"".join(encode_field(k, v) for k, v in fields.items())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            payload = self.datagram(record)
        except Exception:
            self.handleError(record)
            return
        try:
            self.sock.sendto(payload, self.address)
        except OSError:
            self.fallback.handle(record)

    def close(self) -> None:
        self.sock.close()
        super().close()


def native_socket_answers(address: str = JOURNAL_SOCKET) -> bool:
    """Whether a datagram socket is listening at ``address`` (a connect sends nothing)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(address)
        except OSError:
            return False
    return True


def journal_handler(
    environ: Mapping[str, str] | None = None, address: str = JOURNAL_SOCKET
) -> logging.Handler | None:
    """The handler to log with when stderr is the journal (native if its socket answers, else
    prefixed lines on stderr); None outside journald, where output stays as it is."""
    if not stderr_is_journal(environ):
        return None
    if native_socket_answers(address):
        return NativeJournalHandler(address)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(PriorityFormatter())
    return handler
