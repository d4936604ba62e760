"""Buffers reused from one copied file to the next, so a copy does not start on fresh memory.

Fresh 8 MiB buffers cost a page fault per 4 KiB (and on a VM the host's fault too), so the copy
engine's chunk buffers and the verifier's page-aligned read-back buffer (an anonymous mmap, usable
with ``O_DIRECT``) are kept here between files, up to a bound. Nothing here runs per chunk: a copy
takes its buffers at its start and hands them back at its end.
"""

from __future__ import annotations

import mmap
import queue
import threading

#: Buffers kept for the next file, by size (at most this many bytes in all).
_POOL_LIMIT = 128 << 20
_pool: dict[int, list[bytearray]] = {}
_scratch_pool: dict[int, list[mmap.mmap]] = {}
_pool_lock = threading.Lock()


def take_buffers(bufsize: int, count: int) -> list[bytearray]:
    with _pool_lock:
        kept = _pool.get(bufsize, [])
        got, _pool[bufsize] = kept[:count], kept[count:]
    return got + [bytearray(bufsize) for _ in range(count - len(got))]


def give_back(bufsize: int, bufs: list[bytearray]) -> None:
    with _pool_lock:
        kept = _pool.setdefault(bufsize, [])
        room = max(0, _POOL_LIMIT // bufsize - len(kept))
        kept.extend(bufs[:room])


def take_scratch(size: int) -> mmap.mmap:
    """A page-aligned buffer (anonymous mmap) for the read-back, usable with O_DIRECT."""
    with _pool_lock:
        kept = _scratch_pool.get(size)
        if kept:
            return kept.pop()
    return mmap.mmap(-1, size)


def give_back_scratch(size: int, scratch: mmap.mmap) -> None:
    with _pool_lock:
        kept = _scratch_pool.setdefault(size, [])
        if len(kept) < 2:
            kept.append(scratch)
            return
    scratch.close()


def recycle(free: queue.Queue[bytearray], bufsize: int) -> None:
    """Hand the copy's buffers to the pool for the next file (threads that used them have ended)."""
    bufs = []
    while True:
        try:
            bufs.append(free.get_nowait())
        except queue.Empty:
            break
    give_back(bufsize, bufs)
