"""The ``SHA256SUMS`` file of a storage folder: its format, and keeping it in step with what is stored.

Each storage folder (and each ``superseded/`` folder) holds a ``SHA256SUMS`` in ``sha256sum -c``
format listing every image file stored there (a MIRAX data file as ``Name/Data0000.dat``, a
DICOM file as ``Name/IM0001.dcm``), so ``sha256sum -c SHA256SUMS`` run in that folder checks
the archive with standard tools, without the agent. Sidecars are not listed: they are records,
not images. The sidecars stay the agent's record of truth; this file is their plain-text mirror.

Every change is a read, edit and atomic replace (``write_atomic``) under a lock shared by every
agent writing that folder (``flock`` on the folder), so a reader sees the old list or the new,
and two agents storing side by side never lose each other's lines.
Lines it cannot parse (a hand edit) are kept as they are: not ours to judge; ``verify`` reports them.
"""

from __future__ import annotations

import fcntl
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

from scanner_agent.fileio import write_atomic

#: The file's name in each storage folder.
SUMS_NAME = "SHA256SUMS"
SUMS_MODE = 0o644

_LINE = re.compile(r"^(\\?)([0-9a-fA-F]{64}) [ *](.+)$")
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def format_line(sha: str, rel: str) -> str:
    """One line as GNU ``sha256sum`` writes it; a name with a backslash or newline is escaped."""
    if "\\" in rel or "\n" in rel or "\r" in rel:
        esc = rel.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        return f"\\{sha}  {esc}\n"
    return f"{sha}  {rel}\n"


def _unescape(name: str) -> str:
    out, i = [], 0
    while i < len(name):
        c = name[i]
        if c == "\\" and i + 1 < len(name):
            nxt = name[i + 1]
            out.append({"n": "\n", "r": "\r", "\\": "\\"}.get(nxt, nxt))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_line(line: str) -> tuple[str, str] | None:
    """(sha256, name) of one line, or None when it is not a ``sha256sum`` line."""
    m = _LINE.match(line.rstrip("\n"))
    if m is None:
        return None
    name = _unescape(m.group(3)) if m.group(1) else m.group(3)
    return m.group(2).lower(), name


def read_sums(path: Path) -> tuple[dict[str, str], list[str]]:
    """(sha256 by name, lines that are not ``sha256sum`` lines). A missing file is empty.

    OSError other than "not there" propagates: the caller says which storage it was.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return {}, []
    entries: dict[str, str] = {}
    bad: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        got = parse_line(line)
        if got is None:
            bad.append(line)
        else:
            entries[got[1]] = got[0]
    return entries, bad


def _render(entries: Mapping[str, str], bad: list[str]) -> bytes:
    body = "".join(format_line(sha, rel) for rel, sha in sorted(entries.items()))
    body += "".join(line + "\n" for line in bad)
    return body.encode("utf-8", errors="surrogateescape")


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Exclusive across threads (a lock per folder) and, where the filesystem allows, processes
    (``flock`` on the folder itself, so no lock file is left behind). Where a folder cannot be
    flocked (some NFS mounts) only this process is serialised; ``verify`` reports a lost line."""
    key = str(folder.absolute())
    with _locks_guard:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock


def in_roots(roots: list[str]) -> Callable[[str], bool]:
    """A predicate: does a listed name belong to one of these top-level names (a file or a folder)?"""
    return lambda rel: any(rel == r or rel.startswith(r + "/") for r in roots)


def edit_sums(
    folder: Path,
    incoming: Path,
    *,
    drop: Callable[[str], bool] = lambda _rel: False,
    add: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Remove the names ``drop`` selects, add ``add``, and replace ``folder/SHA256SUMS`` atomically.

    The caller holds ``folder_lock`` on the folder holding ``incoming``. Returns the entries
    dropped (name -> sha256).
    Nothing is written when nothing changes. An empty list removes the file.
    """
    path = folder / SUMS_NAME
    entries, bad = read_sums(path)
    dropped = {rel: sha for rel, sha in entries.items() if drop(rel)}
    new = {rel: sha for rel, sha in entries.items() if rel not in dropped}
    new.update(add or {})
    if new == entries:
        return dropped
    if not new and not bad:
        path.unlink(missing_ok=True)
    else:
        write_atomic(path, _render(new, bad), tmp_dir=incoming, mode=SUMS_MODE)
    return dropped


def superseded_rel(rel: str, name: str, superseded_as: str) -> str | None:
    """Where a stored file ``rel`` of scan ``name`` is after the scan moved to ``superseded_as``.

    ``Name.svs`` -> ``Name__L.svs``; a MIRAX ``Name/Data0000.dat`` -> ``Name__L/Data0000.dat``;
    a DICOM folder's ``Name/IM1.dcm`` -> ``<superseded_as>/IM1.dcm``. None if ``rel`` is not the scan's.
    """
    if rel == name:
        return superseded_as
    top, _, rest = rel.partition("/")
    if not rest:
        return None
    if top == name:  # a folder scan (DICOM)
        return f"{superseded_as}/{rest}"
    ext = Path(name).suffix
    if ext and top == name[: -len(ext)] and superseded_as.endswith(ext):  # a MIRAX data folder
        return f"{superseded_as[: -len(ext)]}/{rest}"
    return None
