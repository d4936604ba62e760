"""Alerts end to end: the real slack_sdk and smtplib against real servers on 127.0.0.1."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from scanner_agent.alerts import (
    KINDS,
    Alert,
    AlertDeliveryError,
    Alerter,
    Channel,
    EmailChannel,
    SlackChannel,
)
from scanner_agent.core import errors
from scanner_agent.journal import AlertOutbox
from tests.servers.slack_api import SlackApiServer
from tests.servers.smtp import SmtpServer

# The ``slack`` and ``smtp`` fixtures, with this module's credentials (TOKEN, SMTP_USER, SMTP_PASSWORD).
pytest_plugins = ["tests.servers.fixtures"]

TOKEN = "xoxb-1111-2222-SECRETtokenVALUE"
SMTP_USER = "scanner-agent"
SMTP_PASSWORD = "p4ss-W0rd-never-logged"
RUN_URL = "http://prefect.lab.test:4200/runs/flow-run/0b9e6c1e-7f1a-4c55-9a43-2f6d3c1d8e11"


class Clock:
    """An injectable clock the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def png_bytes() -> bytes:
    img = Image.new("RGB", (64, 48), (240, 240, 240))
    for x in range(10, 50):
        for y in range(8, 40):
            img.putpixel((x, y), (200 - x, 120 + y, 190))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def unknown_barcode_alert(**kw: object) -> Alert:
    base: dict[str, object] = {
        "kind": "unknown_barcode",
        "scanner": "Cardinal",
        "barcode": "545891",
        "message": "Barcode 545891 (from /scans/Cardinal/545891.svs) has no row in the metadata sheet.",
        "file": "/scans/Cardinal/545891.svs",
        "run_url": RUN_URL,
        "details": {"held for": "3 h"},
    }
    base.update(kw)
    return Alert(**base)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[AlertOutbox]:
    box = AlertOutbox(tmp_path / "journal.sqlite")
    yield box
    box.close()


def slack_channel(
    slack: SlackApiServer, *, token: str = TOKEN, channel: str = "#slide-scanning", retries: int = 2
) -> SlackChannel:
    return SlackChannel(token, channel, api_url=slack.url, timeout=5, max_rate_limit_retries=retries)


def email_channel(smtp: SmtpServer, *, password: str = SMTP_PASSWORD) -> EmailChannel:
    return EmailChannel(
        smtp.host,
        smtp.port,
        sender="scanner-agent@lab.test",
        recipients=["histology@lab.test"],
        username=SMTP_USER,
        password=password,
        timeout=5,
        ssl_context=smtp.client_ssl_context(),
    )


# ---------------------------------------------------------------------------------------------
# What a person reads


def test_slack_message_has_barcode_reason_action_and_run_link(
    slack: SlackApiServer, outbox: AlertOutbox, clock: Clock
) -> None:
    alerter = Alerter([slack_channel(slack)], outbox, clock=clock)
    alert = unknown_barcode_alert()

    assert alerter.send(alert) == {"slack": "sent"}

    [call] = slack.calls_to("chat.postMessage")
    assert call.headers["Authorization"] == f"Bearer {TOKEN}"
    assert call.headers["Content-Type"].startswith("application/json")
    p = call.payload
    assert p["channel"] == "#slide-scanning"
    for needle in ("545891", "has no row in the metadata sheet", KINDS["unknown_barcode"].action, RUN_URL):
        assert needle in p["text"]
    blocks = p["blocks"]
    assert blocks[0]["type"] == "header" and "Unknown barcode 545891 on Cardinal" in blocks[0]["text"]["text"]
    everything = json.dumps(blocks)
    assert "has no row in the metadata sheet" in everything
    assert "*What to do*" in everything and "Add a row for this barcode" in everything
    fields = [f["text"] for b in blocks if "fields" in b for f in b["fields"]]
    assert "*Scanner*\nCardinal" in fields and "*Barcode*\n545891" in fields
    assert "*held for*\n3 h" in fields
    [button] = [e for b in blocks if b["type"] == "actions" for e in b["elements"]]
    assert button["url"] == RUN_URL and button["text"]["text"] == "Open run in Prefect"


def test_slack_thumbnail_goes_through_upload_url_into_the_alert_thread(
    slack: SlackApiServer, outbox: AlertOutbox
) -> None:
    png = png_bytes()
    alerter = Alerter([slack_channel(slack)], outbox)

    assert alerter.send(unknown_barcode_alert(kind="qc_failed", thumbnail_png=png)) == {"slack": "sent"}

    [post] = slack.calls_to("chat.postMessage", ok_only=True)
    [get_url] = slack.calls_to("files.getUploadURLExternal")
    assert get_url.payload["length"] == str(len(png)) and get_url.payload["filename"].endswith(".png")
    [(file_id, received)] = slack.uploads.items()
    assert received == png
    shared = slack.shared[file_id]
    # files_upload_v2 needs the channel ID; the name from the config was resolved via postMessage's reply
    assert shared["channel_id"] == "C0SLIDES"
    assert shared["thread_ts"] is not None and shared["thread_ts"].startswith("1700000000.")
    assert post.method == "chat.postMessage"


def test_email_has_plain_html_and_the_whole_thumbnail(smtp: SmtpServer, outbox: AlertOutbox) -> None:
    png = png_bytes()
    alerter = Alerter([email_channel(smtp)], outbox)

    assert alerter.send(unknown_barcode_alert(thumbnail_png=png)) == {"email": "sent"}

    [msg] = smtp.messages
    assert msg["Subject"] == "Unknown barcode 545891 on Cardinal"
    assert smtp.envelopes == [("scanner-agent@lab.test", ["histology@lab.test"])]
    plain = msg.get_body(preferencelist=("plain",)).get_content()
    html = msg.get_body(preferencelist=("html",)).get_content()
    for part in (plain, html):
        assert "545891" in part and "has no row in the metadata sheet" in part
        assert "Add a row for this barcode" in part
    assert RUN_URL in plain
    assert f'href="{RUN_URL}"' in html
    [attachment] = list(msg.iter_attachments())
    assert attachment.get_content_type() == "image/png"
    assert attachment.get_content() == png
    assert smtp.logins == [(SMTP_USER, True)]


# ---------------------------------------------------------------------------------------------
# When things go wrong


def test_rate_limited_call_is_retried_after_retry_after_and_then_succeeds(
    slack: SlackApiServer, outbox: AlertOutbox
) -> None:
    slack.fail_next(1, status=429, retry_after=1)
    alerter = Alerter([slack_channel(slack)], outbox)

    assert alerter.send(unknown_barcode_alert()) == {"slack": "sent"}

    statuses = [c.status for c in slack.calls_to("chat.postMessage")]
    assert statuses == [429, 200]
    assert outbox.pending_count() == 0


def test_rate_limit_that_does_not_end_queues_the_alert(slack: SlackApiServer, outbox: AlertOutbox) -> None:
    slack.fail_next(10, status=429, retry_after=0)
    alerter = Alerter([slack_channel(slack, retries=1)], outbox)

    assert alerter.send(unknown_barcode_alert()) == {"slack": "queued"}
    assert len(slack.calls_to("chat.postMessage")) == 2
    [row] = outbox.pending_summary()
    assert "ratelimited" in str(row["last_error"])


def test_long_retry_after_queues_instead_of_stalling_the_scan(
    slack: SlackApiServer, outbox: AlertOutbox, clock: Clock
) -> None:
    slack.fail_next(1, status=429, retry_after=600)
    alerter = Alerter([slack_channel(slack)], outbox, clock=clock)

    assert alerter.send(unknown_barcode_alert()) == {"slack": "queued"}
    assert len(slack.calls_to("chat.postMessage")) == 1  # no 10-minute sleep inside send()
    clock.advance(61)
    assert alerter.retry_pending() == 1


def test_slack_down_email_still_goes_and_slack_gets_it_once_back(
    slack: SlackApiServer, smtp: SmtpServer, outbox: AlertOutbox, clock: Clock
) -> None:
    alerter = Alerter([slack_channel(slack), email_channel(smtp)], outbox, clock=clock)
    slack.go_down("refuse")

    assert alerter.send(unknown_barcode_alert()) == {"slack": "queued", "email": "sent"}
    assert len(smtp.messages) == 1
    assert outbox.pending_count() == 1
    [row] = outbox.pending_summary()
    assert row["channel"] == "slack" and "could not reach" in str(row["last_error"])

    slack.come_back()
    assert alerter.retry_pending() == 0  # not due yet: retries back off
    clock.advance(61)
    assert alerter.retry_pending() == 1

    [post] = slack.calls_to("chat.postMessage")
    assert "545891" in post.payload["text"] and RUN_URL in post.payload["text"]
    assert "*Raised*" in json.dumps(post.payload["blocks"])  # a late alert says when it happened
    assert outbox.pending_count() == 0
    assert len(smtp.messages) == 1  # e-mail is not re-sent
    # Delivered late still counts as sent: the same alert now is a repeat.
    assert alerter.send(unknown_barcode_alert()) == {"slack": "suppressed", "email": "suppressed"}


def test_failing_channel_is_not_hammered_while_it_backs_off(
    slack: SlackApiServer, outbox: AlertOutbox, clock: Clock
) -> None:
    alerter = Alerter([slack_channel(slack)], outbox, clock=clock)
    slack.go_down("500")

    assert alerter.send(unknown_barcode_alert(barcode="1")) == {"slack": "queued"}
    tried = len(slack.calls)
    assert tried >= 1
    assert alerter.send(unknown_barcode_alert(barcode="2")) == {"slack": "queued"}
    assert alerter.send(unknown_barcode_alert(barcode="2")) == {"slack": "queued"}  # not queued twice
    assert len(slack.calls) == tried  # the burst went to the outbox without new attempts
    assert outbox.pending_count() == 2

    slack.come_back()
    clock.advance(61)
    assert alerter.retry_pending() == 2
    texts = [c.payload["text"] for c in slack.calls_to("chat.postMessage", ok_only=True)]
    assert [("Unknown barcode 1" in t, "Unknown barcode 2" in t) for t in texts] == [
        (True, False),
        (False, True),
    ]


def test_smtp_down_queues_email_and_slack_still_gets_it(
    slack: SlackApiServer, smtp: SmtpServer, outbox: AlertOutbox, clock: Clock
) -> None:
    alerter = Alerter([slack_channel(slack), email_channel(smtp)], outbox, clock=clock)
    smtp.stop()

    assert alerter.send(unknown_barcode_alert()) == {"slack": "sent", "email": "queued"}
    [row] = outbox.pending_summary()
    assert f"could not reach SMTP server 127.0.0.1:{smtp.port}" in str(row["last_error"])

    smtp.start()
    clock.advance(61)
    assert alerter.retry_pending() == 1
    assert len(smtp.messages) == 1 and "545891" in smtp.messages[0]["Subject"]


def test_smtp_login_refused_says_so_without_the_password(smtp: SmtpServer, outbox: AlertOutbox) -> None:
    channel = email_channel(smtp, password="wrong-" + SMTP_PASSWORD)

    with pytest.raises(AlertDeliveryError) as info:
        channel.send(unknown_barcode_alert())
    text = str(info.value)
    assert (
        f"rejected the login for user '{SMTP_USER}'" in text
        and "check the SMTP username and password" in text
    )
    assert SMTP_PASSWORD not in text
    assert smtp.messages == []

    assert Alerter([channel], outbox).send(unknown_barcode_alert()) == {"email": "queued"}
    assert SMTP_PASSWORD not in json.dumps(outbox.pending_summary())


def test_unknown_slack_channel_is_a_clear_queued_failure(slack: SlackApiServer, outbox: AlertOutbox) -> None:
    alerter = Alerter([slack_channel(slack, channel="#no-such-channel")], outbox)
    assert alerter.send(unknown_barcode_alert()) == {"slack": "queued"}
    [row] = outbox.pending_summary()
    assert "channel_not_found" in str(row["last_error"]) and "#no-such-channel" in str(row["last_error"])


class ExplodingChannel:
    """A channel whose code has a bug: Alerter must still never raise."""

    name = "broken"

    def send(self, alert: Alert) -> None:
        raise RuntimeError("bug in a channel")

    def check(self) -> list[str]:
        raise RuntimeError("bug in a channel")


def test_send_never_raises_and_other_channels_still_get_it(smtp: SmtpServer, outbox: AlertOutbox) -> None:
    broken = ExplodingChannel()
    assert isinstance(broken, Channel)
    alerter = Alerter([broken, email_channel(smtp)], outbox)
    assert alerter.send(unknown_barcode_alert()) == {"broken": "queued", "email": "sent"}
    assert alerter.check() == ["broken: check failed: RuntimeError"]

    no_outbox = Alerter([ExplodingChannel()], None)
    assert no_outbox.send(unknown_barcode_alert()) == {"broken": "failed"}
    assert no_outbox.retry_pending() == 0


# ---------------------------------------------------------------------------------------------
# Dedupe and recoveries


def test_same_alert_is_not_repeated_within_the_window_but_is_after_it(
    slack: SlackApiServer, smtp: SmtpServer, tmp_path: Path, clock: Clock
) -> None:
    db = tmp_path / "journal.sqlite"
    channels: list[Channel] = [slack_channel(slack), email_channel(smtp)]
    alerter = Alerter(channels, AlertOutbox(db), repeat_after_seconds=3600, clock=clock)

    assert alerter.send(unknown_barcode_alert()) == {"slack": "sent", "email": "sent"}
    clock.advance(1800)
    assert alerter.send(unknown_barcode_alert()) == {"slack": "suppressed", "email": "suppressed"}
    # A different barcode is a different alert.
    assert alerter.send(unknown_barcode_alert(barcode="545892")) == {"slack": "sent", "email": "sent"}

    # A restart (new outbox on the same file) remembers what was sent.
    restarted = Alerter(channels, AlertOutbox(db), repeat_after_seconds=3600, clock=clock)
    assert restarted.send(unknown_barcode_alert()) == {"slack": "suppressed", "email": "suppressed"}

    clock.advance(1801)
    assert restarted.send(unknown_barcode_alert()) == {"slack": "sent", "email": "sent"}
    assert len(slack.calls_to("chat.postMessage")) == 3
    assert len(smtp.messages) == 3


def test_recovery_is_announced_once_per_episode(
    slack: SlackApiServer, outbox: AlertOutbox, clock: Clock
) -> None:
    alerter = Alerter([slack_channel(slack)], outbox, clock=clock)
    held = unknown_barcode_alert(kind="held_too_long")
    stored = unknown_barcode_alert(
        kind="held_too_long",
        recovery=True,
        message="545891 stored after 3 h held.",
        details={"held for": "3 h"},
    )

    assert alerter.send(held) == {"slack": "sent"}
    clock.advance(10)
    assert alerter.send(stored) == {"slack": "sent"}
    clock.advance(10)
    assert alerter.send(stored) == {"slack": "suppressed"}
    clock.advance(10_000)
    assert alerter.send(stored) == {"slack": "suppressed"}  # once, not once per window

    # The problem comes back within the window: it was resolved, so this is news again.
    clock.advance(10)
    assert alerter.send(held) == {"slack": "sent"}
    clock.advance(10)
    assert alerter.send(stored) == {"slack": "sent"}

    posts = slack.calls_to("chat.postMessage")
    assert len(posts) == 4
    assert (
        posts[1].payload["blocks"][0]["text"]["text"].startswith("✅ Resolved: Scan held too long for 545891")
    )
    assert KINDS["recovered"].action in posts[1].payload["text"]


def test_generic_recovered_kind_is_sent_once(
    slack: SlackApiServer, outbox: AlertOutbox, clock: Clock
) -> None:
    alerter = Alerter([slack_channel(slack)], outbox, clock=clock)
    back = Alert(kind="recovered", scanner="Cardinal", message="Storage share is writable again.")
    assert back.recovery and back.title == "Recovered on Cardinal"
    assert alerter.send(back) == {"slack": "sent"}
    clock.advance(100_000)
    assert alerter.send(back) == {"slack": "suppressed"}


# ---------------------------------------------------------------------------------------------
# check() and secrets


def test_check_uses_auth_test_and_smtp_login_without_sending(
    slack: SlackApiServer, smtp: SmtpServer, outbox: AlertOutbox
) -> None:
    alerter = Alerter([slack_channel(slack), email_channel(smtp)], outbox)
    assert alerter.check() == []
    assert [c.method for c in slack.calls] == ["auth.test"]
    assert smtp.messages == [] and smtp.logins == [(SMTP_USER, True)]

    bad = Alerter([slack_channel(slack, token="xoxb-wrong"), email_channel(smtp, password="nope")], outbox)
    problems = bad.check()
    assert len(problems) == 2
    assert problems[0].startswith("slack: ") and "invalid_auth" in problems[0] and "token" in problems[0]
    assert problems[1].startswith("email: ") and "rejected the login" in problems[1]
    assert smtp.messages == []


def test_secrets_never_reach_logs_errors_repr_or_outbox(
    slack: SlackApiServer, smtp: SmtpServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    db = tmp_path / "journal.sqlite"
    outbox = AlertOutbox(db)
    good = Alerter([slack_channel(slack), email_channel(smtp)], outbox)
    wrong_slack = slack_channel(slack, token=TOKEN + "-revoked")
    wrong_mail = email_channel(smtp, password=SMTP_PASSWORD + "-old")
    bad = Alerter([wrong_slack, wrong_mail], outbox)

    results = [
        good.send(unknown_barcode_alert(thumbnail_png=png_bytes())),
        bad.send(unknown_barcode_alert(barcode="1")),
        good.check(),
        bad.check(),
    ]
    slack.go_down("500")
    results.append(good.send(unknown_barcode_alert(barcode="2")))
    smtp.stop()
    results.append(good.check())
    outbox.close()

    assert "invalid_auth" in caplog.text  # the failures were logged...
    visible = (
        caplog.text
        + repr(results)
        + repr(good.channels)
        + repr(bad.channels)
        + db.read_bytes().decode("utf-8", "replace")
    )
    for secret in (TOKEN, SMTP_PASSWORD):  # ...without the secrets
        assert secret not in visible


# ---------------------------------------------------------------------------------------------
# The model and the outbox


def test_kinds_are_all_there_and_agree_with_the_errors() -> None:
    expected = {
        "unknown_barcode",
        "incomplete_row",
        "sheet_malformed",
        "held_too_long",
        "no_barcode",
        "corrupt_slide",
        "destination_collision",
        "storage_unavailable",
        "storage_full",
        "source_changed",
        "sheet_unreachable",
        "watcher_unhealthy",
        "missing_rescan",
        "qc_failed",
        "rescan_requested",
        "rescan_received",
        "recovered",
        "scan_error",
    }
    assert expected <= set(KINDS)
    for cls in (
        errors.UnknownBarcode,
        errors.IncompleteRow,
        errors.SheetMalformed,
        errors.NoBarcode,
        errors.CorruptSlide,
        errors.DestinationCollision,
        errors.StorageUnavailable,
        errors.SourceChanged,
        errors.SheetUnavailable,
        errors.ScanError,
    ):
        assert KINDS[cls.kind].action == cls.default_action


def test_titles_and_keys() -> None:
    a = unknown_barcode_alert()
    assert a.title == "Unknown barcode 545891 on Cardinal"
    assert a.action == errors.UnknownBarcode.default_action
    assert (
        Alert(kind="no_barcode", scanner="Cardinal", message="m", file="/scans/x/slide_17.svs").title
        == "No barcode found in slide_17.svs on Cardinal"
    )
    assert Alert(kind="storage_full", scanner="Cardinal", message="m").title == "Storage full on Cardinal"
    assert (
        Alert(kind="something_new", scanner="C", message="m", barcode="9").title == "Something new for 9 on C"
    )
    assert a.key() != unknown_barcode_alert(recovery=True).key()
    assert a.key() != unknown_barcode_alert(scanner="Other").key()

    err = errors.IncompleteRow(
        "Row 14 (barcode 545891) has empty REQUIRED column 'Panel'.",
        barcode="545891",
        path="/scans/545891.svs",
        missing=["Panel"],
    )
    from_err = Alert.from_error(err, scanner="Cardinal", run_url=RUN_URL)
    assert from_err.kind == "incomplete_row" and from_err.file == "/scans/545891.svs"
    assert from_err.title == "Incomplete sheet row for 545891 on Cardinal"
    assert "'Panel'" in from_err.message and from_err.action == errors.IncompleteRow.default_action


def test_alert_round_trips_through_json_and_the_outbox(outbox: AlertOutbox) -> None:
    a = unknown_barcode_alert(thumbnail_png=png_bytes(), recovery=True, details={"held for": "3 h", "é": "ü"})
    assert Alert.from_json(a.to_json()) == a

    item = outbox.enqueue(a, "slack", "down", now=100.0, next_try=160.0)
    assert outbox.due(159.0) == []
    assert outbox.due(160.0) == [(item, "slack", a)]
    outbox.failed_again(item, "still down", 400.0)
    assert outbox.attempts(item) == 2 and outbox.due(399.0) == []
    assert outbox.pending_id(a.key(), "slack") == item and outbox.pending_count() == 1
    outbox.delivered(item)
    assert outbox.pending_count() == 0 and outbox.pending_id(a.key(), "slack") is None

    assert outbox.last_sent("k", "email") is None
    outbox.record_sent("k", "email", 5.0)
    outbox.record_sent("k", "email", 7.0)
    assert outbox.last_sent("k", "email") == 7.0


def test_outbox_shares_the_journal_file_without_touching_its_tables(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "journal.sqlite"
    journal = sqlite3.connect(db)
    journal.execute("PRAGMA journal_mode=WAL")
    journal.execute("CREATE TABLE scans (id INTEGER PRIMARY KEY, state TEXT)")
    journal.execute("INSERT INTO scans (state) VALUES ('held')")
    journal.commit()

    box = AlertOutbox(db)
    box.record_sent("k", "slack", 1.0)
    tables = {r[0] for r in journal.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {t for t in tables if t != "sqlite_sequence"} == {
        "scans",
        "alert_sent",
        "alert_pending",
        "alert_ref",
        "alert_digest",
    }
    assert journal.execute("SELECT state FROM scans").fetchall() == [("held",)]
    assert journal.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    box.close()
    journal.close()
