"""Alerts that reach people, end to end: real scans through real Prefect runs, alerted on a real
Slack Web API (tests/servers/slack_api.py) and a real STARTTLS+AUTH SMTP server (tests/servers/smtp.py).

Each failure the pipeline can produce must arrive on Slack AND by e-mail exactly once, carrying
the Prefect run link, the barcode (or file) and the reason; repeats within the window are
suppressed, recoveries are announced once, and a dead Slack never costs the e-mail.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from scanner_agent.service.bootstrap import Services
from scanner_agent.testing.synthetic import write_corrupt, write_svs
from tests.harness import SAMPLE_SHEET, Folders, make_agent, process, write_config
from tests.servers.slack_api import SlackApiServer
from tests.servers.smtp import SmtpServer

# The ``slack`` and ``smtp`` fixtures, with this module's credentials (TOKEN, SMTP_USER, SMTP_PASSWORD).
pytest_plugins = ["tests.servers.fixtures"]

TOKEN = "xoxb-e2e-4242-SECRETslackTOKEN"
SMTP_USER = "scanner-agent"
SMTP_PASSWORD = "e2e-Sm7p-pa55word-never-shown"
UI = "http://prefect.example.org:4200"
CHANNEL_ID = "C0SLIDES"  # what the test Slack server calls #slide-scanning


@dataclass
class Lab(Folders):
    """One scanner's folders and agent, wired to the test Slack and SMTP servers."""

    agent: Services
    slack: SlackApiServer
    smtp: SmtpServer

    def scan(self, name: str, **kw: Any) -> Path:
        kw.setdefault("width", 1024)
        kw.setdefault("height", 768)
        return write_svs(self.watch / name, **kw)

    def run_url(self, rec: Any) -> str:
        assert rec.flow_run_id, f"scan {rec.id} has no flow run"
        return f"{UI}/runs/flow-run/{rec.flow_run_id}"

    # What people received

    def posts(self) -> list[dict[str, Any]]:
        return [c.payload for c in self.slack.calls_to("chat.postMessage", ok_only=True)]

    def mails(self) -> list[EmailMessage]:
        with self.smtp.lock:
            return list(self.smtp.messages)


def post_text(post: dict[str, Any]) -> str:
    """Everything a person sees in a Slack post: the fallback text and every block."""
    return post.get("text", "") + "\n" + json.dumps(post.get("blocks", []), ensure_ascii=False)


def button_url(post: dict[str, Any]) -> str | None:
    for block in post.get("blocks", []):
        if block.get("type") == "actions":
            for el in block["elements"]:
                if el.get("type") == "button":
                    return str(el["url"])
    return None


def header(post: dict[str, Any]) -> str:
    return str(post["blocks"][0]["text"]["text"])


def mail_text(msg: EmailMessage) -> str:
    return msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]


@pytest.fixture
def make_lab(
    tmp_path: Path, slack: SlackApiServer, smtp: SmtpServer, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Lab]]:
    """Build a Lab; keyword arguments are config sections (merged over the alert defaults) or ``sheet``."""
    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    password_file = tmp_path / "smtp-password"
    password_file.write_text(SMTP_PASSWORD + "\n")
    os.chmod(password_file, 0o600)
    agents: list[Services] = []

    def build(*, sheet: str = SAMPLE_SHEET, **sections: dict[str, Any]) -> Lab:
        alerts = {
            "slack_channel": "#slide-scanning",
            "slack_api_url": slack.url,
            "email_to": ["lab@example.org", "pathology@example.org"],
            "email_from": "scanner@example.org",
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp.port,
            "smtp_starttls": True,
            "smtp_username": SMTP_USER,
            "smtp_password_file": str(password_file),
            "smtp_ca_file": str(smtp.cert_path),
            "prefect_ui_url": UI,
            "repeat_after_minutes": 60,
        }
        alerts.update(sections.pop("alerts", {}))
        base = tmp_path / "lab"
        cfg = write_config(base, sheet=sheet, alerts=alerts, **sections)
        agent = make_agent(cfg)
        agents.append(agent)
        return Lab(base, agent, slack, smtp)

    yield build
    for a in agents:
        a.close()


def assert_alerted_once(
    lab: Lab, *, title: str, subject: str, run_url: str, reason: str
) -> tuple[dict[str, Any], EmailMessage]:
    """Exactly one Slack post and one e-mail about ``subject``, each with title, run link and reason."""
    posts = [p for p in lab.posts() if subject in header(p)]
    assert len(posts) == 1, [header(p) for p in lab.posts()]
    post = posts[0]
    assert title in header(post) and subject in header(post)
    assert button_url(post) == run_url
    assert run_url in post["text"]  # the notification fallback carries the link too
    assert reason in post_text(post), post_text(post)
    assert post["channel"] == "#slide-scanning"

    mails = [m for m in lab.mails() if subject in str(m["Subject"])]
    assert len(mails) == 1, [str(m["Subject"]) for m in lab.mails()]
    mail = mails[0]
    assert title in str(mail["Subject"])
    body = mail_text(mail)
    assert f"Prefect run: {run_url}" in body and reason in body
    assert set(lab.smtp.envelopes[-1][1]) == {"lab@example.org", "pathology@example.org"}
    return post, mail


def test_smtp_ca_file_is_what_lets_the_agent_trust_a_private_smtp_certificate(
    tmp_path: Path, smtp: SmtpServer
) -> None:
    from scanner_agent.config import load_config
    from scanner_agent.core.errors import ConfigError
    from scanner_agent.service.bootstrap import build_channels

    def email_channel(**alerts: Any) -> Any:
        cfg = write_config(
            tmp_path / "cfg",
            alerts={
                "email_to": ["lab@example.org"],
                "email_from": "scanner@example.org",
                "smtp_host": "127.0.0.1",
                "smtp_port": smtp.port,
                "smtp_username": SMTP_USER,
                **alerts,
            },
        )
        [channel] = build_channels(load_config(cfg))
        return channel

    untrusted = email_channel().check()
    assert (
        len(untrusted) == 1
        and "TLS with SMTP server 127.0.0.1" in untrusted[0]
        and "certificate" in untrusted[0]
    )
    # Trusted: TLS goes through and the server gets as far as the login (no password was configured here).
    [trusted] = email_channel(smtp_ca_file=str(smtp.cert_path)).check()
    assert "rejected the login for user 'scanner-agent'" in trusted
    with pytest.raises(
        ConfigError, match=r"alerts\.smtp_ca_file: cannot load CA certificates from .*missing\.pem"
    ):
        email_channel(smtp_ca_file=str(tmp_path / "missing.pem"))


# --------------------------------------------------------------------------------------------
# Every failure kind the pipeline produces


@dataclass
class Case:
    make: Callable[[Lab], Path]
    subject: str  # barcode, or the file name when there is none
    barcode: str | None
    title: str
    reason: str
    state: str
    sheet: str = SAMPLE_SHEET


def _collision(lab: Lab) -> Path:
    taken = lab.storage / "Prec01" / "Run-2" / "Prec01_Run-2_P1_Cardinal_407871.svs"
    taken.parent.mkdir(parents=True)
    taken.write_bytes(b"someone else's slide")
    return lab.scan("407871_a.svs", barcode="407871")


def _no_storage(lab: Lab) -> Path:
    src = lab.scan("754788_a.svs", barcode="754788")
    shutil.rmtree(lab.storage)  # the share is not mounted
    return src


CASES = {
    "unknown_barcode": Case(
        lambda lab: lab.scan("999999_a.svs", barcode="999999"),
        "999999",
        "999999",
        "Unknown barcode",
        "No row for barcode 999999",
        "held",
    ),
    "incomplete_row": Case(
        lambda lab: lab.scan("111111_a.svs", barcode="111111"),
        "111111",
        "111111",
        "Incomplete sheet row",
        "REQUIRED column(s) 'Panel'",
        "held",
        sheet=SAMPLE_SHEET + "111111,Prec01,Run 2,,Cardinal,,,\n",
    ),
    "no_barcode": Case(
        lambda lab: lab.scan("slide_nolabel.svs"),
        "slide_nolabel.svs",
        None,
        "No barcode found",
        "No barcode for",
        "quarantined",
    ),
    "corrupt_slide": Case(
        lambda lab: write_corrupt(lab.watch / "317335_a.svs", "garbage"),
        "317335",
        "317335",
        "Unreadable slide",
        "317335_a.svs",
        "quarantined",
    ),
    "destination_collision": Case(
        _collision, "407871", "407871", "Name already taken", "already holds a different scan", "failed"
    ),
    "storage_unavailable": Case(
        _no_storage,
        "754788",
        "754788",
        "Storage unavailable",
        "does not exist (is the share mounted?)",
        "failed",
    ),
}


@pytest.mark.parametrize(
    "kind",
    [
        *[k for k in CASES if k != "storage_unavailable"],
        # Move Image retries a transient storage failure (5 s, then 30 s) before it alerts.
        pytest.param("storage_unavailable", marks=pytest.mark.slow),
    ],
)
def test_each_failure_reaches_slack_and_email_once_with_run_link_barcode_and_reason(
    kind: str, make_lab: Callable[..., Lab], caplog: pytest.LogCaptureFixture
) -> None:
    case = CASES[kind]
    lab = make_lab(sheet=case.sheet)
    caplog.set_level(logging.DEBUG)
    src = case.make(lab)

    [rec] = process(lab.agent, src)

    assert rec.state == case.state, rec.reason
    assert rec.kind == kind and rec.barcode == case.barcode
    post, mail = assert_alerted_once(
        lab, title=case.title, subject=case.subject, run_url=lab.run_url(rec), reason=case.reason
    )
    if case.barcode:
        assert f"*Barcode*\\n{case.barcode}" in post_text(post) and f"Barcode: {case.barcode}" in mail_text(
            mail
        )
    assert len(lab.posts()) == 1 and len(lab.mails()) == 1  # nothing else was said
    assert lab.smtp.logins == [(SMTP_USER, True)]  # logged in, after STARTTLS verified with smtp_ca_file
    if kind == "unknown_barcode":  # for the report: what a Slack alert looks like
        print("\nSLACK BLOCKS:\n" + json.dumps(post["blocks"], indent=2, ensure_ascii=False))
    if case.state == "quarantined":
        assert not src.exists() and "quarantined_to" in rec.details
        assert Path(rec.details["quarantined_to"]).exists()  # kept, never lost
    elif case.state == "failed":
        assert src.exists()  # the scan stays on the scanner
    if kind == "storage_unavailable":  # an unmounted share is never replaced by a local folder
        assert not lab.storage.exists() and rec.next_check is not None  # and it is retried later
    for secret in (TOKEN, SMTP_PASSWORD):
        assert secret not in caplog.text and secret not in post_text(post) and secret not in mail_text(mail)


# --------------------------------------------------------------------------------------------
# QC failure: stored, and alerted with the thumbnail


def test_qc_failure_is_stored_and_alerted_with_thumbnail_uploaded(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab()
    src = lab.scan("465551_a.svs", barcode="465551", blurred=True)

    [rec] = process(lab.agent, src)

    assert rec.state == "stored" and Path(rec.dest).exists() and not src.exists()
    assert "qc_failed" in rec.details
    post, mail = assert_alerted_once(
        lab, title="Slide QC failed", subject="465551", run_url=lab.run_url(rec), reason="out of focus"
    )
    # files_upload_v2: get an upload URL, POST the bytes there, then share into the alert's thread.
    [get_url] = lab.slack.calls_to("files.getUploadURLExternal", ok_only=True)
    [complete] = lab.slack.calls_to("files.completeUploadExternal", ok_only=True)
    assert get_url.payload["filename"] == "465551-thumbnail.png"
    [(file_id, png)] = lab.slack.uploads.items()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and int(get_url.payload["length"]) == len(png)
    shared = lab.slack.shared[file_id]
    assert shared["channel_id"] == CHANNEL_ID
    assert str(shared["thread_ts"]).startswith("1700000000.")  # in the alert's thread (the server's ts)
    assert complete.payload["channel_id"] == CHANNEL_ID
    # The e-mail carries the same thumbnail as an attachment.
    [att] = list(mail.iter_attachments())
    assert att.get_content_type() == "image/png" and att.get_content() == png


# --------------------------------------------------------------------------------------------
# Dedupe, recovery, dead channels, timers


def test_same_unknown_barcode_again_within_the_window_is_not_realerted(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab()
    src = lab.scan("999999_a.svs", barcode="999999")
    [first] = process(lab.agent, src)
    [again] = process(lab.agent, src)  # held -> ready -> another run that meets the same problem
    assert first.state == again.state == "held"
    assert again.attempts == 2 and again.flow_run_id == first.flow_run_id  # one Prefect run per scan
    assert_alerted_once(
        lab,
        title="Unknown barcode",
        subject="999999",
        run_url=lab.run_url(first),
        reason="No row for barcode 999999",
    )
    assert len(lab.posts()) == 1 and len(lab.mails()) == 1


def test_held_scan_released_later_announces_one_recovery(make_lab: Callable[..., Lab]) -> None:
    from scanner_agent.service.dispatcher import Dispatcher
    from scanner_agent.service.maintenance import recheck_due

    lab = make_lab()
    src = lab.scan("999999_a.svs", barcode="999999")
    [held] = process(lab.agent, src)
    assert held.state == "held" and held.kind == "unknown_barcode"

    sheet = lab.base / "sheet.csv"
    sheet.write_text(sheet.read_text() + "999999,Prec01,Run 2,P1,Cardinal,,,\n")
    dispatcher = Dispatcher(lab.agent, 1)
    dispatcher.start()
    try:
        assert recheck_due(lab.agent, dispatcher, time.time() + 5) == 1
        assert dispatcher.wait_idle(120)
        assert recheck_due(lab.agent, dispatcher, time.time() + 10) == 0
    finally:
        dispatcher.stop(30)
    stored = lab.agent.journal.get(held.id)
    assert stored is not None and stored.state == "stored", stored and stored.reason

    recoveries = [p for p in lab.posts() if "stored after" in p["text"]]
    assert len(recoveries) == 1
    rec_post = recoveries[0]
    assert "999999 stored after" in rec_post["text"] and " held" in rec_post["text"]
    # It resolves the very alert people saw ("Unknown barcode 999999"), and links the run that stored it.
    assert header(rec_post).startswith("✅ Resolved: Unknown barcode 999999")
    assert button_url(rec_post) == lab.run_url(stored)
    mails = [m for m in lab.mails() if str(m["Subject"]).startswith("Re: ")]  # a reply to the problem's
    assert len(mails) == 1 and "999999 stored after" in mail_text(mails[0])
    assert len(lab.posts()) == 2 and len(lab.mails()) == 2  # the problem, then its recovery


def test_slack_down_email_still_arrives_and_slack_gets_it_on_retry(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab()
    lab.slack.go_down("refuse")
    src = lab.scan("999999_a.svs", barcode="999999")
    [rec] = process(lab.agent, src)
    assert rec.state == "held"

    [mail] = lab.mails()
    assert "Unknown barcode 999999" in str(mail["Subject"]) and lab.run_url(rec) in mail_text(mail)
    outbox = lab.agent.alerter.outbox
    assert outbox is not None and outbox.pending_count("slack") == 1 and outbox.pending_count("email") == 0

    lab.slack.come_back()
    assert lab.agent.alerter.retry_pending() == 0  # backing off: not due yet
    # Time passes (the Alerter's injectable clock): the queued alert falls due.
    real_clock = lab.agent.alerter.clock
    lab.agent.alerter.clock = lambda: real_clock() + 3600
    assert lab.agent.alerter.retry_pending() == 1
    assert lab.agent.alerter.retry_pending() == 0
    assert outbox.pending_count() == 0

    [post] = lab.posts()
    assert "Unknown barcode 999999" in header(post) and button_url(post) == lab.run_url(rec)
    assert "*Raised*" in post_text(post)  # a late alert says when it was raised
    assert len(lab.mails()) == 1  # e-mail is not sent twice


def test_held_too_long_is_alerted_once_by_the_slow_timers(
    make_lab: Callable[..., Lab], monkeypatch: pytest.MonkeyPatch
) -> None:
    from scanner_agent.service.maintenance import slow_timers

    # [sheet] keys come from the environment here: the harness's ``sheet`` argument is the CSV text.
    monkeypatch.setenv("SCANNER_AGENT_SHEET__HOLD_ALERT_HOURS", "0.0001")
    lab = make_lab()
    assert lab.agent.cfg.sheet.hold_alert_hours == 0.0001
    src = lab.scan("999999_a.svs", barcode="999999")
    [rec] = process(lab.agent, src)
    assert rec.state == "held"

    slow_timers(lab.agent, time.time() + 2)
    slow_timers(lab.agent, time.time() + 4)

    posts = [p for p in lab.posts() if "held too long" in header(p)]
    assert len(posts) == 1, [header(p) for p in lab.posts()]
    assert "999999" in header(posts[0]) and button_url(posts[0]) == lab.run_url(rec)
    assert (
        "999999_a.svs has been held for" in posts[0]["text"]
        and "No row for barcode 999999" in posts[0]["text"]
    )
    mails = [m for m in lab.mails() if "held too long" in str(m["Subject"])]
    assert len(mails) == 1 and lab.run_url(rec) in mail_text(mails[0])
    assert len(lab.posts()) == 2 and len(lab.mails()) == 2  # unknown barcode, then held too long


def _health(alive: bool, error: str | None = None) -> Any:
    from scanner_agent.watch import WatcherHealth

    return WatcherHealth(
        observer="inotify",
        alive=alive,
        watching_since=None if not alive else time.time(),
        last_full_scan=None,
        last_error=error,
        restarts=0,
        pending=0,
    )


def test_watcher_unhealthy_is_alerted_once_then_recovered_once(make_lab: Callable[..., Lab]) -> None:
    from scanner_agent.service.daemon import Daemon

    lab = make_lab()
    daemon = Daemon(lab.agent)
    watch = str(lab.agent.cfg.scanner.watch)

    daemon._on_watcher_health(_health(False, "watch folder vanished (share unmounted?)"))
    daemon._on_watcher_health(_health(False, "watch folder vanished (share unmounted?)"))  # still down
    down = lab.posts()
    assert len(down) == 1 and len(lab.mails()) == 1
    assert "Scanner folder watch unhealthy on Cardinal" in header(down[0])
    assert "watch folder vanished" in down[0]["text"] and watch in post_text(down[0])
    assert "stopped" in str(lab.mails()[0]["Subject"]) or "unhealthy" in str(lab.mails()[0]["Subject"])

    daemon._on_watcher_health(_health(True, "watch folder vanished (share unmounted?)"))
    daemon._on_watcher_health(_health(True))
    posts, mails = lab.posts(), lab.mails()
    assert len(posts) == 2 and len(mails) == 2
    assert header(posts[1]).startswith("✅ Resolved: Scanner folder watch unhealthy")
    assert "running again" in posts[1]["text"] and "running again" in mail_text(mails[1])
    assert lab.agent.journal.health()["watcher_alive"] is True
