"""Logging for journald: priority prefixes on a real stream, native-protocol datagrams on a real
AF_UNIX socket, and output as before when ``$JOURNAL_STREAM`` names some other stream.

The stream tests run the agent's own logging set-up in a subprocess whose stderr is a file, with
``$JOURNAL_STREAM`` set to that file's device and inode, exactly as systemd sets it for its stream.
(Under the real journald: tests/test_systemd.py, ``journalctl -p warning``.)
"""

from __future__ import annotations

import logging
import os
import re
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanner_agent.systemd import journald

_LOG_SOME = """
import logging, sys
from scanner_agent import cli
from scanner_agent.systemd import journald
cli._setup_logging(verbose=True)
journald.set_process_fields(scanner="Cardinal")
log = logging.getLogger("scanner_agent.demo")
log.debug("a debug line")
log.info("an info line")
log.warning("storage %s is slow", "/mnt/slides")
try:
    raise ValueError("boom")
except ValueError:
    log.exception("could not place 620995.svs")
"""


def _run_with_stderr_to(stderr_file: Path, journal_stream: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal_stream is not None:
        env["JOURNAL_STREAM"] = journal_stream
    with stderr_file.open("w") as err:
        subprocess.run([sys.executable, "-c", _LOG_SOME], stderr=err, env=env, check=True, timeout=120)
    return stderr_file.read_text()


def _dev_ino(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def test_on_the_journal_stream_every_line_has_its_priority_and_no_timestamp(tmp_path: Path) -> None:
    err = tmp_path / "stderr"
    err.touch()
    out = _run_with_stderr_to(err, _dev_ino(err))
    lines = out.splitlines()
    assert "<7>scanner_agent.demo: a debug line" in lines
    assert "<6>scanner_agent.demo: an info line" in lines
    assert "<4>scanner_agent.demo: storage /mnt/slides is slow" in lines
    assert "<3>scanner_agent.demo: could not place 620995.svs" in lines
    # The traceback's lines are entries of their own in journald: each carries the error's priority.
    assert "<3>ValueError: boom" in lines and "<3>Traceback (most recent call last):" in lines
    assert all(re.match(r"<[2-7]>", line) for line in lines), out
    assert not re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", out), "journald stamps the time itself"


@pytest.mark.parametrize("value", ["elsewhere", "garbage", "empty"])
def test_journal_stream_set_but_pointing_elsewhere_leaves_output_as_today(tmp_path: Path, value: str) -> None:
    """A child of the service whose stderr was redirected inherits $JOURNAL_STREAM, not the stream."""
    err = tmp_path / "stderr"
    err.touch()
    other = tmp_path / "other"
    other.touch()
    stream = {"elsewhere": _dev_ino(other), "garbage": "not:a-stream", "empty": ""}[value]
    out = _run_with_stderr_to(err, stream)
    assert not re.search(r"(?m)^<\d>", out), out
    assert re.search(r"(?m)^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ WARNING scanner_agent.demo: storage", out), out
    assert "ValueError: boom" in out


def test_stderr_is_journal_compares_device_and_inode(tmp_path: Path) -> None:
    f = tmp_path / "s"
    f.touch()
    with f.open("w") as fh:
        st = os.fstat(fh.fileno())
        assert journald.stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, fh.fileno())
        assert not journald.stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, fh.fileno())
        assert not journald.stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev + 1}:{st.st_ino}"}, fh.fileno())
        assert not journald.stderr_is_journal({}, fh.fileno())


# --- the native protocol on a real datagram socket --------------------------------------------------


def parse_native(data: bytes) -> dict[str, str]:
    """Decode one native-protocol datagram (both the ``K=v`` and the length-prefixed binary form)."""
    fields: dict[str, str] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            i = nl + 1
        else:
            key = line
            (size,) = struct.unpack("<Q", data[nl + 1 : nl + 9])
            value = data[nl + 9 : nl + 9 + size]
            assert data[nl + 9 + size : nl + 10 + size] == b"\n"
            i = nl + 10 + size
        assert re.fullmatch(rb"[A-Z0-9][A-Z0-9_]*", key), key
        fields[key.decode()] = value.decode()
    return fields


@pytest.fixture()
def journal_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "journal.socket")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(30)
    try:
        yield path, server
    finally:
        server.close()


def _stderr_env() -> dict[str, str]:
    st = os.fstat(sys.stderr.fileno())
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def _logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"scanner_agent.test_logging.{id(handler)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return logger


def test_native_datagram_carries_priority_message_and_the_scan_fields(
    journal_socket: tuple[str, socket.socket],
) -> None:
    path, server = journal_socket
    handler = journald.journal_handler(_stderr_env(), address=path)
    assert isinstance(handler, journald.NativeJournalHandler)
    log = _logger(handler)
    try:
        journald.set_process_fields(scanner="Cardinal")
        with journald.scan_context(scan_id=17, flow_run_id="0b6c-run"):
            journald.bind_scan_context(barcode="620995")
            log.warning("storage %s is full", "/mnt/slides")
        log.info("between scans")
        log.error("two\nlines", extra={"barcode": "545891", "scan_id": 3})
        warning, between, error = (parse_native(server.recv(65536)) for _ in range(3))
    finally:
        handler.close()
        journald._PROCESS_FIELDS.clear()
    assert warning["MESSAGE"] == "storage /mnt/slides is full" and warning["PRIORITY"] == "4"
    assert warning["SYSLOG_IDENTIFIER"] == "scanner-agent" and warning["LOGGER"] == log.name
    assert (warning["SCANNER"], warning["BARCODE"], warning["SCAN_ID"], warning["FLOW_RUN_ID"]) == (
        "Cardinal",
        "620995",
        "17",
        "0b6c-run",
    )
    assert between["PRIORITY"] == "6" and between["SCANNER"] == "Cardinal"
    assert "BARCODE" not in between and "SCAN_ID" not in between, "the scan's context ended with its block"
    # A newline in a value takes the protocol's binary form; extra= fields win over the context.
    assert error["MESSAGE"] == "two\nlines" and error["PRIORITY"] == "3"
    assert (error["BARCODE"], error["SCAN_ID"]) == ("545891", "3")


def test_scan_context_does_not_leak_between_threads(journal_socket: tuple[str, socket.socket]) -> None:
    path, server = journal_socket
    handler = journald.NativeJournalHandler(path)
    log = _logger(handler)
    gate = threading.Barrier(2)

    def scan(barcode: str) -> None:
        with journald.scan_context(barcode=barcode):
            gate.wait(timeout=30)
            log.info("scan %s", barcode)
            gate.wait(timeout=30)

    threads = [threading.Thread(target=scan, args=(b,)) for b in ("111111", "222222")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        got = [parse_native(server.recv(65536)) for _ in range(2)]
    finally:
        handler.close()
    assert {(g["MESSAGE"], g["BARCODE"]) for g in got} == {
        ("scan 111111", "111111"),
        ("scan 222222", "222222"),
    }


def test_a_record_the_socket_refuses_goes_to_stderr_with_its_priority(tmp_path: Path) -> None:
    """journald restarting (socket gone) must not lose the line: it goes to the stream instead."""
    err = tmp_path / "stderr"
    with err.open("w") as stream:
        handler = journald.NativeJournalHandler(str(tmp_path / "no-such.socket"), fallback=stream)
        _logger(handler).warning("watcher stopped")
        handler.close()
    assert err.read_text().splitlines()[-1].startswith("<4>") and "watcher stopped" in err.read_text()


def test_without_the_native_socket_the_stream_gets_prefixed_lines(tmp_path: Path) -> None:
    handler = journald.journal_handler(_stderr_env(), address=str(tmp_path / "absent.socket"))
    assert isinstance(handler, logging.StreamHandler)
    assert isinstance(handler.formatter, journald.PriorityFormatter)
    assert journald.journal_handler({"JOURNAL_STREAM": "1:1"}, address=str(tmp_path / "x")) is None
