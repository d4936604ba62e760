"""The crash-loop guard: which scans a start-up resumes and which it sets aside.

A scan that was ``processing`` each of the last two times the agent died (a slide that crashes a
library, the kernel's OOM killer, a bug) would kill it again on every start and block the queue.
Each start counts, per scan, the agent's deaths in a row while it was processing (kept in the
journal row's details under ``DEATHS_KEY``); at ``LIMIT`` the scan is set aside as failed with
``REASON``, and everything else goes on. The count is reset when the scan reaches a final state
(``resets_count``) and when a start finds it was not being processed at the death (the deaths are
no longer in a row).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from scanner_agent.core.states import ScanState

#: The journal row's details key holding the count of deaths in a row while processing the scan.
DEATHS_KEY = "agent_deaths"
#: Deaths in a row while processing a scan after which a start sets it aside.
LIMIT = 2
REASON = "the agent stopped twice while processing it"


@dataclass(frozen=True)
class StartDecision:
    """What one start-up does with the scans a previous process left behind."""

    #: Scans left ``processing`` that go back to ``ready``.
    resume: tuple[int, ...] = ()
    #: Scans left ``processing`` that are set aside (``failed`` with ``REASON``).
    set_aside: tuple[int, ...] = ()
    #: The new count of deaths in a row, per scan whose count changes (resumed, set aside, reset).
    deaths: Mapping[int, int] = field(default_factory=dict)


def judge_start(
    processing: Collection[int],
    counted: Mapping[int, int],
    *,
    died: bool,
    limit: int = LIMIT,
) -> StartDecision:
    """Decide a start-up's recovery.

    ``processing``: the scans the previous process left ``processing``. ``counted``: every scan
    whose count is above 0 now (from the journal). ``died``: the previous process died (it did not
    record a clean stop); a clean stop past its time bound also leaves scans ``processing``, but
    that is not a death and adds nothing.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    deaths: dict[int, int] = {}
    for scan in processing:
        deaths[scan] = counted.get(scan, 0) + (1 if died else 0)
    for scan, n in counted.items():
        if scan not in deaths and n:  # not processing at this death: the streak is broken
            deaths[scan] = 0
    aside = tuple(sorted(s for s in processing if deaths[s] >= limit))
    resume = tuple(sorted(s for s in processing if deaths[s] < limit))
    # A scan set aside starts afresh if it is retried: its count is reset with its final state.
    for scan in aside:
        deaths[scan] = 0
    changed = {s: n for s, n in deaths.items() if n != counted.get(s, 0)}
    return StartDecision(resume=resume, set_aside=aside, deaths=changed)


def resets_count(state: str) -> bool:
    """Whether a scan moving to ``state`` has its count of deaths reset: any state it rests in
    (stored, held, failed, quarantined). ``ready`` and ``processing`` are on the way."""
    return state not in (ScanState.READY, ScanState.PROCESSING, ScanState.SEEN)
