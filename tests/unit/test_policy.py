"""``core.policy.decide_failure``: retry with backoff, hold, quarantine or fail, for every kind of error."""

from __future__ import annotations

import pytest

from scanner_agent.core import errors
from scanner_agent.core.policy import (
    MAX_BACKOFF_SECONDS,
    MAX_UNEXPECTED_ATTEMPTS,
    FailureDecision,
    Outcome,
    backoff_seconds,
    decide_failure,
    unquarantinable,
)
from scanner_agent.core.states import ScanState

NOW = 1_000_000.0


def decide(err: errors.ScanError, attempts: int = 1) -> FailureDecision:
    return decide_failure(err, attempts=attempts, now=NOW, retry_seconds=30, recheck_seconds=120)


@pytest.mark.parametrize(
    "err",
    [
        errors.UnknownBarcode("x"),
        errors.IncompleteRow("x", missing=["Study"]),
        errors.SheetMalformed("x"),
        errors.SheetUnavailable("x"),
    ],
)
def test_a_scan_without_a_usable_row_is_held_and_rechecked(err: errors.ScanError) -> None:
    d = decide(err, attempts=4)
    assert d == FailureDecision(Outcome.HOLD, ScanState.HELD, NOW + 120)
    assert d.label == "Held"


@pytest.mark.parametrize("err", [errors.NoBarcode("x"), errors.CorruptSlide("x")])
def test_a_bad_scan_is_quarantined_and_never_rechecked(err: errors.ScanError) -> None:
    d = decide(err)
    assert d == FailureDecision(Outcome.QUARANTINE, ScanState.QUARANTINED, None)
    assert d.label == "Quarantined"


def test_a_quarantine_that_cannot_move_the_scan_becomes_a_failure_for_a_person() -> None:
    d = unquarantinable(decide(errors.CorruptSlide("x")))
    assert d == FailureDecision(Outcome.FAIL, ScanState.FAILED, None)
    assert d.label == "Failed"


@pytest.mark.parametrize(
    "err",
    [
        errors.StorageUnavailable("x"),
        errors.StorageFull("x"),
        errors.SourceChanged("x"),
    ],
)
def test_a_transient_failure_is_retried_with_a_doubling_backoff(err: errors.ScanError) -> None:
    waits = [decide(err, attempts=n).next_check for n in range(1, 5)]
    assert waits == [NOW + 30, NOW + 60, NOW + 120, NOW + 240]
    assert decide(err).outcome is Outcome.RETRY and decide(err).state is ScanState.FAILED


def test_the_backoff_stops_doubling_and_is_capped_at_an_hour() -> None:
    assert backoff_seconds(7, 30) == backoff_seconds(20, 30) == 30 * 2**6
    assert backoff_seconds(7, 60) == MAX_BACKOFF_SECONDS
    assert backoff_seconds(0, 30) == 30  # never shorter than retry_seconds


@pytest.mark.parametrize(
    "err",
    [
        errors.DestinationCollision("x"),
        errors.LinkedScan("x"),
        errors.UnreadableSource("x"),
        errors.SourceRewritten("x"),
        errors.ScanError("x"),
    ],
)
def test_a_failure_a_retry_cannot_fix_waits_for_a_person(err: errors.ScanError) -> None:
    assert decide(err) == FailureDecision(Outcome.FAIL, ScanState.FAILED, None)


def test_an_unexpected_error_is_retried_while_attempts_are_few_then_failed() -> None:
    err = errors.UnexpectedError("a bug")
    for n in range(1, MAX_UNEXPECTED_ATTEMPTS):
        d = decide(err, attempts=n)
        assert d.outcome is Outcome.RETRY and d.next_check == NOW + backoff_seconds(n, 30)
    assert decide(err, attempts=MAX_UNEXPECTED_ATTEMPTS) == FailureDecision(Outcome.FAIL, ScanState.FAILED)


def test_every_error_class_has_a_decision() -> None:
    for cls in errors.kind_classes():
        err = cls("x") if cls is not errors.IncompleteRow else errors.IncompleteRow("x", missing=[])
        assert decide(err).state in (ScanState.HELD, ScanState.FAILED, ScanState.QUARANTINED)
