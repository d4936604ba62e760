"""The read-back check of a copy: a thread that re-reads each written window from the device and
checks it against a fast hash of the bytes the source hash was computed from.

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
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import xxhash

from scanner_agent.core.errors import StorageUnavailable
from scanner_agent.storage.buffers import give_back, take_buffers
from scanner_agent.storage.throttle import TransferGate

#: O_DIRECT wants buffers, offsets and lengths aligned to the device's logical block; a page is
#: a multiple of every common one.
ALIGN = mmap.PAGESIZE

#: Tells the verifier the writer gave up.
ABORT = object()


def open_read(path: Path, *, direct: bool) -> tuple[int, bool]:
    """``path`` opened read-only, with ``O_DIRECT`` if ``direct`` and the filesystem allows it
    (tmpfs and some network filesystems refuse); returns the fd and whether it is direct."""
    if direct:
        try:
            return os.open(path, os.O_RDONLY | os.O_DIRECT), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
    return os.open(path, os.O_RDONLY), False


def on_a_device(fd: int) -> bool:
    """Whether ``fd``'s filesystem sits on a block device, whose I/O the device DMAs; False for
    tmpfs and network or FUSE filesystems (no device number), where the kernel copies the bytes."""
    return os.major(os.fstat(fd).st_dev) != 0


class HashObject(Protocol):
    """What ``hashlib.sha256()`` is, as far as the copy needs it."""

    def update(self, data: memoryview, /) -> None: ...


#: A written chunk as the verifier gets it: (offset in the file, length, chunk digest of its bytes).
Written = tuple[int, int, bytes]


def chunk_hash() -> xxhash.xxh3_128:
    """The fast hash (xxh3-128) the read-back is checked against, fed a slice at a time.

    Computed on the writer's side over the very buffer the source sha256 saw, and on the verifier's
    side over what the device returned: equal digests mean the stored bytes are the hashed ones
    (a random or hardware corruption matches with odds of 2**-128), at ~0.04 CPU-s/GB a pass, and
    the writer's buffers go back to the reader at once instead of waiting a window for a memcmp.
    """
    return xxhash.xxh3_128()


#: Slices of a chunk that the hashes (and, for a buffered destination, the write) take in turn: small
#: enough to stay in this core's L2 cache from one to the next, large enough that hashlib and
#: os.write release the GIL for each. Measured with ``bench.transfer`` disk -> tmpfs: 256 KiB took
#: 1.30-1.34 CPU-s/GB, 128 KiB 1.31-1.34, 64 KiB 1.37, 512 KiB 1.39-1.45.
CACHE_SLICE = 256 << 10


def hash_and_digest(
    sha: HashObject, chunk: memoryview, write: Callable[[memoryview], None] | None = None
) -> bytes:
    """Feed ``chunk`` to the source ``sha`` and return its ``chunk_hash`` digest, in one pass over
    memory: slice by slice, so the digest reads what the sha256 has just brought into the cache.

    With ``write``, each slice is written first and hashed right after on the same thread: the
    write's copy (into the page cache, or a network filesystem's) brings the slice into this
    core's cache, and both hashes read it there, so the bytes come from memory once instead of
    once for the write and again for the hash on another core (on this VM a sha256 of bytes
    another core last touched costs 0.9 CPU-s/GB, of bytes in this core's cache 0.55).
    """
    x = chunk_hash()
    for at in range(0, len(chunk), CACHE_SLICE):
        piece = chunk[at : at + CACHE_SLICE]
        if write is not None:
            write(piece)
        sha.update(piece)
        x.update(piece)
    return x.digest()


class Verifier(threading.Thread):
    """Checks what storage gives back against the digests of the bytes written, a window behind the writer.

    Each window is flushed with ``fdatasync`` and then read back with ``O_DIRECT`` (from the
    device, never the page cache), or where the filesystem refuses ``O_DIRECT`` (tmpfs, some
    network filesystems) evicted with ``POSIX_FADV_DONTNEED`` and re-read. ``chunks`` is bounded
    (``backlog`` chunks): a writer that runs ahead waits for the check, so no more than two
    windows are ever unverified (and dirty) at once.
    """

    def __init__(
        self,
        wfd: int,
        path: Path,
        bufsize: int,
        window_chunks: int,
        from_disk: bool,
        gate: TransferGate | None = None,
    ) -> None:
        super().__init__(name=f"verify {path.name}", daemon=True)
        self.path, self._wfd, self._bufsize = path, wfd, bufsize
        self._window_chunks, self._from_disk = window_chunks, from_disk
        self._gate = gate
        #: (offset, length, digest) of each written chunk; None when the file is complete and
        #: fsynced; ABORT when the writer gave up.
        self.chunks: queue.Queue[Written | None | object] = queue.Queue(maxsize=window_chunks + 1)
        self.error: BaseException | None = None
        #: Whether the read-back bypasses the page cache (O_DIRECT); else it follows DONTNEED.
        self.direct = from_disk and bufsize % ALIGN == 0
        #: Read back a chunk at a time where a device DMAs it (few, large I/Os); else (tmpfs,
        #: network or FUSE filesystems: the kernel copies) a slice at a time into the start of the
        #: scratch buffer, so the digest reads each slice from this core's cache.
        self._step = bufsize if on_a_device(wfd) else CACHE_SLICE
        self._scratch_size = bufsize
        self._scratch = take_buffers(self._scratch_size, 1)[0]  # page-aligned, for O_DIRECT
        self._view = memoryview(self._scratch)

    def hand_over(self, item: Written | None | object) -> None:
        """Queue a chunk (or the end); waits while the check is a window behind, raises if it died."""
        while True:
            try:
                self.chunks.put(item, timeout=0.5)
                return
            except queue.Full:
                if not self.is_alive():
                    if item is ABORT:
                        return
                    raise self.error or RuntimeError(f"verifier for {self.path} stopped") from None

    def _open(self) -> int:
        rfd, self.direct = open_read(self.path, direct=self.direct)
        return rfd

    def run(self) -> None:
        batch: list[Written] = []
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
            if rfd >= 0:
                os.close(rfd)
            self._view.release()
            give_back(self._scratch_size, [self._scratch])

    def _check(self, rfd: int, batch: list[Written], synced: bool) -> int:
        """Re-read one window and compare; an error is kept (the writer raises it) and the queue
        keeps being drained, so the writer never waits forever."""
        try:
            if self.error is None and batch:
                start, end = batch[0][0], batch[-1][0] + batch[-1][1]
                if self._from_disk:
                    if not synced:
                        os.fdatasync(self._wfd)  # DONTNEED only drops clean pages
                    # Before a buffered re-read so it comes from the device; with O_DIRECT so
                    # the copy does not crowd the scanner's pages out of memory.
                    os.posix_fadvise(rfd, start, end - start, os.POSIX_FADV_DONTNEED)
                for offset, n, digest in batch:
                    rfd = self._compare(rfd, offset, n, digest)
        except BaseException as exc:
            self.error = exc
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

    def _read_digest(self, rfd: int, offset: int, n: int) -> tuple[int, bytes]:
        """Read ``n`` bytes at ``offset`` a step at a time; return how many came and their digest."""
        x = chunk_hash()
        got = 0
        while got < n:
            want = min(self._step, n - got)
            k = min(self._read(rfd, offset + got, want), want)  # a direct read ends on a block
            x.update(self._view[:k])
            got += k
            if k < want:
                break
        return got, x.digest()

    def _compare(self, rfd: int, offset: int, n: int, digest: bytes) -> int:
        try:
            got, back = self._read_digest(rfd, offset, n)
        except OSError as exc:
            if not (self.direct and exc.errno == errno.EINVAL):
                raise
            # O_DIRECT opened but refused at read time: fall back to DONTNEED and a buffered read.
            os.close(rfd)
            self.direct = False
            rfd = os.open(self.path, os.O_RDONLY)
            os.posix_fadvise(rfd, offset, 0, os.POSIX_FADV_DONTNEED)
            got, back = self._read_digest(rfd, offset, n)
        if got < n or back != digest:
            raise StorageUnavailable(
                f"verify failed: {self.path} reads back differently from what was written "
                f"in bytes {offset}..{offset + n}",
                path=str(self.path),
            )
        return rfd
