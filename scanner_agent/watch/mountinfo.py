"""Which filesystem holds the watch folder, and so which watchdog observer can see its changes.

inotify only sees writes made through this machine's kernel; on a network share or a FUSE mount
another machine (the scanner) writes, so the folder must be polled instead. The filesystem type
comes from ``/proc/self/mountinfo``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from scanner_agent.core.errors import ConfigError

#: Filesystems where inotify does not see changes made by other machines: poll them instead.
#: ``fuse.*`` (sshfs, rclone, s3fs, gcsfuse, vmhgfs) is matched by prefix in ``choose_observer``.
NETWORK_FS: frozenset[str] = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smb2",
        "smbfs",
        "9p",
        "afs",
        "ceph",
        "glusterfs",
        "sshfs",
        "fuse",
        "lustre",
        "gpfs",
        "beegfs",
        "ocfs2",
        "gfs2",
        "davfs",
        "ncpfs",
        "coda",
        "virtiofs",
        "vboxsf",
        "vmhgfs",
        "drvfs",
        "pvfs2",
        "orangefs",
    }
)

OBSERVER_SETTINGS = ("auto", "inotify", "polling")


def _unescape_mountinfo(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo (octal).
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and all(c in "01234567" for c in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[tuple[str, str]]:
    """(mount point, filesystem type) for each line of a ``/proc/<pid>/mountinfo`` text.

    A line is ``id parent maj:min root mount-point options [optional…] - fstype source super``;
    the optional fields vary in number, so the type is found after the lone ``-``.
    """
    mounts: list[tuple[str, str]] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 7 or "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        if sep + 1 < len(fields):
            mounts.append((_unescape_mountinfo(fields[4]), fields[sep + 1]))
    return mounts


def filesystem_type(path: Path, *, mountinfo: str | None = None) -> str:
    """The type (``ext4``, ``nfs4``, ``tmpfs`` …) of the filesystem holding ``path``.

    Longest mount-point prefix in ``/proc/self/mountinfo`` wins (later mounts shadow earlier
    ones at the same point). ``"unknown"`` where mountinfo cannot be read. ``mountinfo`` may be
    given as text (tests, or another process's view).
    """
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return "unknown"
    target = os.path.realpath(path)  # a missing path still resolves lexically
    best, best_type = -1, "unknown"
    for mount_point, fstype in parse_mountinfo(mountinfo):
        mp = mount_point.rstrip("/") or "/"
        inside = target == mp or mp == "/" or target.startswith(mp + "/")
        if inside and len(mp) >= best:
            best, best_type = len(mp), fstype
    return best_type


def choose_observer(path: Path, setting: str, *, mountinfo: str | None = None) -> str:
    """``"inotify"`` or ``"polling"`` for a watch folder, from the config setting.

    ``auto`` polls on network and FUSE filesystems (inotify cannot see other machines' writes)
    and where the type cannot be found out (polling always works); otherwise inotify.
    """
    choice = (setting or "").strip().lower()
    if choice not in OBSERVER_SETTINGS:
        raise ConfigError(f"observer = {setting!r} is not one of {', '.join(OBSERVER_SETTINGS)}")
    if choice != "auto":
        return choice
    if not sys.platform.startswith("linux"):
        return "inotify"  # the platform's native observer (FSEvents, ReadDirectoryChangesW)
    fstype = filesystem_type(path, mountinfo=mountinfo)
    if fstype == "unknown" or fstype in NETWORK_FS or fstype.startswith("fuse."):
        return "polling"
    return "inotify"
