"""The states a scan moves through in the journal, and which moves are allowed.

::

    seen ──► ready ──► processing ──► stored
              ▲  ▲         │
              │  │         ├──► held         no complete sheet row yet; re-checked on a timer
              │  │         ├──► failed       reason kept; retried on a timer if transient, else by a person
              │  │         └──► quarantined  no barcode / corrupt: moved aside, never stored
              │  └── held, failed (re-check due, ``retry``), processing (resumed after a crash)
              └── quarantined (``process`` on the quarantined file)

A state is a ``StrEnum``, so it is stored in SQLite and shown in ``status`` as its plain value
(``"stored"``), and compares equal to that string.
"""

from __future__ import annotations

from enum import StrEnum


class ScanState(StrEnum):
    SEEN = "seen"
    READY = "ready"
    PROCESSING = "processing"
    STORED = "stored"
    HELD = "held"
    FAILED = "failed"
    QUARANTINED = "quarantined"


#: States whose scan is still the agent's to finish (stored and quarantined are done with).
ACTIVE: frozenset[ScanState] = frozenset(
    {ScanState.SEEN, ScanState.READY, ScanState.PROCESSING, ScanState.HELD, ScanState.FAILED}
)

#: Where a scan may go from each state. Staying in a state (a re-check that changes its reason or
#: its next check) is allowed everywhere.
TRANSITIONS: dict[ScanState, frozenset[ScanState]] = {
    ScanState.SEEN: frozenset({ScanState.READY}),
    ScanState.READY: frozenset({ScanState.PROCESSING, ScanState.FAILED}),
    ScanState.PROCESSING: frozenset(
        {ScanState.STORED, ScanState.HELD, ScanState.FAILED, ScanState.QUARANTINED, ScanState.READY}
    ),
    ScanState.HELD: frozenset({ScanState.READY, ScanState.PROCESSING, ScanState.FAILED}),
    ScanState.FAILED: frozenset({ScanState.READY, ScanState.PROCESSING}),
    ScanState.QUARANTINED: frozenset({ScanState.READY}),
    ScanState.STORED: frozenset(),
}


def can_move(src: str, dst: str) -> bool:
    """Whether the journal may move a scan from ``src`` to ``dst`` (unknown states may not)."""
    try:
        a, b = ScanState(src), ScanState(dst)
    except ValueError:
        return False
    return a == b or b in TRANSITIONS[a]
