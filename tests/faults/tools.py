"""What the fault tests share: real tmpfs mounts, a filesystem filled to the last page, inotify
triggers, scan bytes, and the invariants every fault must leave intact (nothing lost, nothing
stored twice, nothing half-written visible).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import sqlite3
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# The fault suites list storage through this module, as they list everything else here.
from tests.storage_listing import stored_files as stored_files

TOKEN = "xoxb-fault-token"
CHANNEL = "#slide-scanning"


# --------------------------------------------------------------------------- mounts


def mount_tmpfs(where: Path, options: str) -> None:
    """Mount a tmpfs at ``where``; skip the test (with the reason) where mounting is not allowed."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {where}: {proc.stderr.strip()}")


def remount(where: Path, options: str) -> None:
    subprocess.run(
        ["mount", "-o", f"remount,{options}", str(where)], check=True, capture_output=True, timeout=30
    )


def umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True, timeout=30)


# --------------------------------------------------------------------------- filling a filesystem


def fill(folder: Path, name: str = "filler.bin") -> Path:
    """Take every free byte of ``folder``'s filesystem with one preallocated file; returns it.

    ``posix_fallocate`` reserves pages at once (no data written), so a tmpfs is full within
    microseconds, even while another writer is racing for the same space.
    """
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        offset, step = os.fstat(fd).st_size, 1 << 20
        while step >= 4096:
            try:
                os.posix_fallocate(fd, offset, step)
                offset += step
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                step //= 2
    finally:
        os.close(fd)
    return path


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


# --------------------------------------------------------------------------- inotify


_IN_CREATE = 0x100
_IN_MOVED_TO = 0x80
_libc = ctypes.CDLL(None, use_errno=True)


class OnCreate(threading.Thread):
    """Calls ``action(path)`` the moment an entry whose name ends with ``suffix`` is created in ``folder``.

    inotify wakes this thread as the transfer's ``open(O_CREAT)`` returns, so the action runs
    while the copy is under way rather than before or after it.
    """

    def __init__(self, folder: Path, suffix: str, action: Callable[[Path], None]) -> None:
        super().__init__(name=f"on-create {folder}", daemon=True)
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.suffix, self.action = folder, suffix, action
        self.fired: list[Path] = []
        self.error: BaseException | None = None
        self._fd = _libc.inotify_init1(os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if _libc.inotify_add_watch(self._fd, os.fsencode(folder), _IN_CREATE | _IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder} failed")
        self._stop_r, self._stop_w = os.pipe()
        self.start()

    def run(self) -> None:
        import select

        try:
            while not self.fired:
                ready, _, _ = select.select([self._fd, self._stop_r], [], [])
                if self._stop_r in ready:
                    return
                data = os.read(self._fd, 65536)
                for name in _names(data):
                    if name.endswith(self.suffix) and not self.fired:
                        path = self.folder / name
                        self.action(path)
                        self.fired.append(path)
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.error = exc
        finally:
            os.close(self._fd)

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self.join(10)
        os.close(self._stop_r)
        os.close(self._stop_w)


def _names(data: bytes) -> Iterator[str]:
    offset = 0
    while offset + 16 <= len(data):
        _wd, _mask, _cookie, length = struct.unpack_from("iIII", data, offset)
        raw = data[offset + 16 : offset + 16 + length].rstrip(b"\0")
        offset += 16 + length
        if raw:
            yield os.fsdecode(raw)


# --------------------------------------------------------------------------- scans and storage


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def unique_variant(slide: bytes, tag: str) -> bytes:
    """The slide with a short tag after its TIFF structure: OpenSlide reads it as before, but every
    variant has its own sha256, so a mix-up between two scans cannot go unnoticed."""
    return slide + f"\nscan:{tag}\n".encode()


def leftovers(*roots: Path) -> list[Path]:
    """Entries in any ``.incoming`` folder under ``roots``: partial copies a transfer left behind."""
    out: list[Path] = []
    for root in roots:
        if not root.exists():
            continue
        for dirpath, _dirs, _files in os.walk(root):
            if Path(dirpath).name == ".incoming":
                out += [Path(dirpath, n) for n in os.listdir(dirpath)]
    return out


def scans_left(watch: Path) -> list[Path]:
    """Slide files still in the scanner's folder (quarantine included)."""
    return sorted(
        p for p in watch.rglob("*") if p.is_file() and p.suffix.lower() in (".svs", ".tif", ".mrxs")
    )


def journal_integrity(path: Path) -> str:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


def sidecar(dest: Path) -> dict[str, Any]:
    return json.loads(dest.with_suffix(".json").read_text())


# --------------------------------------------------------------------------- alerts


@dataclass
class SlackView:
    """The alerts one scanner posted to the local Slack server, as (title, text) pairs."""

    posts: list[tuple[str, str]] = field(default_factory=list)

    def titles(self) -> list[str]:
        return [t for t, _ in self.posts]

    def with_title(self, words: str) -> list[tuple[str, str]]:
        return [(t, x) for t, x in self.posts if words in t]


def slack_posts(slack: Any, scanner: str) -> SlackView:
    view = SlackView()
    for call in slack.calls_to("chat.postMessage", ok_only=True):
        blocks = call.payload.get("blocks") or []
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        title = next((b["text"]["text"] for b in blocks if b.get("type") == "header"), "")
        if title.endswith(f" on {scanner}"):
            view.posts.append((title, str(call.payload.get("text", ""))))
    return view


def alerts_section(slack: Any, token_file: Path) -> dict[str, Any]:
    """The ``[alerts]`` section that points an agent at the local Slack server."""
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    return {"slack_channel": CHANNEL, "slack_api_url": slack.url, "slack_token_file": str(token_file)}
