"""Sheets that are wrong as a whole: empty, no flags row, an unreadable flag, not UTF-8, no barcode
column, duplicate or blank headers, an unterminated quote, or no file at all.

No name can be built from such a sheet without guessing, so every scan is held, the reason naming
the sheet (and the row or column at fault). Two controls show the same agent then stores scans
from sheets Excel writes (BOM, CRLF) and with a lower-case ``barcode`` header. One agent; the CSV
is rewritten before each case (the CSV source re-reads the file when its stat changes).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.badinput.corpus import (
    FLAGS,
    HEADER,
    Case,
    Outcome,
    Site,
    check_outcome,
    check_storage,
    make_site,
    row,
    run_cases,
    sheet_csv,
    summary,
)

HELD, BAD = "held", "sheet_malformed"


@dataclass(frozen=True)
class Shape:
    case: Case
    sheet: str | bytes | None  # None: the sheet file is missing


def _scan(barcode: str):
    return lambda s: s.svs(f"{barcode}_x.svs")


def _shape(
    id: str,
    what: str,
    barcode: str,
    sheet: str | bytes | None,
    state: str = HELD,
    kind: str | None = BAD,
    mentions: tuple[str, ...] = ("{sheet}",),
    stored_as: str | None = None,
) -> Shape:
    return Shape(Case(id, what, _scan(barcode), state, kind, mentions, stored_as=stored_as), sheet)


def _ok(barcode: str) -> str:
    return f"Prec01/Run-2/Prec01_Run-2_P1_Cardinal_{barcode}.svs"


GOOD = [row(f"4000{i:02d}") for i in range(1, 16)]
FLAGS_BAD = list(FLAGS)
FLAGS_BAD[1] = "yes"
HEADER_DUP = list(HEADER)
HEADER_DUP[2] = "Study"
HEADER_BLANK = list(HEADER)
HEADER_BLANK[3] = ""
HEADER_NO_BARCODE = ["Code", *HEADER[1:]]
HEADER_LOWER = ["barcode", *HEADER[1:]]

SHAPES: list[Shape] = [
    _shape("empty-file", "0-byte sheet", "400001", "", mentions=("{sheet}", "is empty")),
    _shape(
        "blank-lines-only",
        "only blank lines and commas",
        "400002",
        "\n\n,,,,\n\n",
        mentions=("{sheet}", "is empty"),
    ),
    _shape(
        "no-flags-row",
        "header in row 1 (flags row missing)",
        "400003",
        sheet_csv(GOOD, flags=None),
        mentions=("{sheet}", "flags row is missing"),
    ),
    _shape(
        "flags-row-only",
        "just the flags row",
        "400004",
        sheet_csv([], flags=FLAGS, header=[]).strip() + "\n",
        mentions=("{sheet}", "only 1 row"),
    ),
    _shape(
        "unreadable-flag",
        "flag 'yes' in row 1 over Study",
        "400005",
        sheet_csv(GOOD, flags=FLAGS_BAD),
        mentions=("{sheet} row 1", "'Study'", "'yes'"),
    ),
    _shape(
        "latin-1",
        "saved as Latin-1 ('Café')",
        "400006",
        sheet_csv([row("400006", study="Café")]).encode("latin-1"),
        mentions=("{sheet}", "not UTF-8", "0xe9"),
    ),
    _shape(
        "binary-garbage", "random bytes", "400007", bytes(range(256)) * 8, mentions=("{sheet}", "not UTF-8")
    ),
    _shape(
        "no-barcode-column",
        "header 'Code' instead of 'Barcode'",
        "400008",
        sheet_csv(GOOD, header=HEADER_NO_BARCODE),
        mentions=("{sheet}", "no 'Barcode' column"),
    ),
    _shape(
        "duplicate-header",
        "'Study' twice in the header",
        "400009",
        sheet_csv(GOOD, header=HEADER_DUP),
        mentions=("{sheet}", "duplicate header 'Study'"),
    ),
    _shape(
        "blank-header-under-flag",
        "REQUIRED over a blank header",
        "400010",
        sheet_csv(GOOD, header=HEADER_BLANK),
        mentions=("{sheet} row 2", "column D", "blank header"),
    ),
    _shape(
        "unterminated-quote",
        "an opening quote never closed",
        "400011",
        '"Include in Name?,REQUIRED\nBarcode,Study\n400011,Prec01\n',
        mentions=("{sheet}", "only 1 row"),
    ),
    _shape(
        "missing-file",
        "the sheet file does not exist",
        "400012",
        None,
        HELD,
        "sheet_unreachable",
        mentions=("{sheet}",),
    ),
    _shape(
        "excel-bom-crlf",
        "control: UTF-8 BOM and CRLF, as Excel saves",
        "400013",
        ("\ufeff" + sheet_csv(GOOD)).encode("utf-8"),
        "stored",
        None,
        (),
        stored_as=_ok("400013"),
    ),
    _shape(
        "lowercase-barcode-header",
        "control: header 'barcode'",
        "400014",
        sheet_csv(GOOD, header=HEADER_LOWER),
        "stored",
        None,
        (),
        stored_as=_ok("400014"),
    ),
]
CASES = [s.case for s in SHAPES]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> tuple[dict[str, Outcome], Site]:
    site = make_site(tmp_path_factory.mktemp("shapes"))
    outcomes: dict[str, Outcome] = {}
    try:
        for shape in SHAPES:
            if shape.sheet is None:
                site.sheet.unlink(missing_ok=True)
            else:
                site.write_sheet(shape.sheet)
            outcomes.update(run_cases(site, [shape.case], workers=1))
        print("\n" + summary(outcomes))
        yield outcomes, site
    finally:
        site.agent.close()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_sheet(case: Case, corpus: tuple[dict[str, Outcome], Site]) -> None:
    outcomes, site = corpus
    check_outcome(outcomes[case.id], site)


def test_storage_holds_only_the_controls(corpus: tuple[dict[str, Outcome], Site]) -> None:
    outcomes, site = corpus
    check_storage(outcomes, site)
