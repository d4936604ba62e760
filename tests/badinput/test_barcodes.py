"""Barcodes that are nearly right: spaces, leading zeros, Unicode look-alike digits, a regex that
matches twice, and slide labels holding separators, control characters or too much text.

The rule under test is *never guess*: a barcode is used exactly as written (leading zeros kept,
look-alikes refused, not normalised), an ambiguous file name is not resolved by picking one, and
a near miss in the sheet is pointed at rather than taken.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.badinput.corpus import Case, Outcome, Site, check_outcome, check_storage, row, run_corpus

Q, NB, HELD, UB = "quarantined", "no_barcode", "held", "unknown_barcode"


def _from_label(o: Outcome, site: Site) -> None:
    assert o.rec.details.get("barcode_source") == "slide metadata (aperio.Barcode)", o.rec.details


CASES: list[Case] = [
    Case(
        "space-inside-name",
        "file '200 001.svs', no label",
        lambda s: s.svs("200 001.svs"),
        Q,
        NB,
        ("{src}", "does not match"),
        row("200001"),
    ),
    Case(
        "spaces-around-name",
        "file ' 200002 .svs'",
        lambda s: s.svs(" 200002 .svs"),
        "stored",
        None,
        (),
        row("200002"),
        stored_as="Prec01/Run-2/Prec01_Run-2_P1_Cardinal_200002.svs",
    ),
    Case(
        "space-inside-label",
        "label '200 003', name without barcode",
        lambda s: s.svs_with_label("slide_b03.svs", "200 003"),
        Q,
        NB,
        ("{src}", "whitespace"),
        row("200003"),
    ),
    Case(
        "spaces-around-label",
        "label ' 200004 '",
        lambda s: s.svs_with_label("slide_b04.svs", " 200004 "),
        "stored",
        None,
        (),
        row("200004"),
        stored_as="Prec01/Run-2/Prec01_Run-2_P1_Cardinal_200004.svs",
        extra=_from_label,
    ),
    Case(
        "leading-zero-name",
        "file 012345.svs, sheet has 12345",
        lambda s: s.svs("012345.svs"),
        HELD,
        UB,
        ("012345", "'12345' on row {row}", "leading zeros"),
        row("12345"),
    ),
    Case(
        "leading-zero-sheet",
        "label 54321, sheet has 054321",
        lambda s: s.svs_with_label("slide_b06.svs", "54321"),
        HELD,
        UB,
        ("54321", "'054321' on row {row}", "leading zeros"),
        row("054321"),
    ),
    Case(
        "leading-zeros-both",
        "file 000007.svs, sheet 000007",
        lambda s: s.svs("000007.svs"),
        "stored",
        None,
        (),
        row("000007"),
        stored_as="Prec01/Run-2/Prec01_Run-2_P1_Cardinal_000007.svs",
    ),
    Case(
        "fullwidth-digits-name",
        "file '６２０９９５.svs' (fullwidth digits)",
        lambda s: s.svs("６２０９９５.svs"),
        Q,
        NB,
        ("{src}", "U+FF16", "FULLWIDTH DIGIT SIX", "not converted"),
        row("620995"),
    ),
    Case(
        "arabic-indic-digits-name",
        "file '٢٠٠٠٠٩.svs' (Arabic-Indic digits)",
        lambda s: s.svs("٢٠٠٠٠٩.svs"),
        Q,
        NB,
        ("{src}", "ARABIC-INDIC DIGIT"),
        row("200009"),
    ),
    Case(
        "fullwidth-digits-sheet",
        "file 200010.svs, sheet cell '２０００１０'",
        lambda s: s.svs("200010.svs"),
        HELD,
        UB,
        ("200010", "{sheet}"),
        row("２０００１０"),
    ),
    Case(
        "fullwidth-name-ascii-label",
        "file '２０００１１_x.svs', label 200011",
        lambda s: s.svs_with_label("２０００１１_x.svs", "200011"),
        "stored",
        None,
        (),
        row("200011"),
        stored_as="Prec01/Run-2/Prec01_Run-2_P1_Cardinal_200011.svs",
        extra=_from_label,
    ),
    Case(
        "regex-matches-twice",
        "file 200012_200013.svs, no label",
        lambda s: s.svs("200012_200013.svs"),
        Q,
        NB,
        ("{src}", "2 different barcodes", "'200012'", "'200013'"),
        row("200012"),
    ),
    Case(
        "regex-matches-same-twice",
        "file 200014_200014.svs",
        lambda s: s.svs("200014_200014.svs"),
        "stored",
        None,
        (),
        row("200014"),
        stored_as="Prec01/Run-2/Prec01_Run-2_P1_Cardinal_200014.svs",
    ),
    Case(
        "regex-twice-label-decides",
        "file 200015_200016.svs, label 200015",
        lambda s: s.svs_with_label("200015_200016.svs", "200015"),
        "stored",
        None,
        (),
        row("200015"),
        stored_as="Prec01/Run-2/Prec01_Run-2_P1_Cardinal_200015.svs",
        extra=_from_label,
    ),
    Case(
        "label-with-slash",
        "label '20/0017'",
        lambda s: s.svs_with_label("slide_b17.svs", "20/0017"),
        Q,
        NB,
        ("{src}", "path separator"),
        row("200017"),
    ),
    Case(
        "label-dotdot",
        "label '..'",
        lambda s: s.svs_with_label("slide_b18.svs", ".."),
        Q,
        NB,
        ("{src}", "'..' is not a usable barcode"),
    ),
    Case(
        "label-control-char",
        "label '200\\x07019'",
        lambda s: s.svs_with_label("slide_b19.svs", "200\x07019"),
        Q,
        NB,
        ("{src}", "U+0007"),
    ),
    Case(
        "label-too-long",
        "label of 80 letters",
        lambda s: s.svs_with_label("slide_b20.svs", "A" * 80),
        Q,
        NB,
        ("{src}", "80 characters long"),
    ),
    Case(
        "label-blank",
        "label 'Barcode = ' (empty)",
        lambda s: s.svs_with_label("slide_b21.svs", ""),
        Q,
        NB,
        ("{src}", "slide metadata has none of"),
    ),
]

#: A 7-digit run holds a 6-digit barcode only by accident; the default regex is unanchored.
SEVEN_DIGITS = Case(
    "seven-digit-run",
    "file 2000221.svs (7 digits), sheet has 200022",
    lambda s: s.svs("2000221.svs"),
    Q,
    NB,
    ("{src}",),
    row("200022"),
)
ALL = CASES + [SEVEN_DIGITS]


@pytest.fixture(scope="module")
def corpus(
    tmp_path_factory: pytest.TempPathFactory, prefect_api: str
) -> Iterator[tuple[dict[str, Outcome], Site]]:
    yield from run_corpus(tmp_path_factory.mktemp("barcodes"), ALL)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_odd_barcode(case: Case, corpus: tuple[dict[str, Outcome], Site]) -> None:
    outcomes, site = corpus
    check_outcome(outcomes[case.id], site)


def test_seven_digit_run_is_not_read_as_a_six_digit_barcode(corpus: tuple[dict[str, Outcome], Site]) -> None:
    outcomes, site = corpus
    check_outcome(outcomes[SEVEN_DIGITS.id], site)


def test_storage_holds_only_the_scans_with_exact_barcodes(corpus: tuple[dict[str, Outcome], Site]) -> None:
    outcomes, site = corpus
    check_storage(outcomes, site)
