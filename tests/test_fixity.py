"""Fixity on real files: scans stored by ``place_scan`` (with a rescan and a MIRAX scan), then
damaged the ways storage gets damaged, then ``verify`` (the CLI, the pass, the background timer)
and GNU ``sha256sum -c`` on the ``SHA256SUMS`` files kept beside them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scanner_agent.config import load_config
from scanner_agent.journal import FixityLog, Journal
from scanner_agent.reports.status import gather_status, render_status
from scanner_agent.reports.verify import EXIT_PROBLEMS, EXIT_SHARE_GONE, exit_code, run_verify
from scanner_agent.scanunit import ScanUnit
from scanner_agent.service.fixity import FixityTimer, verify_pass
from scanner_agent.storage import TokenBucket, place_scan
from tests.harness import write_config

MARKER = ".scanner-agent-storage"
FOLDER = "Prec01/Run-2"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@dataclass
class Site:
    config: Path
    root: Path
    dest: Path
    svs: Path  # the current scan of barcode 111111 (a rescan)
    old_svs: Path  # the one it superseded
    mrxs: Path
    data: Path  # one data file of the MIRAX scan

    def verify(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "scanner_agent.cli", "verify", "--config", str(self.config), *args],
            capture_output=True,
            text=True,
        )


def store(site_root: Path, src_dir: Path) -> tuple[Path, Path, Path]:
    dest = site_root / FOLDER
    meta = {"barcode": "111111", "scanner": "Cardinal"}
    first = write(src_dir / "a1.svs", os.urandom(300_000))
    os.utime(first, (1_700_000_000,) * 2)
    place_scan(ScanUnit.from_path(first), dest, "S_111111.svs", sidecar=meta)
    again = write(src_dir / "a2.svs", os.urandom(200_000))
    place_scan(ScanUnit.from_path(again), dest, "S_111111.svs", sidecar=meta, supersede=dest / "S_111111.svs")
    write(src_dir / "m.mrxs", b"[GENERAL]\nmrxs")
    write(src_dir / "m" / "Slidedat.ini", b"[GENERAL]\nSLIDE_CREATION_FINISHED = True\n")
    write(src_dir / "m" / "Data0000.dat", os.urandom(400_000))
    write(src_dir / "m" / "Data0001.dat", os.urandom(100_000))
    mmeta = {"barcode": "222222", "scanner": "Cardinal"}
    place_scan(ScanUnit.from_path(src_dir / "m.mrxs"), dest, "S_222222.mrxs", sidecar=mmeta)
    [old] = (dest / "superseded").glob("*.svs")
    return dest / "S_111111.svs", old, dest / "S_222222.mrxs"


@pytest.fixture
def site(tmp_path: Path) -> Site:
    cfg = write_config(tmp_path / "agent", storage={"marker_file": MARKER})
    root = tmp_path / "agent" / "storage"
    (root / MARKER).touch()
    svs, old, mrxs = store(root, tmp_path / "src")
    return Site(cfg, root, root / FOLDER, svs, old, mrxs, root / FOLDER / "S_222222" / "Data0000.dat")


def sha256sum_c(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=folder, capture_output=True, text=True)


def flip_byte(path: Path, offset: int = 1000) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


def outcomes(result: Any) -> dict[str, str]:
    return {c.path: c.outcome for c in result.checks}


# --------------------------------------------------------------------------- SHA256SUMS


def test_sha256sums_kept_in_step_and_checked_by_gnu_sha256sum(site: Site) -> None:
    live = sha256sum_c(site.dest)
    assert live.returncode == 0, live.stdout + live.stderr
    assert sorted(live.stdout.splitlines()) == sorted(
        f"{rel}: OK"
        for rel in (
            "S_111111.svs",
            "S_222222.mrxs",
            "S_222222/Data0000.dat",
            "S_222222/Data0001.dat",
            "S_222222/Slidedat.ini",
        )
    )
    sup = sha256sum_c(site.dest / "superseded")  # the superseded image has its own, under its new name
    assert sup.returncode == 0 and sup.stdout == f"{site.old_svs.name}: OK\n", sup.stdout + sup.stderr
    assert f"  {site.svs.name}\n" in (site.dest / "SHA256SUMS").read_text()
    got = site.verify()
    assert got.returncode == 0, got.stdout + got.stderr
    assert "verified    " + str(site.old_svs) in got.stdout  # superseded images are verified too
    assert "6 file(s)" in got.stdout and "verified 6" in got.stdout


def test_a_resumed_store_leaves_one_line_per_file(site: Site, tmp_path: Path) -> None:
    """Placing the same bytes again (a resumed run) must not duplicate or lose lines."""
    again = write(tmp_path / "src2" / "x.svs", site.svs.read_bytes())
    place_scan(ScanUnit.from_path(again), site.dest, site.svs.name, sidecar={"barcode": "111111"})
    text = (site.dest / "SHA256SUMS").read_text()
    assert text.count(site.svs.name + "\n") == 1 and len(text.splitlines()) == 5
    assert sha256sum_c(site.dest).returncode == 0


# --------------------------------------------------------------------------- bad input


def test_a_flipped_byte_is_mismatched_with_both_hashes(site: Site) -> None:
    before = sha(site.data.read_bytes())
    flip_byte(site.data)
    result = run_verify(load_config(site.config))
    got = {c.path: c for c in result.checks}
    bad = got[str(site.data)]
    assert bad.outcome == "mismatched" and bad.expected == before
    assert bad.found == sha(site.data.read_bytes()) != before
    assert [c.outcome for p, c in got.items() if p != str(site.data)] == ["verified"] * 5
    assert exit_code(result) == EXIT_PROBLEMS
    cli = site.verify()
    assert cli.returncode == 1
    assert f"mismatched  {site.data}" in cli.stdout and before in cli.stdout
    assert sha256sum_c(site.dest).returncode == 1  # and the standard tool agrees


def test_a_deleted_file_is_missing(site: Site) -> None:
    site.svs.unlink()
    cli = site.verify("--json")
    assert cli.returncode == 1
    report = json.loads(cli.stdout)
    [missing] = [f for f in report["files"] if f["outcome"] == "missing"]
    assert missing["path"] == str(site.svs) and missing["barcode"] == "111111"
    assert report["counts"]["missing"] == 1 and report["counts"]["verified"] == 5


def test_a_hand_edited_sha256sums_is_reported_and_the_files_still_verify(site: Site) -> None:
    sums = site.dest / "SHA256SUMS"
    lines = sums.read_text().splitlines()
    lines[0] = "0" * 64 + lines[0][64:]
    sums.write_text("\n".join(lines + ["this is not a checksum"]) + "\n")
    result = run_verify(load_config(site.config))
    assert set(outcomes(result).values()) == {"verified"}
    problems = [p["problem"] for p in result.record_problems if p["path"] == str(sums)]
    edited = lines[0][66:]
    assert any(p.startswith(f"lists {edited} as {'0' * 64}, its sidecar says") for p in problems), problems
    assert any("not a sha256sum line" in p for p in problems)
    assert exit_code(result) == EXIT_PROBLEMS


def test_a_missing_sidecar_leaves_the_image_unrecorded_but_checked_against_sha256sums(site: Site) -> None:
    (site.dest / "S_111111.json").unlink()
    result = run_verify(load_config(site.config))
    [c] = [c for c in result.checks if c.path == str(site.svs)]
    assert c.outcome == "unrecorded" and "SHA256SUMS lists it and its bytes match" in c.detail
    assert exit_code(result) == EXIT_PROBLEMS
    flip_byte(site.svs)
    [c] = [c for c in run_verify(load_config(site.config)).checks if c.path == str(site.svs)]
    assert c.outcome == "unrecorded" and "with another sha256" in c.detail


def test_an_unreadable_sidecar_is_named(site: Site) -> None:
    car = site.dest / "S_222222.json"
    car.write_text('{"barcode": "222222", "files": [')  # torn
    result = run_verify(load_config(site.config))
    assert any(p["path"] == str(car) and "sidecar unreadable" in p["problem"] for p in result.record_problems)
    assert outcomes(result)[str(site.mrxs)] == "unrecorded"
    assert outcomes(result)[str(site.data)] == "unrecorded"  # its data files still checked via SHA256SUMS
    assert exit_code(result) == EXIT_PROBLEMS


def test_share_gone_before_verify_reports_nothing_corrupt(site: Site) -> None:
    (site.root / MARKER).unlink()
    cli = site.verify()
    assert cli.returncode == EXIT_SHARE_GONE
    assert "storage share is gone" in cli.stdout and "no file is reported as corrupt" in cli.stdout
    assert "missing" not in cli.stdout and "mismatched" not in cli.stdout
    shutil.rmtree(site.root)
    cli = site.verify("--json")
    assert cli.returncode == EXIT_SHARE_GONE and json.loads(cli.stdout)["files"] == []


def _mount_tmpfs(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(path)]).returncode == 0


def test_share_unmounted_during_verify_says_the_share_is_gone(tmp_path: Path) -> None:
    """A real tmpfs share, lazily unmounted after the first file is checked."""
    root = tmp_path / f"share-{uuid.uuid4().hex[:6]}"
    if os.geteuid() != 0 or not _mount_tmpfs(root):
        pytest.skip("needs root to mount a tmpfs share")
    try:
        (root / MARKER).touch()
        store(root, tmp_path / "src")
        seen: list[str] = []

        def unmount_after_first(c: Any) -> None:
            seen.append(c.outcome)
            if len(seen) == 1:
                subprocess.run(["umount", "-l", str(root)], check=True)

        result = verify_pass(root, MARKER, None, by="test", on_check=unmount_after_first)
        assert result.share_gone is not None and "storage share is gone" in result.share_gone
        assert seen == ["verified"]  # nothing after the unmount was judged
        assert not result.problems
    finally:
        subprocess.run(["umount", "-l", str(root)], capture_output=True)


# --------------------------------------------------------------------------- background and status


def test_background_pass_alerts_once_with_both_hashes_and_status_shows_it(site: Site) -> None:
    cfg = load_config(site.config)
    alerts: list[tuple[str, str, dict[str, Any]]] = []
    now = [time.time()]
    timer = FixityTimer(
        cfg, lambda kind, msg, **kw: alerts.append((kind, msg, kw)), threading.Event(), clock=lambda: now[0]
    )
    Journal(cfg.journal.path).close()  # the daemon's journal, as it exists before the timer starts
    fixity = FixityLog(cfg.journal.path)
    try:
        # Just stored: verified at store time, nothing is due yet; the next pass is ~30 days away.
        wait = timer.run_pass(fixity)
        assert fixity.last_checked() == {} and wait == 86400.0
        before = sha(site.data.read_bytes())
        flip_byte(site.data)
        site.svs.unlink()
        now[0] += 31 * 86400
        timer.run_pass(fixity)
        kinds = {kind: kw for kind, _msg, kw in alerts}
        assert set(kinds) == {"stored_file_changed", "stored_file_missing"}
        changed = kinds["stored_file_changed"]
        assert changed["file"] == str(site.data)
        assert changed["details"]["expected sha256"] == before
        assert changed["details"]["found sha256"] == sha(site.data.read_bytes())
        assert kinds["stored_file_missing"]["file"] == str(site.svs)
        assert len(fixity.last_checked()) == 6
        # Checked again 31 days later: the same damage does not alert again.
        now[0] += 31 * 86400
        timer.run_pass(fixity)
        assert len(alerts) == 2
    finally:
        fixity.close()
    st = gather_status(cfg)
    assert st["verification"]["by"] == "background" and st["verification"]["problems"] == 2
    text = render_status(st)
    assert "verification: last" in text and f"mismatched: {site.data}" in text


def test_background_leaves_other_scanners_scans_alone(site: Site, tmp_path: Path) -> None:
    other = write(tmp_path / "src3" / "o.svs", os.urandom(1000))
    place_scan(ScanUnit.from_path(other), site.dest, "R_333333.svs", sidecar={"scanner": "Raven"})
    cfg = load_config(site.config)
    now = time.time() + 31 * 86400
    timer = FixityTimer(cfg, lambda *a, **k: None, threading.Event(), clock=lambda: now)
    Journal(cfg.journal.path).close()
    fixity = FixityLog(cfg.journal.path)
    try:
        timer.run_pass(fixity)
        checked = fixity.last_checked()
    finally:
        fixity.close()
    assert len(checked) == 6 and str(site.dest / "R_333333.svs") not in checked


class _Waits:
    """A stop event that records how long the bucket asked to wait."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        return False

    def is_set(self) -> bool:
        return False


def test_token_bucket_holds_the_rate() -> None:
    stop = _Waits()
    bucket = TokenBucket(1e6, stop=stop, clock=lambda: 0.0)  # type: ignore[arg-type]
    for _ in range(5):
        assert bucket.take(1_000_000)
    # The first second's worth is free; each further MB waits for its second.
    assert stop.waits == pytest.approx([1.0, 2.0, 3.0, 4.0])


def test_verify_help_documents_the_exit_codes() -> None:
    out = " ".join(
        subprocess.run(
            [sys.executable, "-m", "scanner_agent.cli", "verify", "--help"], capture_output=True, text=True
        ).stdout.split()
    )
    assert "3 the storage share is" in out and "1 a file missing" in out and "--since" in out
