"""The storage adapter: the verified copy engine, placement, supersede, quarantine and source removal.

Other layers import from this package, never from its modules, so the modules can be split
without touching their callers.
"""

from scanner_agent.storage.checks import DEFAULT_MARGIN, free_space
from scanner_agent.storage.copy_engine import hash_file
from scanner_agent.storage.paths import SUPERSEDED_DIRNAME, destination, sidecar_path
from scanner_agent.storage.placement import place_scan
from scanner_agent.storage.quarantining import quarantine
from scanner_agent.storage.records import SourceFile, StoredFile, TransferResult
from scanner_agent.storage.removal import clean_incoming, remove_source

__all__ = [
    "DEFAULT_MARGIN",
    "SUPERSEDED_DIRNAME",
    "SourceFile",
    "StoredFile",
    "TransferResult",
    "clean_incoming",
    "destination",
    "free_space",
    "hash_file",
    "place_scan",
    "quarantine",
    "remove_source",
    "sidecar_path",
]
