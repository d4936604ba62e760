"""The read-back check of a copy: a thread that re-reads each written window from the device and
compares it with the bytes the source hash was computed from.

It trails the copy engine's writer (``copy_engine.py``) by a window: flushes it with ``fdatasync``,
reads it back with ``O_DIRECT`` where the filesystem allows it (the device DMAs straight into an
aligned buffer: no page-cache copy, and no doubt about where the bytes came from), else evicts it
and re-reads it, then drops its pages so a backlog does not push the scanner's pages out.
"""

from __future__ import annotations

import errno
import mmap
import os
import queue
import threading
from pathlib import Path

from scanner_agent.core.errors import StorageUnavailable
from scanner_agent.storage.buffers import give_back_scratch, take_scratch
from scanner_agent.storage.throttle import TransferGate

#: O_DIRECT wants buffers, offsets and lengths aligned to the device's logical block; a page is
#: a multiple of every common one.
ALIGN = mmap.PAGESIZE

#: Tells the verifier the writer gave up; its buffers go back to the pool unchecked.
ABORT = object()


class Verifier(threading.Thread):
    """Compares what storage gives back with the bytes that were written, a window behind the writer.

    Each window is flushed with ``fdatasync`` and then read back with ``O_DIRECT`` (from the
    device, never the page cache), or where the filesystem refuses ``O_DIRECT`` (tmpfs, some
    network filesystems) evicted with ``POSIX_FADV_DONTNEED`` and re-read. The reference is the
    very buffer the source hash was computed from, so equal bytes mean the copy's sha256 is the
    source's, without spending a core on a second sha256.
    """

    def __init__(
        self,
        wfd: int,
        path: Path,
        bufsize: int,
        window_chunks: int,
        from_disk: bool,
        free: queue.Queue[bytearray],
        gate: TransferGate | None = None,
    ) -> None:
        super().__init__(name=f"verify {path.name}", daemon=True)
        self.path, self._wfd, self._bufsize = path, wfd, bufsize
        self._window_chunks, self._from_disk, self._free = window_chunks, from_disk, free
        self._gate = gate
        #: (buffer, offset, length) of each written chunk; None when the file is complete and
        #: fsynced; ABORT when the writer gave up.
        self.chunks: queue.Queue[tuple[bytearray, int, int] | None | object] = queue.Queue()
        self.error: BaseException | None = None
        #: Whether the read-back bypasses the page cache (O_DIRECT); else it follows DONTNEED.
        self.direct = from_disk and bufsize % ALIGN == 0
        self._scratch_size = bufsize
        self._scratch = take_scratch(self._scratch_size)
        self._view = memoryview(self._scratch)

    def _open(self) -> int:
        if self.direct:
            try:
                return os.open(self.path, os.O_RDONLY | os.O_DIRECT)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.direct = False  # tmpfs and some network filesystems refuse O_DIRECT
        return os.open(self.path, os.O_RDONLY)

    def run(self) -> None:
        batch: list[tuple[bytearray, int, int]] = []
        if self._gate is not None:
            self._gate.enter_transfer_thread()
        try:
            rfd = self._open()
        except BaseException as exc:
            self.error, rfd = exc, -1
        try:
            while True:
                item = self.chunks.get()
                if item is ABORT:
                    return
                if item is not None:
                    batch.append(item)  # type: ignore[arg-type]
                if item is None or len(batch) >= self._window_chunks:
                    rfd = self._check(rfd, batch, synced=item is None)
                    batch = []
                if item is None:
                    return
        finally:
            for buf, _off, _n in batch:
                self._free.put(buf)
            if rfd >= 0:
                os.close(rfd)
            self._view.release()
            give_back_scratch(self._scratch_size, self._scratch)

    def _check(self, rfd: int, batch: list[tuple[bytearray, int, int]], synced: bool) -> int:
        """Re-read one window and compare; always hand the buffers back so the writer never waits forever."""
        try:
            if self.error is None and batch:
                start, end = batch[0][1], batch[-1][1] + batch[-1][2]
                if self._from_disk:
                    if not synced:
                        os.fdatasync(self._wfd)  # DONTNEED only drops clean pages
                    # Before a buffered re-read so it comes from the device; with O_DIRECT so
                    # the copy does not crowd the scanner's pages out of memory.
                    os.posix_fadvise(rfd, start, end - start, os.POSIX_FADV_DONTNEED)
                for buf, offset, n in batch:
                    rfd = self._compare(rfd, buf, offset, n)
        except BaseException as exc:
            self.error = exc
        finally:
            for buf, _off, _n in batch:
                self._free.put(buf)
        return rfd

    def _read(self, rfd: int, offset: int, n: int) -> int:
        """Read ``n`` bytes at ``offset`` into the scratch buffer; fewer only at the end of the file."""
        got = 0
        while got < n:  # a short read is legal; an empty one means the file is short
            if self.direct:  # whole aligned blocks; the device returns fewer at the end of the file
                want = min(len(self._scratch), -(-n // ALIGN) * ALIGN)
                k = os.preadv(rfd, [self._view[got:want]], offset + got)
                if k % ALIGN:
                    return got + k
            else:
                k = os.preadv(rfd, [self._view[got:n]], offset + got)
            if k == 0:
                break
            got += k
        return got

    def _compare(self, rfd: int, buf: bytearray, offset: int, n: int) -> int:
        try:
            got = self._read(rfd, offset, n)
        except OSError as exc:
            if not (self.direct and exc.errno == errno.EINVAL):
                raise
            # O_DIRECT opened but refused at read time: fall back to DONTNEED and a buffered read.
            os.close(rfd)
            self.direct = False
            rfd = os.open(self.path, os.O_RDONLY)
            os.posix_fadvise(rfd, offset, 0, os.POSIX_FADV_DONTNEED)
            got = self._read(rfd, offset, n)
        # bytearray == mmap is one memcmp (memoryviews would compare item by item)
        same = (
            got >= n
            and (
                buf == self._scratch  # type: ignore[comparison-overlap]  # both are buffers
                if n == len(buf) == len(self._scratch)
                else buf[:n] == self._scratch[:n]
            )
        )
        if not same:
            raise StorageUnavailable(
                f"verify failed: {self.path} reads back differently from what was written "
                f"in bytes {offset}..{offset + n}",
                path=str(self.path),
            )
        return rfd
