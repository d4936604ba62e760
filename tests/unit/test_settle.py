"""The settle decision on fingerprints and clock values alone: exact windows, no files, no clock."""

from __future__ import annotations

import pytest

from scanner_agent.core.settle import SettleTracker

Tracker = SettleTracker[str, int]


def tracker(settle: float = 10) -> Tracker:
    return SettleTracker(settle)


def test_unchanged_unit_is_due_after_the_window_and_then_confirmed() -> None:
    t = tracker(10)
    t.observe("a", 1, now=100)
    assert t.pending() == ["a"] and len(t) == 1 and "a" in t
    assert t.due(109.9) == []
    assert t.due(110) == ["a"]
    assert t.confirm("a", 1, now=110)
    assert t.fingerprint("a") == 1


def test_forget_removes_the_unit() -> None:
    t = tracker()
    t.observe("a", 1, now=0)
    t.forget("a")
    t.forget("a")  # forgetting twice is fine
    assert t.pending() == [] and "a" not in t and t.due(1e9) == [] and t.fingerprint("a") is None


def test_same_fingerprint_again_does_not_restart_the_window() -> None:
    t = tracker(10)
    t.observe("a", 1, now=0)
    t.observe("a", 1, now=9)
    assert t.due(10) == ["a"]


def test_a_change_restarts_the_full_window() -> None:
    t = tracker(10)
    t.observe("a", 1, now=0)
    t.observe("a", 2, now=8)
    assert t.due(17.9) == []
    assert t.due(18) == ["a"]
    assert t.fingerprint("a") == 2


def test_a_change_seen_only_at_the_check_restarts_the_window() -> None:
    t = tracker(10)
    t.observe("a", 1, now=0)
    assert t.due(11) == ["a"]
    assert not t.confirm("a", 2, now=11)  # grown while no event came
    assert t.due(20.9) == []
    assert t.due(21) == ["a"]
    assert t.confirm("a", 2, now=21)


def test_vanished_is_never_confirmed() -> None:
    t = tracker(1)
    t.observe("a", 1, now=0)
    assert not t.confirm("a", None, now=5)
    assert t.fingerprint("a") is None
    assert t.due(6) == ["a"]
    assert not t.confirm("a", None, now=6)  # still gone: None never equals a settled fingerprint


def test_first_seen_vanished_then_back_starts_over() -> None:
    t = tracker(4)
    t.observe("a", None, now=0)
    t.observe("a", 7, now=3)
    assert t.due(6.9) == []
    assert t.due(7) == ["a"] and t.confirm("a", 7, now=7)


def test_close_hint_shortens_to_a_quarter_until_the_next_change() -> None:
    t = tracker(8)
    t.observe("a", 1, now=0)
    t.hint_closed("a")
    assert t.due(1.9) == []
    assert t.due(2) == ["a"]
    t.observe("a", 2, now=2)  # written again after the close: the hint is cancelled
    assert t.due(4.1) == []
    assert t.due(10) == ["a"]


def test_hint_for_an_unobserved_unit_is_an_error() -> None:
    with pytest.raises(KeyError):
        tracker().hint_closed("never seen")


def test_hold_waits_another_window() -> None:
    t = tracker(5)
    t.observe("a", 1, now=0)
    assert t.due(6) == ["a"]
    t.hold("a", now=6)  # e.g. the format says "not finished" or a writer holds it open
    assert t.due(10.9) == []
    assert t.due(11) == ["a"]


def test_hold_uses_the_quarter_window_after_a_close_and_a_close_lifts_the_hold() -> None:
    t = tracker(8)
    t.observe("a", 1, now=0)
    t.hint_closed("a")
    t.hold("a", now=2)
    assert t.due(3.9) == []
    assert t.due(4) == ["a"]
    t.hold("a", now=4)
    t.hint_closed("a")  # the writer that held it open closed
    assert t.due(4) == ["a"]


def test_a_change_lifts_a_hold() -> None:
    t = tracker(5)
    t.observe("a", 1, now=0)
    t.hold("a", now=5)
    t.observe("a", 2, now=6)
    assert t.due(11) == ["a"]


def test_due_looks_only_at_the_units_asked_about_in_their_order() -> None:
    t = tracker(2)
    for i, key in enumerate(["a", "b", "c"]):
        t.observe(key, i, now=0)
    assert t.due(3) == ["a", "b", "c"]
    assert t.due(3, ["c", "unknown", "a"]) == ["c", "a"]
    assert t.due(3, []) == []


def test_zero_window_is_due_at_once_and_negative_is_refused() -> None:
    t = tracker(0)
    t.observe("a", 1, now=5)
    assert t.due(5) == ["a"]
    with pytest.raises(ValueError, match="settle_seconds must be >= 0, got -1"):
        SettleTracker(-1)
