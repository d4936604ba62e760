"""The verified copy of one file: read ahead, write with early write-back, hash, read back from the device.

Four threads overlap per file: a reader fills buffers ahead, the writer writes them (and asks the
kernel to start writing each chunk back at once, so a window's ``fdatasync`` finds it mostly on
the device), a hasher hashes them, and the verifier re-reads a window behind. The read-back is
compared byte for byte with the very buffers the source hash was computed from, so equal bytes
prove the stored file's sha256 is the source's.

Where the CPU goes (profiled with perf, see ``bench/transfer.py``): sha256 is about 0.55 s/GB
and the kernel's copies to and from user memory the rest. So the read-back uses ``O_DIRECT``
where the filesystem allows it (the device DMAs straight into an aligned buffer: no page-cache
copy, and no doubt about where the bytes came from), the buffers are reused across files
(fresh 8 MiB buffers cost a page fault per 4 KiB, and on a VM the host's fault too), and the
window's pages are dropped after the check so a backlog does not push the scanner's pages out.
A ``TransferGate`` (``throttle.py``), when given, paces the reader and sets the threads' I/O priority.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from scanner_agent.core.errors import SourceChanged, StorageUnavailable
from scanner_agent.fileio import start_writeback
from scanner_agent.storage.oserrors import on_source, on_storage, storage_error
from scanner_agent.storage.records import SourceFile
from scanner_agent.storage.throttle import TransferGate

#: How far the verifying reader trails the writer (and the source bytes kept in memory to compare
#: with); each window costs one fdatasync.
VERIFY_WINDOW = 32 << 20

#: Called after each chunk is written with the source path and the bytes copied so far.
ChunkHook = Callable[[Path, int], None]

#: O_DIRECT wants buffers, offsets and lengths aligned to the device's logical block; a page is
#: a multiple of every common one.
ALIGN = mmap.PAGESIZE

#: Buffers kept for the next file, by size (at most this many bytes in all).
_POOL_LIMIT = 128 << 20
_pool: dict[int, list[bytearray]] = {}
_scratch_pool: dict[int, list[mmap.mmap]] = {}
_pool_lock = threading.Lock()


def _take_buffers(bufsize: int, count: int) -> list[bytearray]:
    with _pool_lock:
        kept = _pool.get(bufsize, [])
        got, _pool[bufsize] = kept[:count], kept[count:]
    return got + [bytearray(bufsize) for _ in range(count - len(got))]


def _give_back(bufsize: int, bufs: list[bytearray]) -> None:
    with _pool_lock:
        kept = _pool.setdefault(bufsize, [])
        room = max(0, _POOL_LIMIT // bufsize - len(kept))
        kept.extend(bufs[:room])


def _take_scratch(size: int) -> mmap.mmap:
    """A page-aligned buffer (anonymous mmap) for the read-back, usable with O_DIRECT."""
    with _pool_lock:
        kept = _scratch_pool.get(size)
        if kept:
            return kept.pop()
    return mmap.mmap(-1, size)


def _give_back_scratch(size: int, scratch: mmap.mmap) -> None:
    with _pool_lock:
        kept = _scratch_pool.setdefault(size, [])
        if len(kept) < 2:
            kept.append(scratch)
            return
    scratch.close()


def hash_file(path: Path, bufsize: int = 8 << 20) -> str:
    """sha256 of a file, read sequentially through one reusable buffer."""
    h = hashlib.sha256()
    buf = bytearray(bufsize)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


#: Tells the verifier the writer gave up; its buffers go back to the pool unchecked.
_ABORT = object()


class _Verifier(threading.Thread):
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
        #: fsynced; _ABORT when the writer gave up.
        self.chunks: queue.Queue[tuple[bytearray, int, int] | None | object] = queue.Queue()
        self.error: BaseException | None = None
        #: Whether the read-back bypasses the page cache (O_DIRECT); else it follows DONTNEED.
        self.direct = from_disk and bufsize % ALIGN == 0
        self._scratch_size = bufsize
        self._scratch = _take_scratch(self._scratch_size)
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
                if item is _ABORT:
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
            _give_back_scratch(self._scratch_size, self._scratch)

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


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def copy_file(
    src: SourceFile, dst: Path, bufsize: int, verify_from_disk: bool, on_chunk: ChunkHook | None
) -> str:
    """Copy one file, hashing the source in the same read pass, and verify the copy; return its sha256.

    ``on_chunk`` may be a ``TransferGate``: it then also paces the reads and sets the I/O priority.
    """
    with on_source(src.path):
        sfd = os.open(src.path, os.O_RDONLY)
    try:
        os.posix_fadvise(sfd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        with on_storage(dst):
            wfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
        try:
            return _copy_fds(sfd, wfd, src, dst, bufsize, verify_from_disk, on_chunk)
        finally:
            os.close(wfd)
    finally:
        os.close(sfd)


def _copy_fds(
    sfd: int,
    wfd: int,
    src: SourceFile,
    dst: Path,
    bufsize: int,
    verify_from_disk: bool,
    on_chunk: ChunkHook | None,
) -> str:
    window_chunks = max(1, VERIFY_WINDOW // bufsize)
    free: queue.Queue[bytearray] = queue.Queue()
    # One window under verification, one being written behind it, and a few read ahead: the
    # writer never waits for the verifier's fdatasync of the window before.
    for buf in _take_buffers(bufsize, 2 * window_chunks + 2):
        free.put(buf)
    gate = on_chunk if isinstance(on_chunk, TransferGate) else None
    verifier = _Verifier(wfd, dst, bufsize, window_chunks, verify_from_disk, free, gate)
    verifier.start()
    try:
        source_sha, copied = _pump(sfd, wfd, src, dst, free, verifier, on_chunk, verify_from_disk)
        with on_storage(dst):
            os.utime(wfd, ns=(src.mtime_ns, src.mtime_ns))  # keep the scan time on the stored file
            os.fsync(wfd)
            stored_size = os.fstat(wfd).st_size
        verifier.chunks.put(None)
    except BaseException:
        verifier.chunks.put(_ABORT)
        raise
    finally:
        verifier.join()
        _recycle(free, bufsize)
    if verifier.error is not None:
        if isinstance(verifier.error, OSError):
            raise storage_error(verifier.error, dst, "verify") from verifier.error
        raise verifier.error
    if stored_size != copied:
        raise StorageUnavailable(
            f"verify failed: {dst} is {stored_size} bytes on storage, {copied} were written", path=str(dst)
        )
    return source_sha


def _recycle(free: queue.Queue[bytearray], bufsize: int) -> None:
    """Hand the copy's buffers to the pool for the next file (threads that used them have ended)."""
    bufs = []
    while True:
        try:
            bufs.append(free.get_nowait())
        except queue.Empty:
            break
    _give_back(bufsize, bufs)


def _next_buffer(
    free: queue.Queue[bytearray], verifier: _Verifier, stop: threading.Event
) -> bytearray | None:
    """A free buffer, or None once told to stop; a dead verifier (which would never hand one back)
    is an error, not a hang."""
    while not stop.is_set():
        try:
            return free.get(timeout=0.5)
        except queue.Empty:
            if not verifier.is_alive():
                raise verifier.error or RuntimeError(f"verifier for {verifier.path} stopped") from None
    return None


#: A written chunk as the verifier gets it: (buffer, offset in the file, length).
_Chunk = tuple[bytearray, int, int]


def _read_ahead(
    sfd: int,
    src: SourceFile,
    free: queue.Queue[bytearray],
    verifier: _Verifier,
    out: queue.Queue[tuple[bytearray, int] | BaseException],
    stop: threading.Event,
    gate: TransferGate | None,
) -> None:
    """Reader thread: fill free buffers from the source in order and queue (buffer, length); a
    length of 0 is the end of the file. Reading the next chunk so overlaps writing this one (a
    device read and a device write at once, as ``cp`` gets from read-ahead and write-back)."""
    offset = 0
    try:
        if gate is not None:
            gate.enter_transfer_thread()
        while True:
            buf = _next_buffer(free, verifier, stop)
            if buf is None:
                return
            if gate is not None:
                gate.take(min(len(buf), max(src.size - offset, 1)))
            with on_source(src.path):
                n = os.readv(sfd, [buf])
            out.put((buf, n))
            offset += n
            if n == 0 or offset > src.size:  # the end, or growing: no point reading the rest
                return
    except BaseException as exc:  # handed to the writer, which raises it in its own thread
        out.put(exc)


def _pump(
    sfd: int,
    wfd: int,
    src: SourceFile,
    dst: Path,
    free: queue.Queue[bytearray],
    verifier: _Verifier,
    on_chunk: ChunkHook | None,
    early_writeback: bool,
) -> tuple[str, int]:
    """Read the source once; hash each chunk on a helper thread while writing it, with the next
    chunks read ahead on another.

    hashlib and os.read/os.write release the GIL, so reading, the source hash, writing and the
    verifier's re-read run at once. A chunk goes to the verifier (which recycles its buffer) only once hashed.
    """
    h = hashlib.sha256()
    gate = on_chunk if isinstance(on_chunk, TransferGate) else None
    hashing: Future[None] | None = None
    pending: _Chunk | None = None
    copied = 0
    chunks: queue.Queue[tuple[bytearray, int] | BaseException] = queue.Queue()
    stop = threading.Event()
    reader = threading.Thread(
        target=_read_ahead,
        args=(sfd, src, free, verifier, chunks, stop, gate),
        name=f"read {src.path.name}",
        daemon=True,
    )
    reader.start()
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hash") as hasher:
            while True:
                item = chunks.get()
                if isinstance(item, BaseException):
                    raise item
                buf, n = item
                if hashing is not None:
                    hashing.result()
                    verifier.chunks.put(pending)
                    hashing = None
                if n == 0:
                    free.put(buf)
                    break
                chunk = memoryview(buf)[:n]
                hashing = hasher.submit(h.update, chunk)
                with on_storage(dst):
                    _write_all(wfd, chunk)
                    if early_writeback:
                        start_writeback(wfd, copied, n)
                pending = (buf, copied, n)
                copied += n
                if on_chunk is not None:
                    on_chunk(src.path, copied)
                if copied > src.size:
                    break  # growing: no point copying the rest
    finally:
        stop.set()
        reader.join()
        while True:  # what the reader queued and nobody wrote goes back to the pool
            try:
                left = chunks.get_nowait()
            except queue.Empty:
                break
            if not isinstance(left, BaseException):
                free.put(left[0])
    if copied != src.size:
        raise SourceChanged(
            f"source changed during transfer: {src.path} was {src.size} bytes, "
            f"read {copied}{'+' if copied > src.size else ''}",
            path=str(src.path),
        )
    return h.hexdigest(), copied
