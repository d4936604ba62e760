"""The journal adapter: the SQLite record of every scan, and the alert outbox kept in the same file.

Other layers import from this package, never from its modules, so the modules can be split
without touching their callers.
"""

from scanner_agent.journal.events_outbox import EventOutbox, QueuedEvent
from scanner_agent.journal.fixity import FixityLog
from scanner_agent.journal.outbox import AlertOutbox
from scanner_agent.journal.records import ScanRecord
from scanner_agent.journal.store import Journal
from scanner_agent.journal.writeback import QueuedCell, WritebackQueue

__all__ = [
    "AlertOutbox",
    "EventOutbox",
    "FixityLog",
    "Journal",
    "QueuedCell",
    "QueuedEvent",
    "ScanRecord",
    "WritebackQueue",
]
