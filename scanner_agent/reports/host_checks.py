"""``check``'s look at the host: what is risky in how the agent is set up, though it would run.

Each function returns warning lines (empty when all is well): the watch folder and storage on one
filesystem while the source is removed after storing, a secret file the service's user cannot
read, and a clock that disagrees with the Prefect server's.
"""

from __future__ import annotations

import email.utils
import grp
import os
import pwd
import stat
import time
from pathlib import Path
from typing import Any

from scanner_agent.config import AgentConfig

#: The user the shipped unit runs as (``User=`` in systemd/scanner-agent@.service).
SERVICE_USER = "scanner-agent"


def shared_filesystem(cfg: AgentConfig) -> list[str]:
    """The watch folder and storage root on one filesystem while the source is removed after storing:
    the stored file is then the only copy, on the scanner's own disk, and freeing it frees nothing."""
    if not getattr(cfg.storage, "remove_source", True):  # today the agent always removes the source
        return []
    try:
        watch, root = os.stat(cfg.scanner.watch), os.stat(cfg.storage.root)
    except OSError:
        return []  # a missing folder is reported by its own check
    if watch.st_dev != root.st_dev:
        return []
    return [
        f"scanner.watch {cfg.scanner.watch} and storage.root {cfg.storage.root} are on one filesystem "
        "and the source is removed once stored: the stored image is then the only copy, on the "
        "scanner's own disk; point storage.root at the storage share"
    ]


def _can_read(path: Path, uid: int, gids: set[int]) -> bool:
    """Whether a process of ``uid`` in ``gids`` may read ``path`` (and search every folder above it),
    judged from the modes: what the kernel would answer that user, without being them."""
    if uid == 0:
        return True
    chain = [path, *path.parents]
    for i, p in enumerate(chain):
        st = os.stat(p)
        want = stat.S_IRUSR if i == 0 else stat.S_IXUSR  # read the file, search each folder
        if st.st_uid == uid:
            ok = bool(st.st_mode & want)
        elif st.st_gid in gids:
            ok = bool(st.st_mode & (want >> 3))
        else:
            ok = bool(st.st_mode & (want >> 6))
        if not ok:
            return False
    return True


def credentials_readable(path: Path, key: str, user: str = SERVICE_USER) -> list[str]:
    """``path`` (a secret file) cannot be read by the unit's ``user``; nothing when that user does not
    exist here (a development machine) or the file is missing (its own check says so)."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return []
    gids = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    try:
        if os.getuid() == pw.pw_uid:
            readable = os.access(path, os.R_OK)
        else:
            readable = _can_read(Path(os.path.abspath(path)), pw.pw_uid, gids)
    except OSError:
        return []
    if readable:
        return []
    return [
        f"{key} {path} cannot be read by the service's user {user}: `run` under systemd will fail to "
        f"load it (chown {user} it and keep mode 600, or pass it with LoadCredential=, systemd/README.md)"
    ]


def clock_skew(client: Any) -> float | None:
    """Seconds the Prefect server's clock is ahead of ours (negative: behind), from the ``Date``
    header of its health endpoint, timed from the middle of the request; None without that header.
    ``client`` is Prefect's synchronous client (its httpx client keeps auth and TLS settings)."""
    before = time.time()
    response = client._client.get("/health")
    after = time.time()
    date = response.headers.get("date")
    if not date:
        return None
    try:
        server = email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return None
    # The header has whole seconds: up to 1 s of the difference is its rounding.
    return server - (before + after) / 2
