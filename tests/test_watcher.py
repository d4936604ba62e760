"""The watcher on real folders with the real watchdog observers (inotify and polling).

Files are written slowly from threads as a scanner would. Timing assertions are about order
("not reported before the last write"), never speed; "eventually" waits are generous.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import openslide
import pytest

from scanner_agent.core.errors import ConfigError
from scanner_agent.scanunit import ScanUnit
from scanner_agent.testing.simulator import SimScan, simulate
from scanner_agent.watch import (
    ScanWatcher,
    WatcherHealth,
    choose_observer,
    filesystem_type,
    format_says_done,
    parse_mountinfo,
)

SETTLE = 0.5
DICOM_BYTES = b"\0" * 128 + b"DICM" + b"\0" * 64
OBSERVERS = ["inotify", "polling"]


class Reports:
    """What on_ready received, with the monotonic time of each call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[tuple[ScanUnit, float]] = []

    def __call__(self, unit: ScanUnit) -> None:
        with self._lock:
            self.items.append((unit, time.monotonic()))

    def names(self) -> list[str]:
        with self._lock:
            return sorted(u.name for u, _ in self.items)

    def times(self, name: str) -> list[float]:
        with self._lock:
            return [t for u, t in self.items if u.name == name]


def wait_for(cond: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


WatcherFactory = Callable[..., tuple[ScanWatcher, Reports]]


@pytest.fixture
def make_watcher() -> Iterator[WatcherFactory]:
    started: list[ScanWatcher] = []

    def factory(watch: Path, observer: str = "inotify", **kw: object) -> tuple[ScanWatcher, Reports]:
        reports = Reports()
        opts: dict[str, object] = {
            "settle_seconds": SETTLE,
            "rescan_seconds": 60,
            "poll_interval": 0.1,
            "tick_seconds": 0.05,
        }
        opts.update(kw)
        watcher = ScanWatcher(watch, reports, observer=observer, **opts)  # type: ignore[arg-type]
        watcher.start()
        started.append(watcher)
        return watcher, reports

    yield factory
    for watcher in started:
        watcher.stop()


def write_slowly(path: Path, chunks: int, gap: float, size: int = 4096) -> float:
    """Write ``chunks`` chunks through one handle with ``gap`` seconds between; returns the
    monotonic time just after the last write and close."""
    with open(path, "wb") as fh:
        for i in range(chunks):
            if i:
                time.sleep(gap)
            fh.write(os.urandom(size))
            fh.flush()
    return time.monotonic()


def settle_quietly(seconds: float = SETTLE * 2) -> None:
    """Give a watcher time to (wrongly) report again before asserting it did not."""
    time.sleep(seconds)


# ---- the main cases, on both observers -------------------------------------------------------------


@pytest.mark.parametrize("observer", OBSERVERS)
def test_slow_write_is_reported_once_after_the_last_write(
    tmp_path: Path, make_watcher: WatcherFactory, observer: str
) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    watcher, reports = make_watcher(watch, observer)
    done = write_slowly(watch / "slow.svs", chunks=10, gap=SETTLE / 3)  # ~1.5 s of growth
    wait_for(lambda: reports.names() == ["slow.svs"], what="slow.svs reported")
    [reported_at] = reports.times("slow.svs")
    assert reported_at > done
    # Even with a close-write hint, the unchanged check waits at least a quarter window.
    assert reported_at - done >= SETTLE / 4 * 0.9
    settle_quietly()
    assert reports.names() == ["slow.svs"]
    assert watcher.healthy()


@pytest.mark.parametrize("observer", OBSERVERS)
def test_file_renamed_into_the_folder_is_reported(
    tmp_path: Path, make_watcher: WatcherFactory, observer: str
) -> None:
    watch, outside = tmp_path / "watch", tmp_path / "outside"
    watch.mkdir()
    outside.mkdir()
    _, reports = make_watcher(watch, observer)
    write_slowly(outside / "moved.svs", chunks=3, gap=0.05)
    os.rename(outside / "moved.svs", watch / "moved.svs")
    wait_for(lambda: reports.names() == ["moved.svs"], what="moved.svs reported")
    settle_quietly()
    assert reports.names() == ["moved.svs"]


@pytest.mark.parametrize("observer", OBSERVERS)
def test_mrxs_reported_once_and_only_after_finished(
    tmp_path: Path, make_watcher: WatcherFactory, observer: str
) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    _, reports = make_watcher(watch, observer)
    (watch / "m1.mrxs").write_bytes(b"[GENERAL]\nSLIDE_VERSION = 01.02\n")
    folder = watch / "m1"
    folder.mkdir()
    ini = folder / "Slidedat.ini"
    ini.write_text("[GENERAL]\nSLIDE_ID = 1\nSLIDE_CREATION_FINISHED = False\n")
    for i in range(4):
        write_slowly(folder / f"Data{i:04d}.dat", chunks=2, gap=0.05)
    write_slowly(folder / "Index.dat", chunks=1, gap=0)
    settle_quietly(SETTLE * 4)  # settled on disk, but the scanner has not said it is finished
    assert reports.names() == []
    ini.write_text("[GENERAL]\nSLIDE_ID = 1\nSLIDE_CREATION_FINISHED = True\n")
    flagged = time.monotonic()
    wait_for(lambda: reports.names() == ["m1.mrxs"], what="m1.mrxs reported")
    assert reports.times("m1.mrxs")[0] > flagged
    settle_quietly()
    assert reports.names() == ["m1.mrxs"]
    unit = reports.items[0][0]
    assert unit.companion == folder


@pytest.mark.parametrize("observer", OBSERVERS)
def test_dicom_folder_is_one_unit(tmp_path: Path, make_watcher: WatcherFactory, observer: str) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    _, reports = make_watcher(watch, observer)
    series = watch / "series1"
    series.mkdir()
    for i in range(5):
        (series / f"img{i}.dcm").write_bytes(DICOM_BYTES + os.urandom(512))
        time.sleep(0.05)
    uid_series = watch / "2024-05-01" / "1.2.840.99"
    uid_series.mkdir(parents=True)
    for i in range(3):
        (uid_series / f"1.2.840.99.{i}").write_bytes(DICOM_BYTES)
    wait_for(lambda: len(reports.names()) == 2, what="two DICOM units")
    settle_quietly()
    units = sorted((u for u, _ in reports.items), key=lambda u: str(u.primary))
    assert [u.primary for u in units] == [uid_series, series]
    assert all(u.is_folder for u in units)


@pytest.mark.parametrize("observer", OBSERVERS)
def test_two_hundred_files_at_once_each_reported_exactly_once(
    tmp_path: Path, make_watcher: WatcherFactory, observer: str
) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    _, reports = make_watcher(watch, observer, rescan_seconds=0.5)  # rescans must not re-report
    for i in range(200):
        (watch / f"s{i:03d}.svs").write_bytes(b"x" * (100 + i))
    wait_for(lambda: len(reports.items) >= 200, timeout=60, what="200 reports")
    settle_quietly()
    names = [u.name for u, _ in reports.items]
    assert len(names) == 200 and len(set(names)) == 200


@pytest.mark.parametrize("observer", OBSERVERS)
def test_files_present_before_start_are_caught_up(
    tmp_path: Path, make_watcher: WatcherFactory, observer: str
) -> None:
    watch = tmp_path / "watch"
    (watch / "2024-05-01" / "series").mkdir(parents=True)
    (watch / "old.svs").write_bytes(b"old")
    (watch / "2024-05-01" / "old2.ndpi").write_bytes(b"old2")
    (watch / "2024-05-01" / "series" / "a.dcm").write_bytes(DICOM_BYTES)
    (watch / "m.mrxs").write_bytes(b"m")
    (watch / "m").mkdir()
    (watch / "m" / "Slidedat.ini").write_text("[GENERAL]\nSLIDE_CREATION_FINISHED = True\n")
    watcher, reports = make_watcher(watch, observer)
    assert watcher.health().pending == 4  # everything present is observed once start() returns
    wait_for(lambda: len(reports.items) == 4, what="catch-up of 4 units")
    assert reports.names() == ["m.mrxs", "old.svs", "old2.ndpi", "series"]
    assert watcher.health().last_full_scan is not None


@pytest.mark.parametrize("observer", OBSERVERS)
def test_ignored_names_and_symlinks_are_never_reported(
    tmp_path: Path, make_watcher: WatcherFactory, observer: str
) -> None:
    watch, outside = tmp_path / "watch", tmp_path / "outside"
    watch.mkdir()
    (outside / "dir").mkdir(parents=True)
    (outside / "real.svs").write_bytes(b"real")
    (outside / "dir" / "inner.svs").write_bytes(b"inner")
    _, reports = make_watcher(watch, observer, rescan_seconds=0.5)
    for name in ["a.svs.tmp", "~a.svs", ".a.svs", "b.part", "c.svs.partial", "d.svs.crdownload", "Thumbs.db"]:
        (watch / name).write_bytes(b"junk")
    (watch / ".incoming").mkdir()
    (watch / ".incoming" / "e.svs").write_bytes(b"hidden")
    os.symlink(outside / "real.svs", watch / "link.svs")
    os.symlink(outside / "dir", watch / "linkdir")
    (outside / "dir" / "later.svs").write_bytes(b"written through the link's target")
    (watch / "sentinel.svs").write_bytes(b"ok")
    wait_for(lambda: "sentinel.svs" in reports.names(), what="sentinel reported")
    settle_quietly()  # covers several full listings too
    assert reports.names() == ["sentinel.svs"]


# ---- health -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("observer", OBSERVERS)
def test_watch_folder_removed_and_recreated(
    tmp_path: Path, make_watcher: WatcherFactory, observer: str
) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    changes: list[WatcherHealth] = []
    watcher, reports = make_watcher(watch, observer, on_health_change=changes.append)
    assert watcher.healthy()
    (watch / "a.svs").write_bytes(b"a")
    wait_for(lambda: reports.names() == ["a.svs"], what="a.svs reported")

    shutil.rmtree(watch)
    wait_for(lambda: str(watch) in (watcher.health().last_error or ""), what="the missing folder named")
    assert not watcher.health().alive
    assert not watcher.healthy()

    watch.mkdir()
    wait_for(watcher.healthy, what="healthy again")
    (watch / "b.svs").write_bytes(b"b")
    wait_for(lambda: reports.names() == ["a.svs", "b.svs"], what="b.svs reported after recovery")
    assert watcher.health().restarts >= 1
    alive_flags = [h.alive for h in changes]
    assert False in alive_flags and alive_flags[-1] is True
    assert alive_flags.index(False) < len(alive_flags) - 1


def test_watch_folder_missing_at_start_is_waited_for(tmp_path: Path, make_watcher: WatcherFactory) -> None:
    watch = tmp_path / "not-yet-mounted"
    watcher, reports = make_watcher(watch, "inotify")
    assert not watcher.healthy()
    assert str(watch) in (watcher.health().last_error or "")
    watch.mkdir()
    (watch / "a.svs").write_bytes(b"a")
    wait_for(lambda: reports.names() == ["a.svs"], what="a.svs reported once the folder exists")
    assert watcher.healthy()
    assert watcher.health().restarts == 0  # first start, not a restart


@pytest.mark.parametrize("observer", OBSERVERS)
def test_dead_observer_is_restarted_and_counted(
    tmp_path: Path, make_watcher: WatcherFactory, observer: str
) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    changes: list[WatcherHealth] = []
    watcher, reports = make_watcher(watch, observer, on_health_change=changes.append)
    # Stop the real observer thread behind the watcher's back, as a crash would.
    watcher._observer.stop()  # type: ignore[union-attr]
    wait_for(lambda: watcher.health().restarts == 1 and watcher.healthy(), what="observer restarted")
    assert any(h.restarts == 1 for h in changes)  # never silent
    (watch / "after.svs").write_bytes(b"after")
    wait_for(lambda: reports.names() == ["after.svs"], what="reported after restart")


def test_on_ready_failure_is_offered_again(tmp_path: Path) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    calls: list[str] = []

    def flaky(unit: ScanUnit) -> None:
        calls.append(unit.name)
        if len(calls) == 1:
            raise RuntimeError("queue full")

    watcher = ScanWatcher(
        watch, flaky, observer="inotify", settle_seconds=SETTLE, rescan_seconds=0.5, tick_seconds=0.05
    )
    watcher.start()
    try:
        (watch / "a.svs").write_bytes(b"a")
        wait_for(lambda: len(calls) >= 2, what="a second offer after on_ready raised")
        settle_quietly()
        assert calls == ["a.svs", "a.svs"]
    finally:
        watcher.stop()


def test_changed_after_report_is_reported_again(tmp_path: Path, make_watcher: WatcherFactory) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    _, reports = make_watcher(watch, "inotify", rescan_seconds=0.5)
    (watch / "a.svs").write_bytes(b"first scan")
    wait_for(lambda: len(reports.items) == 1, what="first report")
    (watch / "a.svs").write_bytes(b"the scanner overwrote it with a rescan")
    wait_for(lambda: len(reports.items) == 2, what="second report after change")
    settle_quietly()
    assert len(reports.items) == 2


def test_stop_ends_threads(tmp_path: Path) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    watcher = ScanWatcher(watch, lambda u: None, observer="inotify", tick_seconds=0.05)
    watcher.start()
    assert watcher.healthy()
    watcher.stop()
    assert not watcher.healthy()
    assert not watcher.health().alive


def test_bad_settings_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="observer"):
        ScanWatcher(tmp_path, lambda u: None, observer="fanotify")
    with pytest.raises(ConfigError, match="tick_seconds"):
        ScanWatcher(tmp_path, lambda u: None, tick_seconds=0)


# ---- filesystem type and observer choice ---------------------------------------------------------


def test_filesystem_type_of_root_matches_mountinfo() -> None:
    mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    root_types = [t for mp, t in mounts if mp == "/"]
    assert root_types and filesystem_type(Path("/")) == root_types[-1]


def test_dev_shm_is_tmpfs_and_watched_with_inotify() -> None:
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm here")
    assert filesystem_type(Path("/dev/shm")) == "tmpfs"
    assert choose_observer(Path("/dev/shm"), "auto") == "inotify"
    assert choose_observer(Path("/dev/shm"), "polling") == "polling"


FAKE_MOUNTINFO = "\n".join(
    [
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw",
        "40 22 0:40 / /mnt/scanner rw,relatime shared:20 - nfs4 filer:/export/scans rw,vers=4.2",
        "41 40 8:2 / /mnt/scanner/local rw,relatime - ext4 /dev/sdb1 rw",
        r"42 22 0:42 / /mnt/lab\040share rw,relatime shared:21 master:3 - cifs //nas/lab rw,vers=3.0",
        "43 22 0:43 / /mnt/remote rw,nosuid,nodev - fuse.sshfs me@host:/scans rw",
        "44 22 0:44 / /media/usb rw - fuseblk /dev/sdc1 rw",
        "garbage line without separator",
    ]
)


@pytest.mark.parametrize(
    ("path", "fstype", "choice"),
    [
        ("/mnt/scanner/cardinal", "nfs4", "polling"),
        ("/mnt/scanner", "nfs4", "polling"),
        ("/mnt/scanner/local/out", "ext4", "inotify"),  # a local disk mounted inside the share
        ("/mnt/lab share/raven", "cifs", "polling"),
        ("/mnt/remote/x", "fuse.sshfs", "polling"),
        ("/media/usb/scans", "fuseblk", "inotify"),  # NTFS on a local disk
        ("/mnt/scannerX", "ext4", "inotify"),  # a prefix of the name is not a mount
        ("/srv/scans", "ext4", "inotify"),
    ],
)
def test_fake_mountinfo_chooses_polling_for_network_shares(path: str, fstype: str, choice: str) -> None:
    assert filesystem_type(Path(path), mountinfo=FAKE_MOUNTINFO) == fstype
    assert choose_observer(Path(path), "auto", mountinfo=FAKE_MOUNTINFO) == choice


def test_unknown_filesystem_polls_and_bad_setting_is_refused() -> None:
    assert choose_observer(Path("/x"), "auto", mountinfo="") == "polling"
    assert choose_observer(Path("/x"), " INOTIFY ") == "inotify"
    with pytest.raises(ConfigError, match="observer"):
        choose_observer(Path("/x"), "sometimes")


# ---- the simulator, end to end ------------------------------------------------------------------------


def test_simulated_scanner_is_reported_once_per_scan(tmp_path: Path, make_watcher: WatcherFactory) -> None:
    kinds = ["svs", "corrupt", "mrxs"]
    watch = tmp_path / "watch"
    watch.mkdir()
    _, reports = make_watcher(watch, "inotify")
    scans = [
        SimScan(name=f"sim-{k}", kind=k, barcode="620995", width=1024, height=768)  # type: ignore[arg-type]
        for k in kinds
    ]
    progress: list[str] = []
    paths = simulate(
        watch, scans, chunk_bytes=32 << 10, chunk_interval=0.02, between=0.1, on_progress=progress.append
    )
    assert [p.parent for p in paths] == [watch] * len(kinds)
    assert [p.name for p in paths] == ["sim-svs.svs", "sim-corrupt.svs", "sim-mrxs.mrxs"]
    # One "scanning" line before and one "finished" line after each scan, in order.
    assert progress == [
        line
        for kind, path in zip(kinds, paths, strict=True)
        for line in (f"scanning sim-{kind} ({kind}) -> {path}", f"finished {path}")
    ]
    assert not any(p.name.startswith(".watch-sim-") for p in tmp_path.iterdir())  # staging cleaned up
    wait_for(lambda: len(reports.items) == len(kinds), what="one report per simulated scan")
    settle_quietly()
    assert sorted(u.primary for u, _ in reports.items) == sorted(paths)
    # What the slow copy delivered is still a real slide (and the MIRAX flag ended up True).
    for path in paths:
        if "corrupt" not in path.name:
            with openslide.OpenSlide(path) as slide:
                assert slide.dimensions[0] > 0
    [mrxs] = [unit for unit, _ in reports.items if unit.primary.suffix == ".mrxs"]
    assert format_says_done(mrxs) is True
