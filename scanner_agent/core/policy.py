"""The failure policy: what becomes of a scan whose run raised, and when it is looked at again.

``decide_failure`` maps an error to one of four outcomes::

    retry       failed, re-checked after a backoff   transient errors (storage blinked, the
                                                     scan changed while copying, a bug seen < 5 times)
    hold        held, re-checked after recheck_seconds  no complete sheet row yet
    quarantine  moved aside, never stored             no barcode, corrupt slide
    fail        failed, waits for a person            collisions, links, a bug seen 5 times

A quarantine that cannot move the scan aside becomes a plain failure (``unquarantinable``): the
scan stays where it is, recorded, and a person decides. Pure: the caller passes the clock.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from scanner_agent.core.errors import ScanError, UnexpectedError
from scanner_agent.core.states import ScanState

#: An unexpected error (a bug, an unmapped OS error) is retried while the scan has had fewer
#: attempts than this; then it waits for a person, so a bug cannot loop for ever.
MAX_UNEXPECTED_ATTEMPTS = 5
#: The longest wait between two retries of a transient failure.
MAX_BACKOFF_SECONDS = 3600.0
#: Doublings of ``retry_seconds`` before the cap is all that limits the wait.
MAX_DOUBLINGS = 6


class Outcome(StrEnum):
    RETRY = "retry"
    HOLD = "hold"
    QUARANTINE = "quarantine"
    FAIL = "fail"


@dataclass(frozen=True)
class FailureDecision:
    """What to record for a failed run: the outcome, the journal state and the next check (Unix time)."""

    outcome: Outcome
    state: ScanState
    next_check: float | None = None

    @property
    def label(self) -> str:
        """The run's state name as the Prefect UI shows it: ``Held``, ``Quarantined`` or ``Failed``."""
        return {ScanState.HELD: "Held", ScanState.QUARANTINED: "Quarantined"}.get(self.state, "Failed")


def backoff_seconds(attempts: int, retry_seconds: float) -> float:
    """The wait before retry number ``attempts``: doubling from ``retry_seconds``, at most an hour."""
    doublings: int = min(max(attempts - 1, 0), MAX_DOUBLINGS)
    return min(MAX_BACKOFF_SECONDS, retry_seconds * 2.0**doublings)


def is_retryable(err: ScanError, attempts: int) -> bool:
    """Whether a timer should try the scan again: transient errors, and a bug only a few times."""
    if isinstance(err, UnexpectedError):
        return attempts < MAX_UNEXPECTED_ATTEMPTS
    return err.transient


def decide_failure(
    err: ScanError, *, attempts: int, now: float, retry_seconds: float, recheck_seconds: float
) -> FailureDecision:
    """The outcome of a run that raised ``err`` on the scan's ``attempts``-th attempt (1 = first)."""
    if err.state == ScanState.HELD:
        return FailureDecision(Outcome.HOLD, ScanState.HELD, now + recheck_seconds)
    if err.state == ScanState.QUARANTINED:
        return FailureDecision(Outcome.QUARANTINE, ScanState.QUARANTINED)
    if is_retryable(err, attempts):
        wait = backoff_seconds(attempts, retry_seconds)
        return FailureDecision(Outcome.RETRY, ScanState.FAILED, now + wait)
    return FailureDecision(Outcome.FAIL, ScanState.FAILED)


def unquarantinable(decision: FailureDecision) -> FailureDecision:
    """The decision once a quarantine could not move the scan aside: failed, for a person to look at."""
    return replace(decision, outcome=Outcome.FAIL, state=ScanState.FAILED, next_check=None)
