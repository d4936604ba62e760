"""Alerts that close their own loop, against the local Slack Web API and the local SMTP server.

A recovery updates its problem's Slack message to resolved (``chat.update``) and replies in its
thread with how and when; its e-mail is a reply (``In-Reply-To``/``References`` = the problem
e-mail's Message-ID, subject ``Re: ...``). Where the problem landed is kept in the journal's
outbox, so this holds across a restart. A message Slack will not update (deleted, not editable,
edit window closed) gets a new message instead; nothing is lost and nothing raises. The daily
digest goes to Slack once a day at ``[alerts] digest_time``, even across restarts.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from datetime import date, datetime
from datetime import time as dtime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from scanner_agent.alerts import Alert, Alerter, EmailChannel, SlackChannel
from scanner_agent.core.errors import ConfigError
from scanner_agent.journal import AlertOutbox
from scanner_agent.service.bootstrap import Services
from scanner_agent.testing.synthetic import write_corrupt, write_svs
from tests import test_alerts as alert_channels
from tests.clock import ManualClock as Clock
from tests.harness import SAMPLE_SHEET, make_agent, process, write_config
from tests.servers.slack_api import SlackApiServer
from tests.servers.smtp import SmtpServer

pytest_plugins = ["tests.servers.fixtures"]

TOKEN = "xoxb-loop-7777-SECRETslackTOKEN"
SMTP_USER = "scanner-agent"
SMTP_PASSWORD = "loop-Sm7p-pa55word-never-shown"
UI = "http://prefect.example.org:4200"
CHANNEL_ID = "C0SLIDES"
FIXTURE_V1 = Path(__file__).parent / "fixtures" / "journal-v1.sqlite"


def header(blocks: list[dict[str, Any]]) -> str:
    return str(blocks[0]["text"]["text"])


def everything(msg: dict[str, Any]) -> str:
    return str(msg.get("text") or "") + "\n" + json.dumps(msg.get("blocks") or [], ensure_ascii=False)


def mail_text(msg: EmailMessage) -> str:
    return msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def posts(slack: SlackApiServer) -> list[dict[str, Any]]:
    return [c.payload for c in slack.calls_to("chat.postMessage", ok_only=True)]


def slack_channel(slack: SlackApiServer) -> SlackChannel:
    return alert_channels.slack_channel(slack, token=TOKEN, retries=1)


def email_channel(smtp: SmtpServer) -> EmailChannel:
    return alert_channels.email_channel(smtp, password=SMTP_PASSWORD)


def held(**kw: Any) -> Alert:
    base: dict[str, Any] = {
        "kind": "unknown_barcode",
        "scanner": "Cardinal",
        "barcode": "545891",
        "file": "545891_a.svs",
        "message": "No row for barcode 545891 in the metadata sheet.",
        "run_url": f"{UI}/runs/flow-run/abc",
        "scan": "7",
    }
    base.update(kw)
    return Alert(**base)


def stored() -> Alert:
    return held(message="545891 stored after 3.0 h held", recovery=True, run_url=f"{UI}/runs/flow-run/abc")


# --------------------------------------------------------------------------------------------
# Done when: a held scan's Slack alert is updated to resolved when its row is filled (end to end)


@pytest.fixture
def lab_config(tmp_path: Path, smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    password_file = tmp_path / "smtp-password"
    password_file.write_text(SMTP_PASSWORD + "\n")
    os.chmod(password_file, 0o600)

    def build(
        slack: SlackApiServer,
        *,
        sheet: str = SAMPLE_SHEET,
        storage: dict[str, Any] | None = None,
        **alerts: Any,
    ) -> Path:
        return write_config(
            tmp_path / "lab",
            sheet=sheet,
            **({"storage": storage} if storage else {}),
            alerts={
                "slack_channel": "#slide-scanning",
                "slack_api_url": slack.url,
                "email_to": ["lab@example.org"],
                "email_from": "scanner@example.org",
                "smtp_host": "127.0.0.1",
                "smtp_port": smtp.port,
                "smtp_username": SMTP_USER,
                "smtp_password_file": str(password_file),
                "smtp_ca_file": str(smtp.cert_path),
                "prefect_ui_url": UI,
                **alerts,
            },
        )

    return build


def test_held_scans_slack_alert_is_updated_to_resolved_when_its_row_is_filled(
    lab_config: Callable[..., Path], slack: SlackApiServer, smtp: SmtpServer, prefect_api: str
) -> None:
    from scanner_agent.service.dispatcher import Dispatcher
    from scanner_agent.service.maintenance import recheck_due

    incomplete = "111111,Prec01,Run 2,,Cardinal,,,\n"  # REQUIRED Panel empty
    cfg = lab_config(slack, sheet=SAMPLE_SHEET + incomplete)
    agent = make_agent(cfg)
    try:
        src = write_svs(cfg.parent / "scanner" / "111111_a.svs", barcode="111111", width=1024, height=768)
        [rec] = process(agent, src)
        assert rec.state == "held" and rec.kind == "incomplete_row"
    finally:
        agent.close()  # a restart between the problem and its end: the reference is in the journal
    [problem] = posts(slack)
    assert header(problem["blocks"]).startswith("⚠️ Incomplete sheet row for 111111")
    assert len(smtp.messages) == 1

    sheet = cfg.parent / "sheet.csv"
    sheet.write_text(sheet.read_text().replace(incomplete, "111111,Prec01,Run 2,P1,Cardinal,,,\n"))
    agent = make_agent(cfg)
    dispatcher = Dispatcher(agent, 1)
    dispatcher.start()
    try:
        assert recheck_due(agent, dispatcher, time.time() + 5) == 1
        assert dispatcher.wait_idle(120)
    finally:
        dispatcher.stop(30)
    done = agent.journal.get(rec.id)
    agent.close()
    assert done is not None and done.state == "stored", done and done.reason

    # The original message now says it is resolved, how and when.
    [update] = slack.calls_to("chat.update", ok_only=True)
    assert update.payload["channel"] == CHANNEL_ID
    original_ts = update.payload["ts"]
    now = slack.message(original_ts)
    assert now is not None and now["edits"] == 1 and now["thread_ts"] is None
    assert header(now["blocks"]).startswith("✅ Resolved: Incomplete sheet row for 111111 on Cardinal")
    shown = everything(now)
    assert "111111 stored after" in shown and "REQUIRED column(s) 'Panel'" in shown  # how, and what it was
    assert "*Resolved " in shown  # and when
    # ... and a reply in its thread, in the thread only (the update already shows it in the channel).
    [reply] = slack.replies(original_ts)
    assert reply["reply_broadcast"] is False and "111111 stored after" in reply["text"]
    assert header(reply["blocks"]).startswith("✅ Resolved: Incomplete sheet row for 111111")
    assert len(posts(slack)) == 2  # the problem, and the reply in its thread: no third message

    # The e-mail is a reply to the first one.
    first_mail, recovery_mail = list(smtp.messages)
    assert recovery_mail["In-Reply-To"] == first_mail["Message-ID"]
    assert recovery_mail["References"] == first_mail["Message-ID"]
    assert str(recovery_mail["Subject"]) == f"Re: {first_mail['Subject']}"
    assert "111111 stored after" in mail_text(recovery_mail) and "Resolved:" in mail_text(recovery_mail)


def test_held_too_long_is_closed_with_the_hold_when_the_scan_stores(
    lab_config: Callable[..., Path], slack: SlackApiServer, smtp: SmtpServer, prefect_api: str
) -> None:
    from scanner_agent.service.maintenance import slow_timers

    incomplete = "222222,Prec01,Run 2,,Cardinal,,,\n"
    cfg = lab_config(slack, sheet=SAMPLE_SHEET + incomplete)
    agent = make_agent(cfg)
    try:
        src = write_svs(cfg.parent / "scanner" / "222222_a.svs", barcode="222222", width=1024, height=768)
        [rec] = process(agent, src)
        assert rec.state == "held"
        slow_timers(agent, time.time() + 30 * 86400)  # far past [sheet] hold_alert_hours
        titles = [header(p["blocks"]) for p in posts(slack)]
        assert len(titles) == 2 and any("held" in t.lower() and "too long" in t.lower() for t in titles), (
            titles
        )
        sheet = cfg.parent / "sheet.csv"
        sheet.write_text(sheet.read_text().replace(incomplete, "222222,Prec01,Run 2,P1,Cardinal,,,\n"))
        [rec] = process(agent, src)
        assert rec.state == "stored", rec.reason
    finally:
        agent.close()
    updated = [slack.message(c.payload["ts"]) for c in slack.calls_to("chat.update", ok_only=True)]
    assert len(updated) == 2  # the incomplete row and the held-too-long message, each closed once
    assert all(m is not None and header(m["blocks"]).startswith("✅ Resolved: ") for m in updated)


def test_storage_back_closes_the_storage_alert_of_the_scan_that_waited(
    lab_config: Callable[..., Path], slack: SlackApiServer, smtp: SmtpServer, prefect_api: str
) -> None:
    marker = ".scanner-agent-storage"
    cfg = lab_config(slack, storage={"marker_file": marker, "layout": "{Study}/{Experiment}"})
    agent = make_agent(cfg)
    try:
        src = write_svs(cfg.parent / "scanner" / "620995_a.svs", barcode="620995", width=1024, height=768)
        [rec] = process(agent, src)
        assert rec.state == "failed" and rec.kind == "storage_unavailable", rec.reason
        (cfg.parent / "storage" / marker).touch()  # the share is mounted again
        [rec] = process(agent, src)
        assert rec.state == "stored", rec.reason
    finally:
        agent.close()
    [problem] = [p for p in posts(slack) if not p.get("thread_ts")]
    assert header(problem["blocks"]).startswith("⚠️ ")
    [update] = slack.calls_to("chat.update", ok_only=True)
    now = slack.message(update.payload["ts"])
    assert now is not None and header(now["blocks"]).startswith("✅ Resolved: ")
    [reply] = slack.replies(update.payload["ts"])
    assert "620995 stored after an earlier failure (storage unavailable)" in reply["text"]
    first_mail, recovery_mail = list(smtp.messages)
    assert recovery_mail["In-Reply-To"] == first_mail["Message-ID"]


# --------------------------------------------------------------------------------------------
# Recovery through the Alerter: update + thread reply, e-mail reply, restart, no original


@pytest.fixture
def outbox_path(tmp_path: Path) -> Path:
    return tmp_path / "journal.sqlite"


def test_recovery_updates_the_slack_message_and_replies_by_email_after_a_restart(
    slack: SlackApiServer, smtp: SmtpServer, outbox_path: Path
) -> None:
    clock = Clock()
    box = AlertOutbox(outbox_path)
    alerter = Alerter([slack_channel(slack), email_channel(smtp)], box, clock=clock)
    assert alerter.send(held()) == {"slack": "sent", "email": "sent"}
    box.close()

    clock.now += 3 * 3600
    restarted = Alerter([slack_channel(slack), email_channel(smtp)], AlertOutbox(outbox_path), clock=clock)
    assert restarted.send(stored()) == {"slack": "sent", "email": "sent"}
    assert restarted.send(stored()) == {"slack": "suppressed", "email": "suppressed"}  # once
    assert restarted.outbox is not None
    assert restarted.outbox.ref_for(held().problem_key(), "slack") is None  # closed: reference dropped

    [problem_post, reply] = posts(slack)
    [update] = slack.calls_to("chat.update", ok_only=True)
    ts = update.payload["ts"]
    resolved = slack.message(ts) or {}
    assert resolved["edits"] == 1 and resolved["text"] != problem_post["text"]
    assert "545891 stored after 3.0 h held" in everything(resolved)
    assert reply["thread_ts"] == ts and reply["channel"] == CHANNEL_ID and reply["reply_broadcast"] is False
    first, second = smtp.messages
    assert second["In-Reply-To"] == first["Message-ID"] == second["References"]
    assert second["Subject"] == "Re: Unknown barcode 545891 on Cardinal"


def test_recovery_without_a_known_original_is_a_plain_new_message(
    slack: SlackApiServer, smtp: SmtpServer, outbox_path: Path
) -> None:
    """A problem alerted before references were kept (or by an older release): as before the upgrade."""
    alerter = Alerter([slack_channel(slack), email_channel(smtp)], AlertOutbox(outbox_path))
    assert alerter.send(held()) == {"slack": "sent", "email": "sent"}
    with sqlite3.connect(outbox_path) as db:
        db.execute("DELETE FROM alert_ref")
    assert alerter.send(stored()) == {"slack": "sent", "email": "sent"}
    assert slack.calls_to("chat.update") == []
    assert [p.get("thread_ts") for p in posts(slack)] == [None, None]
    assert header(posts(slack)[1]["blocks"]).startswith("✅ Resolved: Unknown barcode 545891")
    first, second = smtp.messages
    assert second["In-Reply-To"] is None and str(second["Subject"]).startswith("Resolved: Unknown barcode")


def test_outbox_of_an_older_release_gains_the_reference_table_with_its_rows_intact(tmp_path: Path) -> None:
    db = tmp_path / "cardinal.sqlite"
    shutil.copyfile(FIXTURE_V1, db)
    with sqlite3.connect(db) as c:
        before = c.execute("SELECT * FROM alert_pending ORDER BY id").fetchall()
    box = AlertOutbox(db)
    try:
        assert box.ref_for("anything", "slack") is None  # nothing known: recoveries post anew
        box.record_ref("k", "slack", {"channel": CHANNEL_ID, "ts": "1.2"}, held(), 5.0)
        ref, original = box.ref_for("k", "slack") or ({}, None)
        assert (
            ref == {"channel": CHANNEL_ID, "ts": "1.2"}
            and original is not None
            and original.barcode == "545891"
        )
    finally:
        box.close()
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT * FROM alert_pending ORDER BY id").fetchall() == before


# --------------------------------------------------------------------------------------------
# Bad input: Slack will not update the message


def test_deleted_message_gets_a_new_message_instead_and_nothing_is_lost(
    slack: SlackApiServer, outbox_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box = AlertOutbox(outbox_path)
    alerter = Alerter([slack_channel(slack)], box)
    alerter.send(held())
    [first] = slack.calls_to("chat.postMessage", ok_only=True)
    ts = next(iter(slack.state.messages))[1]
    slack.delete_message(ts)  # someone deleted the alert in Slack

    assert alerter.send(stored()) == {"slack": "sent"}  # no exception, not queued

    [update] = slack.calls_to("chat.update")
    assert update.payload["ts"] == ts
    # The thread is gone with its message (no replies): a plain post, in the channel.
    tried = [p for p in posts(slack) if "stored after" in p["text"]]
    assert [p.get("thread_ts") for p in tried] == [ts, None]  # its thread first, then the channel
    with slack.state.lock:
        kept = [m for m in slack.state.messages.values() if "stored after" in str(m["text"])]
    assert len(kept) == 1 and kept[0]["thread_ts"] is None  # exactly one recovery reached people
    assert tried[1]["channel"] == "#slide-scanning"
    assert header(kept[0]["blocks"]).startswith("✅ Resolved: Unknown barcode 545891")
    assert box.pending_count() == 0
    assert "message_not_found" in caplog.text and first.status == 200


@pytest.mark.parametrize("error", ["cant_update_message", "edit_window_closed"])
def test_message_slack_will_not_edit_gets_a_reply_shown_in_the_channel(
    error: str, slack: SlackApiServer, outbox_path: Path
) -> None:
    alerter = Alerter([slack_channel(slack)], AlertOutbox(outbox_path))
    alerter.send(held())
    ts = next(iter(slack.state.messages))[1]
    slack.refuse_updates(error)

    assert alerter.send(stored()) == {"slack": "sent"}

    assert [c.status for c in slack.calls_to("chat.update")] == [200]  # answered ok: false
    assert (slack.message(ts) or {})["edits"] == 0
    [reply] = slack.replies(ts)
    assert reply["reply_broadcast"] is True  # the new message: in the thread and in the channel
    assert "545891 stored after" in reply["text"]
    assert alerter.outbox is not None and alerter.outbox.pending_count() == 0


def test_slack_down_during_the_recovery_queues_it_and_the_retry_closes_the_message(
    slack: SlackApiServer, outbox_path: Path
) -> None:
    clock = Clock()
    alerter = Alerter([slack_channel(slack)], AlertOutbox(outbox_path), clock=clock)
    alerter.send(held())
    ts = next(iter(slack.state.messages))[1]
    slack.go_down("500")
    assert alerter.send(stored()) == {"slack": "queued"}
    slack.come_back()
    clock.now += 3600
    assert alerter.retry_pending() == 1
    assert (slack.message(ts) or {})["edits"] == 1
    assert len(slack.replies(ts)) == 1 and len(posts(slack)) == 2
    assert alerter.send(stored()) == {"slack": "suppressed"}


# --------------------------------------------------------------------------------------------
# The daily digest


def _at(hour: int, minute: int, day: date | None = None) -> float:
    return datetime.combine(day or date.today(), dtime(hour, minute)).timestamp()


def test_daily_digest_goes_to_slack_once_a_day_even_across_restarts(
    lab_config: Callable[..., Path], slack: SlackApiServer, prefect_api: str
) -> None:
    from scanner_agent.service.digest import send_digest_if_due

    cfg = lab_config(slack, digest_time="17:00")
    agent: Services = make_agent(cfg)
    try:
        watch = cfg.parent / "scanner"
        recs = process(
            agent,
            write_svs(watch / "620995_a.svs", barcode="620995", width=1024, height=768),
            write_svs(watch / "999999_a.svs", barcode="999999", width=1024, height=768),
            write_corrupt(watch / "317335_a.svs", "garbage"),
        )
        assert [r.state for r in recs] == ["stored", "held", "quarantined"]
        before = len(posts(slack))

        assert send_digest_if_due(agent, _at(16, 59)) is False  # not yet
        assert send_digest_if_due(agent, _at(17, 1)) is True
        assert send_digest_if_due(agent, _at(17, 2)) is False  # once
    finally:
        agent.close()
    restarted: Services = make_agent(cfg)
    try:
        assert send_digest_if_due(restarted, _at(18, 0)) is False  # a restart does not repeat it
    finally:
        restarted.close()

    [digest] = posts(slack)[before:]
    text = digest["text"]
    assert digest["channel"] == "#slide-scanning"
    assert f"Daily digest for Cardinal, {date.today().isoformat()}" in text
    for line in ("Stored: 1", "Held: 1", "Failed: 0", "Quarantined: 1"):
        assert line in text, text
    assert (
        "Held now: 1; the oldest, 999999 (999999_a.svs), for " in text and "No row for barcode 999999" in text
    )


def test_digest_slack_refused_is_tried_again_on_the_next_pass(
    lab_config: Callable[..., Path], slack: SlackApiServer
) -> None:
    from scanner_agent.service.digest import send_digest_if_due

    agent: Services = make_agent(lab_config(slack, digest_time="08:30"))
    try:
        slack.go_down("500")
        assert send_digest_if_due(agent, _at(9, 0)) is False  # no exception, not recorded as sent
        slack.come_back()
        assert send_digest_if_due(agent, _at(9, 1)) is True
        assert "No scan is held now." in posts(slack)[-1]["text"]
    finally:
        agent.close()


@pytest.mark.parametrize("bad", ["25:00", "5pm", "17:0", "17:00:00"])
def test_bad_digest_time_is_a_config_error_naming_the_key(
    bad: str, lab_config: Callable[..., Path], slack: SlackApiServer
) -> None:
    from scanner_agent.config import load_config

    with pytest.raises(ConfigError) as err:
        load_config(lab_config(slack, digest_time=bad))
    assert "[alerts] digest_time" in str(err.value) and repr(bad) in str(err.value)


def test_unset_or_empty_digest_time_sends_nothing(
    lab_config: Callable[..., Path], slack: SlackApiServer
) -> None:
    from scanner_agent.service.digest import send_digest_if_due

    agent: Services = make_agent(lab_config(slack, digest_time=""))
    try:
        assert agent.cfg.alerts.digest_time == ""
        assert send_digest_if_due(agent, _at(23, 59)) is False
        assert posts(slack) == []
    finally:
        agent.close()
