"""``core.retry_after``: the Retry-After header as seconds to wait, from delta-seconds or an HTTP-date."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from scanner_agent.core.retry_after import retry_after_from_headers, retry_after_seconds

NOW = 1_700_000_000.0


@pytest.mark.parametrize(("value", "seconds"), [("0", 0.0), ("7", 7.0), (" 120 ", 120.0), ("1.5", 1.5)])
def test_delta_seconds(value: str, seconds: float) -> None:
    assert retry_after_seconds(value, NOW) == seconds


def test_http_date_is_counted_from_now() -> None:
    assert retry_after_seconds(formatdate(NOW + 90, usegmt=True), NOW) == pytest.approx(90)
    assert retry_after_seconds("Tue, 14 Nov 2023 22:15:20 GMT", NOW) == pytest.approx(120)


@pytest.mark.parametrize("value", ["Tuesday, 14-Nov-23 22:14:20 GMT", "Tue Nov 14 22:14:20 2023"])
def test_obsolete_http_date_forms(value: str) -> None:
    # RFC 850 and asctime dates, which HTTP recipients must still accept.
    assert retry_after_seconds(value, NOW) == pytest.approx(60)


def test_http_date_in_the_past_means_now() -> None:
    assert retry_after_seconds(formatdate(NOW - 3600, usegmt=True), NOW) == 0.0


def test_date_without_zone_is_gmt() -> None:
    assert retry_after_seconds("Tue, 14 Nov 2023 22:14:20 -0000", NOW) == pytest.approx(60)


@pytest.mark.parametrize(
    "value", [None, "", "   ", "soon", "-5", "1e3", "٣", "Tue, 99 Foo 2023", "12 apples"]
)
def test_absent_or_garbage_gives_no_advice(value: str | None) -> None:
    assert retry_after_seconds(value, NOW) is None


def test_header_lookup_ignores_case_and_takes_a_lists_first_value() -> None:
    assert retry_after_from_headers({"Content-Type": "x", "retry-after": "3"}, NOW) == 3.0
    assert retry_after_from_headers({"Retry-After": ["4", "9"]}, NOW) == 4.0
    assert retry_after_from_headers({"RETRY-AFTER": ("5",)}, NOW) == 5.0


@pytest.mark.parametrize("headers", [None, {}, {"Content-Type": "text/plain"}, {"Retry-After": []}])
def test_no_header_gives_no_advice(headers: dict[str, object] | None) -> None:
    assert retry_after_from_headers(headers, NOW) is None
