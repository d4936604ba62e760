"""Page-cache eviction for the benchmarks, so a timed read comes from the device and not from memory.

``drop_caches`` needs root; ``POSIX_FADV_DONTNEED`` on each file drops its clean pages without it.
A tmpfs file cannot be evicted: it *is* memory, and the call leaves it as it is.
"""

from __future__ import annotations

import os
from pathlib import Path


def evict(paths: list[Path]) -> None:
    """Write out dirty pages (``sync``), then drop the files' clean pages from the page cache."""
    os.sync()
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
