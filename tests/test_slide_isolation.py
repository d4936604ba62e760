"""Slides are parsed in worker processes: a slide that crashes, hangs or exhausts the parser is
quarantined, alerted once, and the same agent stores the next scan (zero agent restarts).

Real processes throughout: the agent's own worker pool (``slides.SlideWorkers``), a real SIGSEGV
delivered to the worker while it is inside a parse, a real hang (the parse blocked on a FIFO named
like a slide), a real decompression bomb against a small ``slide_memory_mb`` (GLib aborts when
its allocation fails under ``RLIMIT_AS``), and for the bomb the real daemon, whose pid must not
change. Alerts go to the local Slack server.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from scanner_agent.core.errors import SlideReaderCrashed
from scanner_agent.testing.synthetic import write_corrupt, write_svs
from tests.daemon_helpers import DaemonProcess, records, wait_for
from tests.harness import make_agent, process, write_config
from tests.servers.slack_api import SlackApiServer

pytest_plugins = ["tests.servers.fixtures"]
TOKEN = "xoxb-isolation-7777-SECRET"


def _posts_about(slack: SlackApiServer, name: str) -> list[dict[str, Any]]:
    posts = [c.payload for c in slack.calls_to("chat.postMessage", ok_only=True)]
    return [p for p in posts if name in p.get("text", "") + json.dumps(p.get("blocks", []))]


def _bomb(path: Path, side: int = 7936) -> Path:
    """A 180 KB TIFF whose one tile declares side x side RGB pixels: within the pixel limit, so
    OpenSlide decodes it, allocating ~250 MB for a file that holds next to nothing."""
    tifffile.imwrite(
        path, np.zeros((side, side, 3), np.uint8), tile=(side, side), compression="zlib", photometric="rgb"
    )
    return path


@pytest.fixture
def make_site(
    tmp_path: Path, slack: SlackApiServer, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., tuple[Any, Path]]]:
    """An agent (real Services) with Slack alerts; keyword arguments are ``[scanner]`` keys."""
    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    agents: list[Any] = []

    def build(**scanner: Any) -> tuple[Any, Path]:
        cfg = write_config(
            tmp_path / "site",
            name=f"Iso-{os.urandom(3).hex()}",
            scanner=scanner,
            alerts={"slack_channel": "#slide-scanning", "slack_api_url": slack.url},
        )
        agent = make_agent(cfg)
        agents.append(agent)
        return agent, cfg

    yield build
    for a in agents:
        a.close()


class FifoTrap:
    """A slide that blocks whoever parses it: at ``path`` a FIFO while the scan runs; once a worker
    is inside the parse (blocked reading it), the slide's bytes take its place again, so the
    quarantine moves a real file and the journal's fingerprint still matches."""

    def __init__(self, path: Path, content: bytes) -> None:
        self.path = path
        self.content = content
        path.write_bytes(content)
        self.stat = path.stat()
        self.writer: int | None = None
        self.inode = 0
        self.armed = threading.Event()

    def arm(self) -> None:
        fifo = self.path.with_name(self.path.name + ".fifo")
        os.mkfifo(fifo)
        self.inode = fifo.stat().st_ino
        os.rename(fifo, self.path)
        self.armed.set()

    def wait_for_reader(self, timeout: float = 60) -> int:
        """Block until a process is reading the FIFO; put the real file back; return that pid."""
        assert self.armed.wait(timeout), "the FIFO was never put in place"
        end = time.monotonic() + timeout
        while self.writer is None:
            try:  # succeeds only once a reader has the FIFO open (or is opening it)
                self.writer = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO or time.monotonic() > end:
                    raise
                time.sleep(0.02)
        pid = wait_for(self._reader_pid, 30, "the process reading the FIFO")
        tmp = self.path.with_name(self.path.name + ".real")
        tmp.write_bytes(self.content)
        os.utime(tmp, ns=(self.stat.st_atime_ns, self.stat.st_mtime_ns))
        os.rename(tmp, self.path)
        return pid

    def _reader_pid(self) -> int | None:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                for fd in (proc / "fd").iterdir():
                    if os.stat(fd).st_ino == self.inode:
                        return int(proc.name)
            except OSError:
                continue
        return None

    def close(self) -> None:
        if self.writer is not None:
            os.close(self.writer)


def _in_background(fn: Callable[[], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # reported by the test
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    out["thread"] = t
    return out


def _assert_quarantined_and_agent_goes_on(
    agent: Any, slack: SlackApiServer, rec: Any, src: Path, words: str, good_name: str
) -> None:
    assert (rec.state, rec.kind) == ("quarantined", SlideReaderCrashed.kind), (
        rec.state,
        rec.kind,
        rec.reason,
    )
    assert str(src) in rec.reason and words in rec.reason, rec.reason
    quarantined = Path(rec.details["quarantined_to"])
    assert quarantined.is_file() and not src.exists()
    posts = _posts_about(slack, src.name)
    assert len(posts) == 1, posts
    assert words in json.dumps(posts[0])
    # The same agent, in the same process, stores the next scan with a fresh worker.
    good = write_svs(src.parent / good_name, width=1024, height=768)
    [ok] = process(agent, good)
    assert ok.state == "stored", (ok.state, ok.reason)
    assert Path(ok.dest).is_file()


def test_a_worker_killed_by_sigsegv_mid_parse_quarantines_the_slide(
    make_site: Callable[..., tuple[Any, Path]], slack: SlackApiServer
) -> None:
    agent, _cfg = make_site(slide_timeout_seconds=60)
    src = agent.cfg.scanner.watch / "620995_crash.svs"
    trap = FifoTrap(src, write_corrupt(src.with_suffix(".tmp"), "garbage").read_bytes())
    killed: list[int] = []

    def crash_it() -> None:
        pid = trap.wait_for_reader()
        assert pid in agent.slide_reader.workers.pids(), "the parse is not in a worker process"
        killed.append(pid)
        os.kill(pid, signal.SIGSEGV)

    trap_thread = _in_background(crash_it)
    try:
        rec = _run(agent, _record_then_arm(agent, trap))
    finally:
        trap_thread["thread"].join(60)
        trap.close()
    assert "error" not in trap_thread, trap_thread.get("error")
    assert killed and killed[0] != os.getpid()
    assert "OpenSlide crashed (SIGSEGV) reading it" in rec.reason
    assert killed[0] not in agent.slide_reader.workers.pids()  # replaced by a fresh worker
    _assert_quarantined_and_agent_goes_on(agent, slack, rec, src, "crashed (SIGSEGV)", "645750_next.svs")


def test_a_slide_that_hangs_the_parser_times_out_and_is_quarantined(
    make_site: Callable[..., tuple[Any, Path]], slack: SlackApiServer
) -> None:
    agent, _cfg = make_site(slide_timeout_seconds=3)
    src = agent.cfg.scanner.watch / "620995_hang.svs"
    trap = FifoTrap(src, write_corrupt(src.with_suffix(".tmp"), "garbage").read_bytes())
    # The FIFO stays open for writing and nothing is ever written: the parse blocks until killed.
    trap_thread = _in_background(trap.wait_for_reader)
    try:
        rec = _run(agent, _record_then_arm(agent, trap))
    finally:
        trap_thread["thread"].join(60)
        trap.close()
    assert "error" not in trap_thread, trap_thread.get("error")
    hung = trap_thread["value"]
    assert "reading it took longer than 3 s" in rec.reason, rec.reason
    assert not Path(f"/proc/{hung}").exists() or hung not in agent.slide_reader.workers.pids()
    _assert_quarantined_and_agent_goes_on(agent, slack, rec, src, "took longer than 3 s", "645750_next.svs")


def test_a_decompression_bomb_against_a_small_memory_cap_is_quarantined(
    make_site: Callable[..., tuple[Any, Path]], slack: SlackApiServer
) -> None:
    agent, _cfg = make_site(slide_memory_mb=384)
    src = _bomb(agent.cfg.scanner.watch / "620995_bomb.tif")
    [rec] = process(agent, src)
    assert "384 MB" in rec.reason and "slide_memory_mb" in rec.reason, rec.reason
    _assert_quarantined_and_agent_goes_on(agent, slack, rec, src, "SIGABRT", "645750_next.svs")


def test_the_daemon_survives_a_bomb_and_stores_the_next_scan_without_restarting(
    tmp_path: Path, slack: SlackApiServer, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    cfg = write_config(
        tmp_path / "site",
        name=f"IsoD-{os.urandom(3).hex()}",
        scanner={"slide_memory_mb": 384, "settle_seconds": 0.3},
        alerts={"slack_channel": "#slide-scanning", "slack_api_url": slack.url},
    )
    watch = tmp_path / "site" / "scanner"
    with DaemonProcess(cfg, tmp_path / "daemon.log") as daemon:
        daemon.wait_watching()
        pid = daemon.pid
        staged = _bomb(tmp_path / "620995_bomb.tif")
        os.rename(staged, watch / staged.name)
        journal = daemon.cfg.journal.path
        bad = wait_for(
            lambda: [
                r for r in records(journal) if r.path.endswith("620995_bomb.tif") and r.state == "quarantined"
            ],
            120,
            "the bomb quarantined",
            alive=daemon,
        )[0]
        assert bad.kind == SlideReaderCrashed.kind and "620995_bomb.tif" in bad.reason, bad.reason
        staged = write_svs(tmp_path / "645750_next.svs", width=1024, height=768)
        os.rename(staged, watch / staged.name)
        wait_for(
            lambda: [
                r for r in records(journal) if r.path.endswith("645750_next.svs") and r.state == "stored"
            ],
            120,
            "the next scan stored",
            alive=daemon,
        )
        assert daemon.pid == pid and daemon.returncode() is None  # zero agent restarts
        assert len(_posts_about(slack, "620995_bomb.tif")) == 1
        assert daemon.terminate(120) == 0, daemon.log_tail()


def _record_then_arm(agent: Any, trap: FifoTrap) -> int:
    """Record the scan as the real file it is (size, mtime), then put the FIFO in its place."""
    from scanner_agent.scanunit import ScanUnit

    fp = ScanUnit.from_path(trap.path).fingerprint()
    rec, _new = agent.journal.record_ready(str(trap.path), fp.total_size, fp.newest_mtime_ns)
    trap.arm()
    return int(rec.id)


def _run(agent: Any, scan_id: int) -> Any:
    """Run the scan's flow as the daemon's dispatcher does; its journal row afterwards."""
    from scanner_agent.orchestration.runs import run_scan

    asyncio.run(run_scan(agent, scan_id))
    return agent.journal.get(scan_id)


def test_errors_cross_from_the_worker_as_the_same_class_with_the_same_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re

    from scanner_agent.core import errors
    from scanner_agent.pipeline import IsolatedSlideReader, OpenSlideReader
    from scanner_agent.scanunit import ScanUnit

    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    direct = OpenSlideReader()
    isolated = IsolatedSlideReader(OpenSlideReader(), memory_mb=2048, timeout_seconds=60)
    try:
        bad = ScanUnit.from_path(write_corrupt(tmp_path / "slide_bad.svs", "truncated"))
        caught: list[errors.ScanError] = []
        for reader in (direct, isolated):
            with pytest.raises(errors.CorruptSlide) as corrupt:
                reader.validate(bad)
            caught.append(corrupt.value)
        assert type(caught[0]) is type(caught[1]) and caught[0].message == caught[1].message
        assert caught[1].path == caught[0].path and caught[1].action == caught[0].action
        regex = re.compile(r"(?P<barcode>\d{6})")
        with pytest.raises(errors.NoBarcode) as none:
            isolated.find_barcode(bad, regex, sources=("name", "metadata"), keep_label=False)
        assert str(bad.primary) in none.value.message and none.value.path == str(bad.primary)
        good = ScanUnit.from_path(write_svs(tmp_path / "slide_good.svs", width=1024, height=768))
        info = isolated.validate(good)
        assert info == direct.validate(good) and info.properties["openslide.vendor"] == "aperio"
        # The worker parses untrusted files: it never holds the agent's secrets.
        [pid] = isolated.workers.pids()
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert TOKEN.encode() not in environ and b"SLACK_BOT_TOKEN" not in environ
    finally:
        isolated.close()
