"""Low I/O priority for the transfer threads: ``ioprio_set(2)`` through ctypes, and one warning if refused.

The scanner writes to the disk the agent reads from; with the transfers in the best-effort class
at level 7, or in the idle class, the kernel's I/O scheduler (BFQ, mq-deadline's priorities)
serves the scanner first. ``ioprio_set`` with ``IOPRIO_WHO_PROCESS`` and who = 0 applies to the
calling thread only, so the copy engine calls ``apply_quietly`` in each thread it starts.
A container may refuse it (EPERM, or a seccomp filter): ``check`` says so once, at start, and the
agent runs on at normal priority.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import platform

log = logging.getLogger(__name__)

#: ``SYS_ioprio_set`` by machine (``uname -m``); absent: not supported here.
SYSCALL_NUMBERS = {"x86_64": 251, "aarch64": 30, "i686": 289, "i386": 289, "armv7l": 314, "ppc64le": 273}
IOPRIO_WHO_PROCESS = 1
IOPRIO_CLASS_SHIFT = 13
#: The class names a configuration may give, and their kernel numbers.
CLASSES = {"realtime": 1, "best-effort": 2, "idle": 3}

_libc = ctypes.CDLL(None, use_errno=True)


class IoPriority:
    """One I/O scheduling class and level (0..7, best-effort only; the idle class has no level)."""

    def __init__(self, io_class: str = "best-effort", level: int = 7, *, class_number: int | None = None):
        self.io_class, self.level = io_class, level
        #: ``class_number`` overrides the lookup (tests give the kernel a value it refuses).
        self._class = class_number if class_number is not None else CLASSES[io_class]
        self.refused: str | None = None

    @property
    def value(self) -> int:
        return (self._class << IOPRIO_CLASS_SHIFT) | (self.level if self._class != CLASSES["idle"] else 0)

    def __str__(self) -> str:
        return self.io_class if self.io_class == "idle" else f"{self.io_class} {self.level}"

    def apply(self) -> None:
        """Set the calling thread's I/O priority; OSError when the kernel refuses."""
        _set(self.value, str(self))

    def check(self) -> bool:
        """Try it once at start on the calling thread, then put that thread's priority back (threads
        started later inherit it, and the journal's fsyncs must not wait behind the scanner).
        Log one warning and remember if refused."""
        before = current()
        try:
            self.apply()
            if before >= 0:
                _set(before, "the previous priority")
        except OSError as exc:
            self.refused = exc.strerror or str(exc)
            log.warning(
                "transfers run at normal I/O priority: the kernel refused %s (%s); "
                "in a container this needs CAP_SYS_NICE or a looser seccomp profile",
                self,
                self.refused,
            )
            return False
        return True

    def apply_quietly(self) -> None:
        """In a transfer thread: apply it unless ``check`` found it refused (already warned once)."""
        if self.refused is not None:
            return
        try:
            self.apply()
        except OSError as exc:
            self.refused = exc.strerror or str(exc)
            log.warning("transfers run at normal I/O priority: %s", self.refused)


def _set(value: int, what: str) -> None:
    number = SYSCALL_NUMBERS.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, f"ioprio_set: unknown syscall number on {platform.machine()}")
    if _libc.syscall(number, IOPRIO_WHO_PROCESS, 0, value) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"ioprio_set({what}): {os.strerror(err)}")


def current() -> int:
    """The calling thread's I/O priority value (``ioprio_get``), for tests and the bench."""
    number = {"x86_64": 252, "aarch64": 31, "i686": 290, "i386": 290, "armv7l": 315, "ppc64le": 274}.get(
        platform.machine()
    )
    if number is None:
        return -1
    return int(_libc.syscall(number, IOPRIO_WHO_PROCESS, 0))
