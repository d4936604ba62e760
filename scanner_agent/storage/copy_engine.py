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

This module is the copy itself (reader, writer and hasher, and the loop that drives them); the
verifier thread is in ``readback.py`` and the buffers kept between files in ``buffers.py``.
"""

from __future__ import annotations

import hashlib
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
from scanner_agent.storage.readback import ABORT, Verifier
from scanner_agent.storage.records import SourceFile
from scanner_agent.storage.throttle import TransferGate

#: How far the verifying reader trails the writer (and the source bytes kept in memory to compare
#: with); each window costs one fdatasync.
VERIFY_WINDOW = 32 << 20

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
    for buf in take_buffers(bufsize, 2 * window_chunks + 2):
        free.put(buf)
    gate = on_chunk if isinstance(on_chunk, TransferGate) else None
    verifier = Verifier(wfd, dst, bufsize, window_chunks, verify_from_disk, free, gate)
    verifier.start()
    try:
        source_sha, copied = _pump(sfd, wfd, src, dst, free, verifier, on_chunk, verify_from_disk)
        with on_storage(dst):
            os.utime(wfd, ns=(src.mtime_ns, src.mtime_ns))  # keep the scan time on the stored file
            os.fsync(wfd)
            stored_size = os.fstat(wfd).st_size
        verifier.chunks.put(None)
    except BaseException:
        verifier.chunks.put(ABORT)
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


def _next_buffer(free: queue.Queue[bytearray], verifier: Verifier, stop: threading.Event) -> bytearray | None:
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
    verifier: Verifier,
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
    verifier: Verifier,
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
