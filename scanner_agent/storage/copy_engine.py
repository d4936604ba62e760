"""The verified copy of one file: read ahead, write with early write-back, hash, read back from the device.

Threads overlap per file: a reader fills buffers ahead, the writer writes them (and asks the
kernel to start writing each chunk back at once, so a window's ``fdatasync`` finds it mostly on
the device), the sha256 and a fast xxh3-128 digest of each chunk are computed, and the verifier
re-reads a window behind and checks what the device returns against those digests: equal digests
prove the stored bytes are the very bytes the source sha256 was computed from. Where the write is
the device's DMA (``O_DIRECT`` to a local disk) a hasher thread hashes beside it; where the write
is a CPU copy (tmpfs, network filesystems) the writer hashes each slice right after writing it,
while the slice is still in its core's cache.

Where the CPU goes (profiled with perf, see ``bench/transfer.py``): sha256 is 0.55-0.7 s/GB on
bytes in the core's cache and ~0.9 on bytes that come from memory (this VM), and the kernel's
copies to and from user memory most of the rest. So the source is read with
``O_DIRECT`` where its filesystem allows it (the device DMAs into the buffer: no page-cache copy,
and a backlog does not push the scanner's pages out of memory), and so is the read-back; the
buffers are page-aligned mmaps reused across files (fresh 8 MiB buffers cost a page fault per
4 KiB, and on a VM the host's fault too), and the window's pages are dropped after the check.
The digests, not the buffers, wait for the read-back, so a buffer goes back to the reader as soon
as it is written and hashed.
A ``TransferGate`` (``throttle.py``), when given, paces the reader and sets the threads' I/O priority.

This module is the copy itself (reader, writer and hasher, and the loop that drives them); the
verifier thread is in ``readback.py`` and the buffers kept between files in ``buffers.py``.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import functools
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
from scanner_agent.storage.buffers import recycle, take_buffers
from scanner_agent.storage.oserrors import on_source, on_storage, storage_error
from scanner_agent.storage.readback import ABORT, ALIGN, Verifier, hash_and_digest, on_a_device, open_read
from scanner_agent.storage.records import SourceFile
from scanner_agent.storage.throttle import TransferGate

#: How far the verifying reader trails the writer (and the source bytes kept in memory to compare
#: with); each window costs one fdatasync.
VERIFY_WINDOW = 32 << 20

#: Written chunks whose sha256 may still be running while the writer goes on: a write and a
#: hash of the same chunk rarely take the same time, so neither waits for the other chunk by chunk.
HASH_LAG = 2

#: Buffers per copy: up to ``HASH_LAG`` + 1 written and being hashed, and the rest read ahead.
BUFFERS = 8

#: Called after each chunk is written with the source path and the bytes copied so far.
ChunkHook = Callable[[Path, int], None]


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


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        try:
            k = os.write(fd, data)
        except OSError as exc:  # a direct write refused (a short write left the offset unaligned)
            if exc.errno != errno.EINVAL or not _drop_direct(fd):
                raise
            continue
        data = data[k:]


def _go_direct(fd: int) -> bool:
    """Switch ``fd`` to ``O_DIRECT``; False where the filesystem refuses it (the fd stays buffered)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_DIRECT)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return False
    return True


def _drop_direct(fd: int) -> bool:
    """Switch ``fd`` back to buffered I/O; False if it was not direct."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if not flags & os.O_DIRECT:
        return False
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
    return True


def _read_chunk(sfd: int, buf: mmap.mmap) -> int:
    """Read the next chunk of the source into ``buf``.

    An ``O_DIRECT`` read the kernel refuses (an unaligned offset after a short read, a file that
    grew after its unaligned end was read, a filesystem that takes the flag at open but not at
    read) goes on through the page cache: the flag is dropped for the rest of the file."""
    try:
        return os.readv(sfd, [buf])
    except OSError as exc:
        if exc.errno != errno.EINVAL or not _drop_direct(sfd):
            raise
        return os.readv(sfd, [buf])


def copy_file(
    src: SourceFile, dst: Path, bufsize: int, verify_from_disk: bool, on_chunk: ChunkHook | None
) -> str:
    """Copy one file, hashing the source in the same read pass, and verify the copy; return its sha256.

    ``on_chunk`` may be a ``TransferGate``: it then also paces the reads and sets the I/O priority.
    """
    with on_source(src.path):
        sfd, _direct = open_read(src.path, direct=True)  # the device DMAs into the buffer
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
    free: queue.Queue[mmap.mmap] = queue.Queue()
    for buf in take_buffers(bufsize, BUFFERS):
        free.put(buf)
    gate = on_chunk if isinstance(on_chunk, TransferGate) else None
    verifier = Verifier(wfd, dst, bufsize, window_chunks, verify_from_disk, gate)
    verifier.start()
    try:
        source_sha, copied = _pump(sfd, wfd, src, dst, free, verifier, on_chunk, verify_from_disk)
        with on_storage(dst):
            os.utime(wfd, ns=(src.mtime_ns, src.mtime_ns))  # keep the scan time on the stored file
            os.fsync(wfd)
            stored_size = os.fstat(wfd).st_size
        verifier.hand_over(None)
    except BaseException:
        verifier.hand_over(ABORT)
        raise
    finally:
        verifier.join()
        recycle(free, bufsize)
    if verifier.error is not None:
        if isinstance(verifier.error, OSError):
            raise storage_error(verifier.error, dst, "verify") from verifier.error
        raise verifier.error
    if stored_size != copied:
        raise StorageUnavailable(
            f"verify failed: {dst} is {stored_size} bytes on storage, {copied} were written", path=str(dst)
        )
    return source_sha


def _done(digest: bytes) -> Future[bytes]:
    """A digest already computed, shaped like one a hasher thread is still working on."""
    hashing: Future[bytes] = Future()
    hashing.set_result(digest)
    return hashing


def _next_buffer(free: queue.Queue[mmap.mmap], stop: threading.Event) -> mmap.mmap | None:
    """A free buffer, or None once told to stop (the writer, which hands buffers back, has ended)."""
    while not stop.is_set():
        try:
            return free.get(timeout=0.5)
        except queue.Empty:
            pass
    return None


def _read_ahead(
    sfd: int,
    src: SourceFile,
    free: queue.Queue[mmap.mmap],
    out: queue.Queue[tuple[mmap.mmap, int] | BaseException],
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
            buf = _next_buffer(free, stop)
            if buf is None:
                return
            if gate is not None:
                gate.take(min(len(buf), max(src.size - offset, 1)))
            with on_source(src.path):
                n = _read_chunk(sfd, buf)
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
    free: queue.Queue[mmap.mmap],
    verifier: Verifier,
    on_chunk: ChunkHook | None,
    early_writeback: bool,
) -> tuple[str, int]:
    """Read the source once; hash each chunk on a helper thread while writing it, with the next
    chunks read ahead on another.

    hashlib and os.read/os.write release the GIL, so reading, the source hash, writing and the
    verifier's re-read run at once. The hasher (one thread, so the chunks reach the sha256 in
    order) and the writer each take every chunk as it comes, neither waiting for the other's
    chunk: up to ``HASH_LAG`` written chunks may still be hashing. Once a chunk is written and
    hashed, its digest goes to the verifier and its buffer back to the reader. Where the write is a
    CPU copy rather than a direct write, the writer hashes instead (see ``one_pass``).
    """
    h = hashlib.sha256()

    gate = on_chunk if isinstance(on_chunk, TransferGate) else None
    #: Written chunks whose hash may still be running, oldest first: (buffer, offset, length, digest).
    pending: collections.deque[tuple[mmap.mmap, int, int, Future[bytes]]] = collections.deque()

    def settle(all_of_them: bool) -> None:
        """Hand the verifier every written chunk whose hash is done, oldest first (waiting for
        the oldest while more than ``HASH_LAG`` are pending, or for all at the end)."""
        while pending and (all_of_them or len(pending) > HASH_LAG or pending[0][3].done()):
            done, offset, length, hashing = pending.popleft()
            verifier.hand_over((offset, length, hashing.result()))
            free.put(done)

    copied = 0
    # Written with O_DIRECT to a local block device (the device DMAs from the buffer: no copy into
    # the page cache, no dirty pages to write back in bursts, none of the scanner's pages pushed
    # out); the read-back then checks what the device holds after each window's fdatasync. Not on
    # network or FUSE filesystems (no device number): NFS would make each direct write a round trip.
    direct = early_writeback and on_a_device(wfd) and _go_direct(wfd)
    # A direct write is the device's DMA: the CPU never reads the bytes, so the hash runs beside
    # it on the other core. A buffered write is a CPU copy: writing and hashing each slice on
    # this thread reads the bytes from memory once (``hash_and_digest``), which costs less than
    # the overlap gains (disk -> tmpfs, 4 x 256 MiB: 1.2-1.3 CPU-s/GB and the same or better
    # speed, against 1.6-1.7 with a hasher thread). Chosen once per file, so the sha256 sees the
    # chunks in order (a direct file's unaligned tail still goes to the hasher).
    one_pass = not direct
    write_slice = functools.partial(_write_all, wfd)
    chunks: queue.Queue[tuple[mmap.mmap, int] | BaseException] = queue.Queue()
    stop = threading.Event()
    reader = threading.Thread(
        target=_read_ahead,
        args=(sfd, src, free, chunks, stop, gate),
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
                if n == 0:
                    settle(all_of_them=True)
                    free.put(buf)
                    break
                chunk = memoryview(buf)[:n]
                with on_storage(dst):
                    if direct and n % ALIGN:  # the unaligned tail goes through the page cache
                        direct = not _drop_direct(wfd)
                    if one_pass:  # written and hashed a slice at a time, on this thread
                        hashing = _done(hash_and_digest(h, chunk, write=write_slice))
                    else:
                        hashing = hasher.submit(hash_and_digest, h, chunk)  # in order: one worker
                        _write_all(wfd, chunk)
                    if early_writeback and not direct:
                        start_writeback(wfd, copied, n)
                pending.append((buf, copied, n, hashing))
                settle(all_of_them=False)
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
