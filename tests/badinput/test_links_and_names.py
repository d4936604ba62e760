"""Links and undecodable names in the scanner's folder.

A symbolic link is never followed or stored: the watcher's listing skips it, and a scan handed to
the pipeline that is or holds a link (``process`` on the link, a MIRAX data folder or data file
that is a link) fails with a message saying so, before anything is read through it. A hard link
is an ordinary file and is stored, but storage never shares its inode with a name outside the
scanner's folder. A name that is not valid UTF-8 crashes neither the watcher nor the daemon: the
scan is refused by name (log line and alert), everything else keeps flowing.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scanner_agent.watch import discover_units, unit_for_path
from tests.badinput.corpus import (
    Case,
    Outcome,
    Site,
    check_outcome,
    check_storage,
    make_site,
    row,
    run_corpus,
    sha256,
    sheet_csv,
)
from tests.servers.slack_api import SlackApiServer

FAILED, LINK = "failed", "scan_error"
LINK_WORDS = ("{src}", "symbolic link")


# --------------------------------------------------------------------------- inputs


def _link_to_outside(s: Site) -> Path:
    target = s.svs("500001_real.svs", folder=s.outside)
    link = s.watch / "500001_link.svs"
    link.symlink_to(target)
    return link


def _link_to_inside(s: Site) -> Path:
    (s.watch / "kept").mkdir()
    target = s.svs("500002_real.svs", folder=s.watch / "kept")
    link = s.watch / "500002_link.svs"
    link.symlink_to(target)
    return link


def _dangling(s: Site) -> Path:
    link = s.watch / "500003_gone.svs"
    link.symlink_to(s.outside / "nothing-here.svs")
    return link


def _mrxs_folder_linked(s: Site) -> Path:
    s.mrxs("500004_m", folder=s.outside)
    shutil.copyfile(s.outside / "500004_m.mrxs", s.watch / "500004_m.mrxs")
    (s.watch / "500004_m").symlink_to(s.outside / "500004_m")
    return s.watch / "500004_m.mrxs"


def _mrxs_data_file_linked(s: Site) -> Path:
    m = s.mrxs("500005_m")
    dat = s.watch / "500005_m" / "Data0000.dat"
    shutil.move(dat, s.outside / "500005-Data0000.dat")
    dat.symlink_to(s.outside / "500005-Data0000.dat")
    return m


def _mrxs_marker_linked(s: Site) -> Path:
    s.mrxs("500006_m")
    marker = s.watch / "500006_m.mrxs"
    shutil.move(marker, s.outside / "500006_m.mrxs")
    marker.symlink_to(s.outside / "500006_m.mrxs")
    return marker


def _hard_link_to_outside(s: Site) -> Path:
    target = s.svs("500007_real.svs", folder=s.outside)
    link = s.watch / "500007_hard.svs"
    os.link(target, link)
    return link


def _two_names_one_inode(s: Site) -> Path:
    a = s.svs("500008_a.svs")
    os.link(a, s.watch / "500008_b.svs")
    return a


def _second_name(s: Site) -> Path:
    return s.watch / "500008_b.svs"


# --------------------------------------------------------------------------- extra checks


def _target_intact(rel: str) -> Any:
    def check(o: Outcome, site: Site) -> None:
        assert os.path.islink(o.src), "the link itself must stay where it was"
        target = site.base / rel
        assert target.exists() and sha256(target) == sha256(site.template), f"{target} changed"
        assert o.rec.next_check is None, "a link does not go away by waiting: no timer retries it"

    return check


def _mrxs_intact(folder: str) -> Any:
    def check(o: Outcome, site: Site) -> None:
        assert o.src.exists() and (site.base / folder).is_dir()
        assert o.rec.next_check is None

    return check


def _dangling_kept(o: Outcome, site: Site) -> None:
    assert os.path.islink(o.src) and not o.src.exists()


def _storage_owns_its_inode(o: Outcome, site: Site) -> None:
    outside = site.outside / "500007_real.svs"
    dest = Path(o.rec.dest)
    assert outside.exists() and sha256(outside) == sha256(dest)
    # A name outside the scanner's folder writing in place must not change the stored, verified scan.
    assert os.stat(outside).st_ino != os.stat(dest).st_ino, (
        "storage shares its inode with a file outside the scanner"
    )


CASES: list[Case] = [
    Case(
        "symlink-to-outside-file",
        "watch/500001_link.svs -> outside/500001_real.svs",
        _link_to_outside,
        FAILED,
        LINK,
        LINK_WORDS,
        row("500001"),
        extra=_target_intact("outside/500001_real.svs"),
    ),
    Case(
        "symlink-to-inside-file",
        "watch/500002_link.svs -> watch/kept/500002_real.svs",
        _link_to_inside,
        FAILED,
        LINK,
        LINK_WORDS,
        row("500002"),
        extra=_target_intact("scanner/kept/500002_real.svs"),
    ),
    Case(
        "dangling-symlink",
        "watch/500003_gone.svs -> nothing",
        _dangling,
        FAILED,
        LINK,
        LINK_WORDS,
        row("500003"),
        extra=_dangling_kept,
    ),
    Case(
        "mrxs-data-folder-symlink",
        "real .mrxs, its data folder a link to outside",
        _mrxs_folder_linked,
        FAILED,
        LINK,
        LINK_WORDS,
        row("500004"),
        extra=_mrxs_intact("outside/500004_m"),
    ),
    Case(
        "mrxs-data-file-symlink",
        "MIRAX whose Data0000.dat is a link to outside",
        _mrxs_data_file_linked,
        FAILED,
        LINK,
        ("{src}", "symbolic link", "Data0000.dat"),
        row("500005"),
        extra=_mrxs_intact("scanner/500005_m"),
    ),
    Case(
        "mrxs-marker-symlink",
        "MIRAX whose .mrxs is a link, data folder real",
        _mrxs_marker_linked,
        FAILED,
        LINK,
        LINK_WORDS,
        row("500006"),
        extra=_mrxs_intact("scanner/500006_m"),
    ),
    Case(
        "hardlink-to-outside",
        "watch/500007_hard.svs, a hard link to outside/500007_real.svs",
        _hard_link_to_outside,
        "stored",
        None,
        (),
        row("500007"),
        stored_as="Prec01/Run-2/Prec01_Run-2_P1_Cardinal_500007.svs",
        extra=_storage_owns_its_inode,
    ),
    Case(
        "hardlink-pair-first",
        "watch/500008_a.svs and 500008_b.svs: one inode, two names",
        _two_names_one_inode,
        "stored",
        None,
        (),
        row("500008"),
        stored_as="Prec01/Run-2/Prec01_Run-2_P1_Cardinal_500008.svs",
    ),
    Case(
        "hardlink-pair-second",
        "the second name of that inode",
        _second_name,
        "stored",
        None,
        (),
        stored_as="Prec01/Run-2/Prec01_Run-2_P1_Cardinal_500008.svs",
    ),
]


@pytest.fixture(scope="module")
def corpus(
    tmp_path_factory: pytest.TempPathFactory, prefect_api: str
) -> Iterator[tuple[dict[str, Outcome], Site]]:
    yield from run_corpus(
        tmp_path_factory.mktemp("links"), CASES, workers=1
    )  # the hard-link pair must run in order


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_link(case: Case, corpus: tuple[dict[str, Outcome], Site]) -> None:
    outcomes, site = corpus
    check_outcome(outcomes[case.id], site)


def test_storage_holds_only_the_hard_linked_scans(corpus: tuple[dict[str, Outcome], Site]) -> None:
    outcomes, site = corpus
    check_storage(outcomes, site)


# --------------------------------------------------------------------------- the watcher's listing


def test_listing_never_follows_a_link(tmp_path: Path) -> None:
    watch, outside = tmp_path / "watch", tmp_path / "outside"
    watch.mkdir()
    outside.mkdir()
    (outside / "510001.svs").write_bytes(b"slide outside")
    (outside / "folder").mkdir()
    (outside / "folder" / "510002.svs").write_bytes(b"slide in a linked folder")
    (watch / "510001_link.svs").symlink_to(outside / "510001.svs")
    (watch / "linked-folder").symlink_to(outside / "folder", target_is_directory=True)
    (watch / "510003_dangling.svs").symlink_to(outside / "missing.svs")
    os.link(outside / "510001.svs", watch / "510004_hard.svs")
    (watch / "510005.svs").write_bytes(b"a plain scan")

    found = {u.primary.name for u in discover_units(watch)}
    assert found == {"510004_hard.svs", "510005.svs"}
    for p in (
        watch / "510001_link.svs",
        watch / "linked-folder" / "510002.svs",
        watch / "510003_dangling.svs",
    ):
        assert unit_for_path(watch, p) is None, p
    assert unit_for_path(watch, watch / "510004_hard.svs") is not None


def test_listing_survives_names_that_are_not_utf8(tmp_path: Path) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    bad_file = os.fsencode(watch) + b"/520001_caf\xe9.svs"
    bad_dir = os.fsencode(watch) + b"/run\xff"
    with open(bad_file, "wb") as f:
        f.write(b"x")
    os.mkdir(bad_dir)
    with open(bad_dir + b"/520002.svs", "wb") as f:
        f.write(b"y")
    (watch / "520003.svs").write_bytes(b"z")

    units = discover_units(watch)
    assert sorted(os.fsencode(u.primary) for u in units) == sorted(
        [bad_file, bad_dir + b"/520002.svs", os.fsencode(watch / "520003.svs")]
    )
    assert unit_for_path(watch, Path(os.fsdecode(bad_file))) is not None


# --------------------------------------------------------------------------- the daemon and the CLI


SLACK_TOKEN = "xoxb-links-test-token"


def test_daemon_refuses_a_name_that_is_not_utf8_and_keeps_working(
    tmp_path: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scanner_agent.service.daemon import Daemon

    monkeypatch.setenv("SLACK_BOT_TOKEN", SLACK_TOKEN)
    with SlackApiServer(token=SLACK_TOKEN) as slack:
        site = make_site(
            tmp_path / "site",
            rows=[row("530001"), row("530002")],
            name="Links-Daemon",
            alerts={"slack_channel": "#slide-scanning", "slack_api_url": slack.url},
        )
        bad = os.fsencode(site.watch) + b"/530001_caf\xe9.svs"
        shutil.copyfile(site.template, bad)
        good = site.svs("530002_ok.svs")
        daemon = Daemon(site.agent)
        thread = threading.Thread(target=daemon.run, name="daemon-under-test", daemon=True)
        thread.start()
        try:
            end = time.monotonic() + 120
            while time.monotonic() < end:
                stored = [r for r in site.agent.journal.all() if r.state == "stored"]
                posts = [c.payload.get("text", "") for c in slack.calls_to("chat.postMessage", ok_only=True)]
                if stored and any("not valid UTF-8" in p for p in posts):
                    break
                assert thread.is_alive(), "the daemon stopped"
                time.sleep(0.2)
            else:
                raise AssertionError(f"timed out: journal {site.agent.journal.all()}, slack {posts}")
            assert daemon.watcher.healthy()
            rows = site.agent.journal.all()
        finally:
            daemon.stop_event.set()
            thread.join(60)
            site.agent.close()
        assert not thread.is_alive()
        [rec] = stored
        assert rec.path == str(good) and not good.exists()
        assert os.path.exists(bad) and sha256(Path(os.fsdecode(bad))) == sha256(
            site.template
        )  # kept, untouched
        assert [r.path for r in rows] == [str(good)]  # nothing half-recorded for the undecodable name
        [post] = [p for p in posts if "not valid UTF-8" in p]
        assert "530001_caf\\xe9.svs" in post  # the name as a person can read it, the odd byte escaped


def test_process_command_refuses_a_name_that_is_not_utf8(
    tmp_path: Path, prefect_api: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from scanner_agent.cli import main
    from tests.harness import write_config

    cfg = write_config(tmp_path / "site", name="Links-Process", sheet=sheet_csv([row("540001")]))
    bad = os.fsencode(tmp_path / "site" / "scanner") + b"/540001_caf\xe9.svs"
    with open(bad, "wb") as f:
        f.write(b"not even a slide")
    code = main(["process", "--config", str(cfg), os.fsdecode(bad)])
    err = capsys.readouterr().err
    assert "540001_caf\\xe9.svs" in err and "not valid UTF-8" in err
    assert code == 1  # something needs a person
    assert os.path.exists(bad)
