"""``core.rescans``: which earlier stored image a rescan supersedes, and its superseded label."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import PurePath

from scanner_agent.core.rescans import RescanChoice, choose_rescan, superseded_label


@dataclass(frozen=True)
class Row:
    id: int
    dest: str | None
    stored_at: float | None


STORED_AT = time.mktime((2026, 3, 1, 12, 30, 5, 0, 0, -1))  # local time, as the label shows it


def everything_exists(_p: PurePath) -> bool:
    return True


def test_a_first_scan_is_not_a_rescan() -> None:
    choice = choose_rescan([], scan_id=7, exists=everything_exists)
    assert choice == RescanChoice() and not choice.is_rescan


def test_the_scan_itself_does_not_count_as_an_earlier_one() -> None:
    # A resumed run of a scan stored before its source was removed finds its own row.
    choice = choose_rescan([Row(7, "/s/a.svs", STORED_AT)], scan_id=7, exists=everything_exists)
    assert not choice.is_rescan


def test_a_rescan_supersedes_the_latest_earlier_image_labelled_by_when_it_was_stored() -> None:
    rows = [Row(1, "/s/old.svs", STORED_AT - 86400), Row(4, "/s/a.svs", STORED_AT)]
    choice = choose_rescan(rows, scan_id=9, exists=everything_exists)
    assert choice == RescanChoice(earlier=(1, 4), supersede=PurePath("/s/a.svs"), label="20260301T123005")
    assert choice.is_rescan


def test_an_earlier_image_no_longer_in_storage_is_not_superseded_but_it_is_still_a_rescan() -> None:
    choice = choose_rescan([Row(4, "/s/a.svs", STORED_AT)], scan_id=9, exists=lambda p: False)
    assert choice.is_rescan and choice.supersede is None and choice.label == "20260301T123005"


def test_rows_without_a_destination_do_not_count() -> None:
    choice = choose_rescan([Row(4, None, STORED_AT)], scan_id=9, exists=everything_exists)
    assert not choice.is_rescan


def test_an_image_with_no_stored_time_has_no_label() -> None:
    assert superseded_label(None) is None
    choice = choose_rescan([Row(4, "/s/a.svs", None)], scan_id=9, exists=everything_exists)
    assert choice.supersede == PurePath("/s/a.svs") and choice.label is None
