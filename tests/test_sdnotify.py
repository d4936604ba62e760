"""sd_notify client against real AF_UNIX datagram sockets standing in for systemd's notify socket."""

from __future__ import annotations

import os
import socket
import struct
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanner_agent.systemd import notify as sdnotify


class Receiver:
    """A bound datagram socket that reads what systemd would read, with the sender's credentials."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        # systemd enables SO_PASSCRED to learn the sender's PID (that is how NotifyAccess=main works).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.settimeout(5)

    def receive(self) -> tuple[str, int]:
        """One datagram and the PID the kernel vouches sent it."""
        data, ancdata, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = -1
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, _uid, _gid = struct.unpack("iII", payload[:12])
        return data.decode("utf-8"), pid

    def nothing_pending(self) -> bool:
        self.sock.settimeout(0.2)
        try:
            self.sock.recv(4096)
        except TimeoutError:
            return True
        return False


@pytest.fixture()
def path_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    # sun_path holds 108 bytes, so use a short directory rather than pytest's long tmp_path.
    with tempfile.TemporaryDirectory(prefix="sdnotify-") as tmp:
        address = os.path.join(tmp, "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(address)
            monkeypatch.setenv("NOTIFY_SOCKET", address)
            yield Receiver(sock)


@pytest.fixture()
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    name = f"scanner-agent-test/{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        yield Receiver(sock)


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest) -> Receiver:
    return request.getfixturevalue(f"{request.param}_socket")


def test_ready_reaches_the_socket_from_this_process(receiver: Receiver) -> None:
    assert sdnotify.ready() is True
    message, pid = receiver.receive()
    assert message == "READY=1"
    assert pid == os.getpid()


def test_each_call_sends_its_assignment(receiver: Receiver) -> None:
    assert sdnotify.watchdog()
    assert sdnotify.status("watching /data/scanner; 2 copying")
    assert sdnotify.stopping()
    assert sdnotify.extend_timeout(90)
    assert sdnotify.notify("RELOADING=1\nSTATUS=reloading")
    received = [receiver.receive()[0] for _ in range(5)]
    assert received == [
        "WATCHDOG=1",
        "STATUS=watching /data/scanner; 2 copying",
        "STOPPING=1",
        "EXTEND_TIMEOUT_USEC=90000000",
        "RELOADING=1\nSTATUS=reloading",
    ]


def test_ready_and_stopping_can_carry_a_status_in_the_same_datagram(receiver: Receiver) -> None:
    sdnotify.ready("watching /data/scanner")
    sdnotify.stopping("finishing 1 copy")
    assert receiver.receive()[0] == "READY=1\nSTATUS=watching /data/scanner"
    assert receiver.receive()[0] == "STOPPING=1\nSTATUS=finishing 1 copy"


def test_status_text_cannot_inject_other_assignments(receiver: Receiver) -> None:
    # A scan named by a hostile or careless user must not be able to send READY=1 or MAINPID=.
    sdnotify.status("copying evil\nMAINPID=1\rREADY=1\x00.svs")
    message, _pid = receiver.receive()
    assert message.count("\n") == 0
    assert message == "STATUS=copying evil MAINPID=1 READY=1 .svs"


def test_unicode_status_is_sent_as_utf8(receiver: Receiver) -> None:
    sdnotify.status("Färbung µm — ok")
    assert receiver.receive()[0] == "STATUS=Färbung µm — ok"


def test_pings_from_another_thread_arrive(receiver: Receiver) -> None:
    # The daemon pings from its own health-check thread.
    worker = threading.Thread(target=sdnotify.watchdog)
    worker.start()
    worker.join()
    assert receiver.receive() == ("WATCHDOG=1", os.getpid())


@pytest.mark.parametrize("value", [None, "", "relative/notify", "vsock:2:1234", "@"])
def test_without_a_usable_notify_socket_every_call_is_a_quiet_no(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.ready() is False
    assert sdnotify.stopping() is False
    assert sdnotify.watchdog() is False
    assert sdnotify.status("x") is False
    assert sdnotify.extend_timeout(1) is False


def test_a_vanished_socket_returns_false_and_warns_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / f"gone-{uuid.uuid4().hex[:8]}"))
    with caplog.at_level("WARNING", logger="scanner_agent.systemd.notify"):
        assert sdnotify.watchdog() is False
        assert sdnotify.watchdog() is False
    warnings = [r for r in caplog.records if "NOTIFY_SOCKET" in r.getMessage()]
    assert len(warnings) == 1


def test_a_socket_nobody_reads_any_more_returns_false(monkeypatch: pytest.MonkeyPatch) -> None:
    with tempfile.TemporaryDirectory(prefix="sdnotify-") as tmp:
        address = os.path.join(tmp, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(address)
        sock.close()  # the file remains but nothing listens: ECONNREFUSED
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        assert sdnotify.ready() is False


def test_no_message_is_sent_when_not_asked(receiver: Receiver) -> None:
    sdnotify.watchdog_interval()
    assert receiver.nothing_pending()


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("60000000", None, 60.0),
        ("60000000", "self", 60.0),
        ("1500000", "self", 1.5),
        ("250", None, 0.00025),
        ("60000000", "other", None),
        ("60000000", "garbage", None),
        ("0", None, None),
        ("", None, None),
        ("-5", None, None),
        ("60s", None, None),
        ("²", None, None),
        (None, "self", None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    if usec is None:
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    else:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is None:
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
    else:
        monkeypatch.setenv(
            "WATCHDOG_PID", {"self": str(os.getpid()), "other": str(os.getpid() + 1)}.get(pid, pid)
        )
    assert sdnotify.watchdog_interval() == expected
