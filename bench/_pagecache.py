"""Page-cache eviction for the benchmarks, so a timed read comes from the device and not from memory.

``drop_caches`` needs root; ``POSIX_FADV_DONTNEED`` on each file drops its clean pages without it.
A tmpfs file cannot be evicted: it *is* memory, and the call leaves it as it is. On a VM whose
balloon reports freed pages to the host, ``free_pages_kept`` holds that off for a run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
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


#: The guest's free page reporting (virtio-balloon): freed pages go back to the host, and the next
#: first touch of one is a host fault billed to whichever process touches it. A lab's scanner PC
#: has none; on this VM it made ``cp`` of 1 GB to tmpfs cost 0.4-1.8 CPU-s from run to run.
PAGE_REPORTING_ORDER = Path("/sys/module/page_reporting/parameters/page_reporting_order")


@contextlib.contextmanager
def free_pages_kept(keep: bool) -> Iterator[str]:
    """While inside, with ``keep``, no freed page is reported to the host (the reporting order is
    raised past the largest page block); the old order is restored after. Yields what it did."""
    if not keep:
        yield "free page reporting left as it is"
        return
    try:
        old = PAGE_REPORTING_ORDER.read_text().strip()
        PAGE_REPORTING_ORDER.write_text("11")
    except OSError as exc:
        yield f"free page reporting left as it is ({PAGE_REPORTING_ORDER}: {exc.strerror})"
        return
    try:
        yield f"free page reporting held off for the run (page_reporting_order {old} -> 11, restored after)"
    finally:
        PAGE_REPORTING_ORDER.write_text(old)
