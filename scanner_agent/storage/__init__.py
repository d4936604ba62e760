"""The storage adapter: the verified copy engine, placement, supersede, quarantine and source removal.

Other layers import from this package, never from its modules, so the modules can be split
without touching their callers.
"""

from scanner_agent.storage.transfer import (
    SUPERSEDED_DIRNAME,
    TransferResult,
    clean_incoming,
    free_space,
    hash_file,
    place_scan,
    quarantine,
    remove_source,
)

__all__ = [
    "SUPERSEDED_DIRNAME",
    "TransferResult",
    "clean_incoming",
    "free_space",
    "hash_file",
    "place_scan",
    "quarantine",
    "remove_source",
]
