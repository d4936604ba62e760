"""The scanner's output folder is removed and recreated under a running daemon (a share that
unmounts and comes back, a technician who deletes and recreates it).

The watcher must say it is unhealthy (journal health for ``status``, an alert), recover on its
own once the folder is back (health and a recovery alert), and store scans written into the
new folder. The daemon is a real ``scanner-agent run`` process.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

from scanner_agent.testing.synthetic import write_svs
from tests.daemon_helpers import DaemonProcess, read_health, records, sheet_csv, wait_for
from tests.faults.tools import alerts_section, scans_left, sha256_bytes, sha256_file, slack_posts
from tests.harness import write_config

A, B = "620995", "645750"


def test_watch_folder_removed_and_recreated_is_reported_then_watched_again(
    tmp_path: Path, prefect_api: str, slack: Any
) -> None:
    name = f"Watch-{uuid.uuid4().hex[:6]}"
    cfg = write_config(
        tmp_path,
        name=name,
        sheet=sheet_csv([A, B]),
        scanner={"rescan_seconds": 2},
        alerts=alerts_section(slack, tmp_path / "slack-token"),
    )
    watch = tmp_path / "scanner"
    slides = {
        b: write_svs(tmp_path / f"{b}.svs", barcode=b, width=1024, height=768, seed=i).read_bytes()
        for i, b in enumerate((A, B))
    }
    with DaemonProcess(cfg) as daemon:
        daemon.wait_watching()
        journal = daemon.cfg.journal.path
        (watch / f"{A}.svs").write_bytes(slides[A])
        wait_for(
            lambda: [r for r in records(journal) if r.state == "stored" and r.source_removed],
            120,
            "the first scan stored",
            alive=daemon,
        )

        shutil.rmtree(watch)
        wait_for(
            lambda: read_health(journal).get("watcher_alive") is False,
            60,
            "the watcher to report the folder gone",
            alive=daemon,
        )
        error = read_health(journal).get("watcher_error") or ""
        assert str(watch) in error and "missing" in error, error
        wait_for(
            lambda: slack_posts(slack, name).with_title("Scanner folder watch unhealthy"),
            60,
            "a watcher_unhealthy alert",
            alive=daemon,
        )

        watch.mkdir()
        wait_for(
            lambda: read_health(journal).get("watcher_alive") is True,
            60,
            "the watcher to recover",
            alive=daemon,
        )
        wait_for(
            lambda: slack_posts(slack, name).with_title("Resolved: Scanner folder watch unhealthy"),
            60,
            "the recovery alert",
            alive=daemon,
        )
        (watch / f"{B}.svs").write_bytes(slides[B])
        wait_for(
            lambda: len([r for r in records(journal) if r.state == "stored" and r.source_removed]) == 2,
            120,
            "a scan written into the recreated folder to be stored",
            alive=daemon,
        )
        assert daemon.terminate(60) == 0
    rows = records(journal)
    assert sorted(r.barcode or "" for r in rows) == [A, B] and {r.state for r in rows} == {"stored"}
    for r in rows:
        assert sha256_file(Path(r.dest or "")) == sha256_bytes(slides[r.barcode or ""])
    assert scans_left(watch) == []
    # Once per episode: one problem alert and one recovery, not one per watcher tick.
    titles = slack_posts(slack, name).titles()
    assert len([t for t in titles if "watch unhealthy" in t]) == 2, titles
