"""The pure parts of alerts that close their own loop: digest timing and wording, the reply e-mail's
headers, the resolved Slack message, and the Alerter handing a recovery its problem's original."""

from __future__ import annotations

from datetime import datetime, time

import pytest
from pydantic import ValidationError

from scanner_agent.alerts import Alert, Alerter, Original, email_message, slack_resolved_blocks
from scanner_agent.config import AlertsConfig
from scanner_agent.core.digest import DigestCounts, OldestHeld, digest_due, digest_lines, parse_digest_time


def held(**kw: object) -> Alert:
    base: dict[str, object] = {
        "kind": "incomplete_row",
        "scanner": "Cardinal",
        "barcode": "111111",
        "file": "111111_a.svs",
        "message": "Barcode 111111 has no value in REQUIRED column(s) 'Panel'.",
        "run_url": "http://prefect.test/runs/flow-run/1",
    }
    base.update(kw)
    return Alert(**base)  # type: ignore[arg-type]


# -- digest


@pytest.mark.parametrize(
    ("text", "want"), [("17:00", time(17, 0)), (" 07:05 ", time(7, 5)), ("23:59", time(23, 59))]
)
def test_digest_time_parses_hh_mm(text: str, want: time) -> None:
    assert parse_digest_time(text) == want


@pytest.mark.parametrize("off", ["", "   ", None])
def test_empty_digest_time_is_off(off: str | None) -> None:
    assert parse_digest_time(off) is None and not digest_due(datetime(2026, 1, 1, 23, 0), None, None)


@pytest.mark.parametrize("bad", ["24:00", "7:05", "17:60", "17h00", "17:00:00", "noon"])
def test_bad_digest_time_names_the_key_and_the_value(bad: str) -> None:
    with pytest.raises(ValueError, match=r"\[alerts\] digest_time") as err:
        parse_digest_time(bad)
    assert repr(bad) in str(err.value)
    with pytest.raises(ValidationError, match=r"\[alerts\] digest_time"):
        AlertsConfig(digest_time=bad)


def test_digest_is_due_once_after_its_time_each_day() -> None:
    at = time(17, 0)
    assert not digest_due(datetime(2026, 3, 2, 16, 59), at, None)
    assert digest_due(datetime(2026, 3, 2, 17, 0), at, None)
    assert digest_due(datetime(2026, 3, 2, 22, 0), at, "2026-03-01")  # came back later that day
    assert not digest_due(datetime(2026, 3, 2, 17, 1), at, "2026-03-02")  # sent already today
    assert digest_due(datetime(2026, 3, 3, 17, 0), at, "2026-03-02")


def test_digest_lines_say_counts_and_the_oldest_held_scan() -> None:
    head, lines = digest_lines(
        "Cardinal",
        "2026-03-02",
        DigestCounts(stored=12, held=2, failed=1, quarantined=0),
        OldestHeld("999999", "999999_a.svs", 3 * 3600, "No row for barcode 999999"),
        2,
    )
    assert head == "Daily digest for Cardinal, 2026-03-02"
    assert lines[:4] == ["Stored: 12", "Held: 2", "Failed: 1", "Quarantined: 0"]
    assert lines[4] == "Held now: 2; the oldest, 999999 (999999_a.svs), for 3.0 h: No row for barcode 999999"
    _, none_held = digest_lines("Cardinal", "2026-03-02", DigestCounts(), None, 0)
    assert none_held[-1] == "No scan is held now."


# -- e-mail reply headers


def test_recovery_email_replies_to_the_problem_email() -> None:
    first = email_message(held(), sender="agent@lab.test", recipients=["lab@lab.test"])
    ref = {"message_id": str(first["Message-ID"]), "subject": str(first["Subject"])}
    reply = email_message(
        held(recovery=True, message="111111 stored after 5 min held"),
        sender="agent@lab.test",
        recipients=["lab@lab.test"],
        original=Original(ref),
    )
    assert reply["In-Reply-To"] == first["Message-ID"] == reply["References"]
    assert reply["Subject"] == "Re: Incomplete sheet row for 111111 on Cardinal"
    assert reply["Message-ID"] != first["Message-ID"]
    again = email_message(
        held(recovery=True),
        sender="a@lab.test",
        recipients=["l@lab.test"],
        original=Original({"message_id": ref["message_id"], "subject": "Re: X"}),
    )
    assert again["Subject"] == "Re: X"  # never "Re: Re:"


@pytest.mark.parametrize(
    "ref",
    [
        {"message_id": "<a@b>\r\nBcc: victim@evil.test", "subject": "X"},  # a forged header
        {"message_id": "not-an-id", "subject": "X"},
        {"message_id": "<a@b>", "subject": ""},
        {},
    ],
)
def test_an_unusable_reference_makes_a_plain_email_not_a_broken_one(ref: dict[str, str]) -> None:
    msg = email_message(
        held(recovery=True), sender="a@lab.test", recipients=["l@lab.test"], original=Original(ref)
    )
    assert msg["In-Reply-To"] is None and msg["References"] is None and msg["Bcc"] is None
    assert str(msg["Subject"]).startswith("Resolved: Incomplete sheet row")


# -- Slack resolved message


def test_resolved_slack_message_keeps_what_it_was_and_says_how_and_when() -> None:
    recovery = held(
        recovery=True, message="111111 stored after 5 min held", details={"Resolved": "2026-03-02 17:05 UTC"}
    )
    blocks = slack_resolved_blocks(recovery, held(message="Panel is empty <b>&"))
    assert blocks[0]["text"]["text"] == "✅ Resolved: Incomplete sheet row for 111111 on Cardinal"
    assert blocks[1]["text"]["text"] == "Panel is empty &lt;b&gt;&amp;"  # what it was, escaped
    assert (
        blocks[2]["elements"][0]["text"] == "*Resolved 2026-03-02 17:05 UTC*: 111111 stored after 5 min held"
    )
    assert blocks[-1]["elements"][0]["url"] == "http://prefect.test/runs/flow-run/1"
    # Without the original's words (unreadable row): the recovery's own, still resolved.
    assert slack_resolved_blocks(recovery, None)[1]["text"]["text"] == "111111 stored after 5 min held"


# -- the Alerter hands the recovery its original


class Recording:
    """A channel that records what it is asked to send and lands each message at a new ref."""

    name = "rec"

    def __init__(self) -> None:
        self.sent: list[tuple[Alert, Original | None]] = []

    def send(self, alert: Alert, *, original: Original | None = None) -> dict[str, str]:
        self.sent.append((alert, original))
        return {"id": str(len(self.sent))}

    def check(self) -> list[str]:
        return []


class OldStyle:
    """A channel written before references: ``send(alert)`` returning None."""

    name = "old"

    def __init__(self) -> None:
        self.sent: list[Alert] = []

    def send(self, alert: Alert) -> None:
        self.sent.append(alert)

    def check(self) -> list[str]:
        return []


def test_alerter_gives_the_recovery_its_problems_original_and_says_when() -> None:
    rec, old = Recording(), OldStyle()
    ticks = iter(range(1_700_000_000, 1_700_001_000))
    alerter = Alerter([rec, old], None, clock=lambda: float(next(ticks)))  # type: ignore[list-item]
    assert alerter.send(held()) == {"rec": "sent", "old": "sent"}
    assert alerter.send(held(recovery=True, message="stored")) == {"rec": "sent", "old": "sent"}
    (_, none), (recovery, original) = rec.sent
    assert none is None and original is not None and original.ref == {"id": "1"}
    assert original.alert is not None and original.alert.message.startswith("Barcode 111111")
    assert "Resolved" in recovery.details  # when it cleared
    assert [a.recovery for a in old.sent] == [False, True]  # no reference: a plain recovery, as before
    # A new episode of the same problem lands anew, and its recovery answers that new message.
    alerter.send(held())
    alerter.send(held(recovery=True, message="stored again"))
    assert rec.sent[-1][1] is not None and rec.sent[-1][1].ref == {"id": "3"}
