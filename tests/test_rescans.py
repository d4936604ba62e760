"""Rescans and missing rescans end to end, through real Prefect runs, real storage and real alert servers.

A second scan of a stored barcode is a rescan: the earlier image and its sidecar move to
``superseded/`` (scan time in the name) and the two sidecars point at each other. A request for a
rescan comes from the sheet (``Rescan Requested`` = yes) or from a failed QC; the scan that
satisfies it is announced once, and a request past its deadline raises one missing-rescan alert.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scanner_agent.service.maintenance import slow_timers, sweep_rescan_requests
from tests import test_alerts_e2e as e2e
from tests.daemon_helpers import final_task_runs
from tests.harness import SAMPLE_SHEET, process
from tests.storage_listing import check_sums
from tests.test_alerts_e2e import Lab, button_url, header, mail_text, post_text

# The Slack/SMTP servers and the Lab builder are shared with the alert tests. The server fixtures
# read the credentials from the requesting module, so this module names the same ones as the Lab.
pytest_plugins = ["tests.servers.fixtures"]
TOKEN, SMTP_USER, SMTP_PASSWORD = e2e.TOKEN, e2e.SMTP_USER, e2e.SMTP_PASSWORD
make_lab = e2e.make_lab

NO_SHEET_REQUESTS = SAMPLE_SHEET.replace(",yes,blurry on first scan", ",,")
CARDINAL_ROW = ("Prec01", "Run-2", "P1", "Cardinal")  # the sample sheet's rows for Run 2
RAVEN_ROW = ("Prec01", "Run-3", "P2", "Raven")  # row 9, barcode 545891


def stored_path(lab: Lab, barcode: str, row: tuple[str, ...] = CARDINAL_ROW) -> Path:
    """Where the sheet's row puts a barcode: ``{Study}/{Experiment}/<included columns>_<barcode>.svs``."""
    return lab.storage / row[0] / row[1] / ("_".join(row) + f"_{barcode}.svs")


def task_names(flow_run_id: str) -> list[str]:
    async def read() -> list[str]:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            runs = await final_task_runs(client, flow_run_id, at_least=1)
            return [t.name.rsplit("-", 1)[0] for t in runs]

    return asyncio.run(read())


def sidecar(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.with_suffix(".json").read_text()))


def label_of(stored_at: float) -> str:
    """How the flow names a superseded scan: its stored time, local, to the second."""
    return time.strftime("%Y%m%dT%H%M%S", time.localtime(stored_at))


# --------------------------------------------------------------------------------------------
# Rescans


def test_second_scan_of_a_stored_barcode_supersedes_the_first_and_the_sidecars_link(
    make_lab: Callable[..., Lab],
) -> None:
    lab = make_lab()
    first_src = lab.scan("620995_x.svs", barcode="620995", seed=1)
    first_bytes = first_src.read_bytes()
    [first] = process(lab.agent, first_src)
    assert first.state == "stored", first.reason
    # The scanner writes the rescan under the same name once the first file has gone.
    second_src = lab.scan("620995_x.svs", barcode="620995", seed=2)
    second_bytes = second_src.read_bytes()
    assert second_bytes != first_bytes
    [second] = process(lab.agent, second_src)

    assert second.state == "stored", second.reason
    dest = stored_path(lab, "620995")
    assert Path(first.dest) == Path(second.dest) == dest
    assert dest.read_bytes() == second_bytes and not second_src.exists()
    assert "Move Image" in task_names(first.flow_run_id) and "Move Rescanned Images" not in task_names(
        first.flow_run_id
    )
    tasks = task_names(second.flow_run_id)
    assert "Move Rescanned Images" in tasks and "Move Image" not in tasks

    # The earlier image and its sidecar, under superseded/ with the earlier scan's time in the name.
    old = dest.parent / "superseded" / f"{dest.stem}__{label_of(first.stored_at)}.svs"
    assert sorted(p.name for p in old.parent.iterdir()) == [
        old.with_suffix(".json").name,
        old.name,
        "SHA256SUMS",
    ]
    check_sums(old.parent)
    assert old.read_bytes() == first_bytes
    new_meta, old_meta = sidecar(dest), sidecar(old)
    assert new_meta["supersedes"] == f"superseded/{old.name}"
    assert old_meta["superseded_by"] == dest.name and old_meta["superseded_as"] == old.name
    assert old_meta["sha256"] == first.sha256 and new_meta["sha256"] == second.sha256
    assert old_meta["flow_run_id"] == first.flow_run_id and new_meta["flow_run_id"] == second.flow_run_id
    assert second.details["superseded"] == [str(old)]
    assert lab.agent.journal.get(first.id).details["superseded_by"] == str(dest)  # type: ignore[union-attr]
    assert lab.posts() == [] and lab.mails() == []  # a rescan nobody asked for is not an alarm


def test_rescanning_twice_keeps_both_earlier_images(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab()
    contents: list[bytes] = []
    recs = []
    for seed in (1, 2, 3):
        src = lab.scan("620995_x.svs", barcode="620995", seed=seed)
        contents.append(src.read_bytes())
        [rec] = process(lab.agent, src)
        assert rec.state == "stored", rec.reason
        recs.append(rec)

    dest = stored_path(lab, "620995")
    assert dest.read_bytes() == contents[2]
    superseded = dest.parent / "superseded"
    images = sorted(superseded.glob("*.svs"))
    assert len(images) == 2 and len(list(superseded.glob("*.json"))) == 2
    assert {p.read_bytes() for p in images} == {contents[0], contents[1]}  # nothing was overwritten
    for img in images:
        meta = sidecar(img)
        assert meta["superseded_by"] == dest.name and meta["superseded_as"] == img.name
    # The live sidecar points at the scan it replaced (the second one).
    second_old = superseded / sidecar(dest)["supersedes"].split("/", 1)[1]
    assert second_old.read_bytes() == contents[1]
    assert "Move Rescanned Images" in task_names(recs[2].flow_run_id)


# --------------------------------------------------------------------------------------------
# Rescan requests


def test_sheet_rescan_request_is_satisfied_by_the_next_scan_and_announced_once(
    make_lab: Callable[..., Lab],
) -> None:
    lab = make_lab()
    [original] = process(lab.agent, lab.scan("545891_a.svs", barcode="545891", seed=1))
    assert original.state == "stored", original.reason
    assert lab.agent.journal.open_rescans() == []

    now = time.time()
    assert sweep_rescan_requests(lab.agent, now) == 1  # row 9 says Rescan Requested = yes
    assert sweep_rescan_requests(lab.agent, now + 60) == 0  # one request per barcode, not per sweep
    [req] = lab.agent.journal.open_rescans()
    assert req["barcode"] == "545891" and req["requested_by"] == "the sheet (Rescan Requested, row 9)"
    assert req["reason"] == "blurry on first scan"
    assert abs(req["deadline"] - (now + 72 * 3600)) < 1

    [rescan] = process(lab.agent, lab.scan("545891_a.svs", barcode="545891", seed=2))
    assert rescan.state == "stored", rescan.reason
    assert "Move Rescanned Images" in task_names(rescan.flow_run_id)
    assert lab.agent.journal.open_rescans() == []
    dest = Path(rescan.dest)
    assert dest == stored_path(lab, "545891", RAVEN_ROW) and dest.exists()

    [post] = lab.posts()
    assert header(post) == "✅ Resolved: Rescan received for 545891 on Cardinal"
    assert f"The requested rescan of 545891 arrived and is stored as {dest.name}" in post["text"]
    assert button_url(post) == f"http://prefect.example.org:4200/runs/flow-run/{rescan.flow_run_id}"
    [mail] = lab.mails()
    assert "Rescan received for 545891" in str(mail["Subject"]) and dest.name in mail_text(mail)

    # The sheet still says yes: no new request from the same row, and a further scan is not re-announced.
    assert sweep_rescan_requests(lab.agent, time.time()) == 0
    slow_timers(lab.agent, time.time() + 3600)
    [again] = process(lab.agent, lab.scan("545891_a.svs", barcode="545891", seed=3))
    assert again.state == "stored"
    assert len(lab.posts()) == 1 and len(lab.mails()) == 1


def test_rescan_request_past_its_deadline_alerts_missing_rescan_once(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(rescans={"deadline_hours": 0.0001})
    now = time.time()
    slow_timers(lab.agent, now)  # the sweep records the sheet's request; not yet overdue
    [req] = lab.agent.journal.open_rescans()
    assert req["barcode"] == "545891" and lab.posts() == []

    slow_timers(lab.agent, now + 2)
    slow_timers(lab.agent, now + 4)
    slow_timers(lab.agent, now + 4 * 3600)  # still missing hours later: said once, not every 30 s

    [post] = lab.posts()
    text = post_text(post)
    assert header(post) == "⚠️ Rescan overdue for 545891 on Cardinal"
    assert "A rescan of 545891 was requested by the sheet (Rescan Requested, row 9)" in post["text"]
    assert time.ctime(req["requested_at"]) in post["text"]  # when it was requested
    assert "blurry on first scan" in post["text"]
    assert "*Barcode*\\n545891" in text and "*requested by*\\nthe sheet (Rescan Requested, row 9)" in text
    [mail] = lab.mails()
    body = mail_text(mail)
    assert "Rescan overdue for 545891" in str(mail["Subject"])
    assert (
        "requested by: the sheet (Rescan Requested, row 9)" in body
        and time.ctime(req["requested_at"]) in body
    )
    assert lab.agent.journal.overdue_rescans(now + 5 * 3600) == []


def test_qc_failed_scan_requests_a_rescan_that_is_chased_then_satisfied(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(sheet=NO_SHEET_REQUESTS, rescans={"deadline_hours": 0.0001})
    [blurry] = process(lab.agent, lab.scan("465551_a.svs", barcode="465551", blurred=True))
    assert blurry.state == "stored" and "qc_failed" in blurry.details
    [req] = lab.agent.journal.open_rescans()
    assert req["barcode"] == "465551" and req["requested_by"] == "qc" and "out of focus" in req["reason"]
    [qc_post] = lab.posts()
    assert "Slide QC failed for 465551" in header(qc_post) and "A rescan is requested" in qc_post["text"]

    slow_timers(lab.agent, time.time() + 5)
    slow_timers(lab.agent, time.time() + 10)
    overdue = [p for p in lab.posts() if "Rescan overdue" in header(p)]
    assert len(overdue) == 1
    assert (
        "A rescan of 465551 was requested by qc" in overdue[0]["text"]
        and "out of focus" in overdue[0]["text"]
    )

    [sharp] = process(lab.agent, lab.scan("465551_a.svs", barcode="465551", seed=7))
    assert sharp.state == "stored" and "qc_failed" not in sharp.details
    assert lab.agent.journal.open_rescans() == []
    # The overdue message is closed: updated to resolved, and a reply in its thread says how.
    [update] = [c.payload for c in lab.slack.calls_to("chat.update", ok_only=True)]
    assert "Resolved" in update["text"] and "Rescan overdue" in update["text"]
    [reply] = [p for p in lab.posts() if p.get("thread_ts")]
    assert "The requested rescan of 465551 arrived" in reply["text"]
    assert len(lab.posts()) == 3 and len(lab.mails()) == 3  # QC failed, overdue, its resolution
    assert str(lab.mails()[2]["Subject"]).startswith("Re: ")
    superseded = sorted((Path(sharp.dest).parent / "superseded").glob("*.svs"))
    assert len(superseded) == 1 and sidecar(superseded[0])["qc"]["passed"] is False


def test_a_second_blurry_rescan_is_alerted_and_the_good_one_announced_again(
    make_lab: Callable[..., Lab],
) -> None:
    lab = make_lab(sheet=NO_SHEET_REQUESTS)
    for seed, blurred in ((1, True), (2, True), (3, False)):  # the first rescan is blurry too
        [rec] = process(lab.agent, lab.scan("465551_a.svs", barcode="465551", seed=seed, blurred=blurred))
        assert rec.state == "stored", rec.reason
    heads = [header(p) for p in lab.posts()]
    assert sum("Slide QC failed for 465551" in h for h in heads) == 2, heads
    assert sum("Rescan received for 465551" in h for h in heads) == 2, heads
