"""The storage adapter: the verified copy engine, placement, supersede, quarantine and source removal.

Other layers import from this package, never from its modules, so the modules can be split
without touching their callers.
"""

from scanner_agent.storage.checks import DEFAULT_MARGIN, free_space
from scanner_agent.storage.copy_engine import hash_file
from scanner_agent.storage.fixity import (
    OUTCOMES,
    Expected,
    FileCheck,
    inventory,
    share_gone,
    walk_checks,
)
from scanner_agent.storage.ioprio import IoPriority
from scanner_agent.storage.paths import PARTIAL_SUFFIX, SUPERSEDED_DIRNAME, destination, sidecar_path
from scanner_agent.storage.placement import place_scan
from scanner_agent.storage.quarantining import quarantine
from scanner_agent.storage.records import SourceFile, StoredFile, TransferResult
from scanner_agent.storage.removal import clean_incoming, remove_marker, remove_source
from scanner_agent.storage.retention import (
    Retention,
    StoredCopyMismatch,
    release_source,
    source_due,
    verify_stored,
)
from scanner_agent.storage.sha256sums import SUMS_NAME
from scanner_agent.storage.throttle import TokenBucket, TransferGate

__all__ = [
    "PARTIAL_SUFFIX",
    "DEFAULT_MARGIN",
    "Retention",
    "OUTCOMES",
    "SUMS_NAME",
    "SUPERSEDED_DIRNAME",
    "Expected",
    "FileCheck",
    "SourceFile",
    "StoredCopyMismatch",
    "StoredFile",
    "TokenBucket",
    "TransferResult",
    "TransferGate",
    "IoPriority",
    "clean_incoming",
    "destination",
    "free_space",
    "hash_file",
    "inventory",
    "place_scan",
    "quarantine",
    "release_source",
    "remove_marker",
    "remove_source",
    "share_gone",
    "sidecar_path",
    "source_due",
    "verify_stored",
    "walk_checks",
]
