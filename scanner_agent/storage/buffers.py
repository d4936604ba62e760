"""Page-aligned buffers reused from one copied file to the next, so a copy does not start on fresh memory.

Every buffer is an anonymous mmap: page-aligned, so the same buffer serves an ``O_DIRECT`` read
of the source (the device DMAs into it, no page-cache copy) and the verifier's ``O_DIRECT``
read-back. Fresh 8 MiB buffers cost a page fault per 4 KiB (and on a VM the host's fault too),
so they are kept here between files, up to a bound. Nothing here runs per chunk: a copy takes
its buffers at its start and hands them back at its end.
"""

from __future__ import annotations

import mmap
import queue
import threading

#: Buffers kept for the next file, by size (at most this many bytes in all of one size).
_POOL_LIMIT = 128 << 20
_pool: dict[int, list[mmap.mmap]] = {}
_pool_lock = threading.Lock()


def take_buffers(bufsize: int, count: int) -> list[mmap.mmap]:
    """``count`` page-aligned buffers of ``bufsize`` bytes (kept ones first)."""
    with _pool_lock:
        kept = _pool.get(bufsize, [])
        got, _pool[bufsize] = kept[:count], kept[count:]
    return got + [mmap.mmap(-1, bufsize) for _ in range(count - len(got))]


def give_back(bufsize: int, bufs: list[mmap.mmap]) -> None:
    """Keep what fits under the bound; the rest is unmapped when its last view is gone."""
    with _pool_lock:
        kept = _pool.setdefault(bufsize, [])
        room = max(0, _POOL_LIMIT // bufsize - len(kept))
        kept.extend(bufs[:room])


def recycle(free: queue.Queue[mmap.mmap], bufsize: int) -> None:
    """Hand the copy's buffers to the pool for the next file (threads that used them have ended)."""
    bufs = []
    while True:
        try:
            bufs.append(free.get_nowait())
        except queue.Empty:
            break
    give_back(bufsize, bufs)
