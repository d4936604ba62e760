"""The crash-loop guard's decision (``core.crashloop``): which scans a start resumes, which it sets aside."""

from __future__ import annotations

import pytest

from scanner_agent.core.crashloop import LIMIT, judge_start, resets_count
from scanner_agent.core.states import ScanState


def test_first_death_while_processing_resumes_and_counts_one() -> None:
    d = judge_start([7], {}, died=True)
    assert (d.resume, d.set_aside, dict(d.deaths)) == ((7,), (), {7: 1})


def test_second_death_in_a_row_sets_the_scan_aside_and_the_others_go_on() -> None:
    d = judge_start([7, 8], {7: 1}, died=True)
    assert d.set_aside == (7,) and d.resume == (8,)
    assert d.deaths[8] == 1 and d.deaths[7] == 0  # a retried scan starts afresh


def test_a_death_while_the_scan_waited_breaks_the_streak() -> None:
    # Scan 7 was resumed after one death, but the next death found it ready, not processing.
    d = judge_start([8], {7: 1}, died=True)
    assert d.resume == (8,) and d.set_aside == () and d.deaths == {7: 0, 8: 1}


def test_a_clean_stop_past_its_bound_is_not_a_death() -> None:
    d = judge_start([7], {7: 1}, died=False)
    assert d.resume == (7,) and d.set_aside == () and d.deaths == {}


def test_nothing_left_processing_changes_nothing() -> None:
    assert judge_start([], {}, died=True).deaths == {}


def test_limit_is_two_and_must_be_positive() -> None:
    assert LIMIT == 2
    with pytest.raises(ValueError):
        judge_start([1], {}, died=True, limit=0)


@pytest.mark.parametrize(
    ("state", "resets"),
    [
        (ScanState.STORED, True),
        (ScanState.HELD, True),
        (ScanState.FAILED, True),
        (ScanState.QUARANTINED, True),
        (ScanState.READY, False),
        (ScanState.PROCESSING, False),
    ],
)
def test_a_scan_at_rest_has_its_count_reset(state: ScanState, resets: bool) -> None:
    assert resets_count(state) is resets
