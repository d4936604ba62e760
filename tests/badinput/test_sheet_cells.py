"""Hostile and sloppy sheet cells in the columns that name a scan (Study, Experiment, Panel, Scanner;
the layout is ``{Study}/{Experiment}``): path separators, ``..``, NUL and line breaks, 10,000
characters, spreadsheet formulas, stray spaces, bidi overrides and zero-width characters.

Two outcomes are acceptable and each case says which: the value is made safe and the scan is
stored (inside the storage root, under the exact expected name), or the row is refused and the
scan held, the reason naming the sheet, row and column. Nothing is ever written outside the root.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.badinput.corpus import Case, Outcome, Site, check_outcome, check_storage, row, run_corpus

HELD, BAD = "held", "sheet_malformed"
BIG = "S" * 10_000


def _at(folder: str, name: str) -> str:
    return f"{folder}/{name}"


def _std(barcode: str, study: str = "Prec01", experiment: str = "Run-2", panel: str = "P1") -> str:
    """The stored path for a row whose named values came out as given."""
    return _at(f"{study}/{experiment}", f"{study}_{experiment}_{panel}_Cardinal_{barcode}.svs")


def _scan(barcode: str):
    return lambda s: s.svs(f"{barcode}_x.svs")


def _no_formula_starts(o: Outcome, site: Site) -> None:
    rel = Path(o.rec.dest).relative_to(site.storage)
    for part in rel.parts + tuple(Path(rel.name).stem.split("_")):
        assert part[:1] not in "=+@-", f"{part!r} could be read as a formula"


def _fits(o: Outcome, site: Site) -> None:
    rel = Path(o.rec.dest).relative_to(site.storage)
    assert len(rel.name.encode()) <= 200 and all(len(p.encode()) <= 64 for p in rel.parts[:-1]), rel
    assert rel.name.endswith("_300011.svs")  # the barcode is never the part that is cut


def _whole_characters(o: Outcome, site: Site) -> None:
    rel = Path(o.rec.dest).relative_to(site.storage)
    assert all(len(p.encode()) <= 64 for p in rel.parts[:-1])
    assert rel.parts[0] == "日本語" * 7  # 21 characters = 63 bytes: cut between characters, never inside one
    assert unicodedata.is_normalized("NFC", str(rel))


def _nothing_outside(o: Outcome, site: Site) -> None:
    assert sorted(os.listdir(site.base)) == sorted(
        ["scanner", "storage", "sheet.csv", "state", "template.svs", "cardinal.toml"]
    )


CASES: list[Case] = [
    Case(
        "slash-in-study",
        "Study 'Prec/01'",
        _scan("300001"),
        "stored",
        None,
        (),
        row("300001", study="Prec/01"),
        stored_as=_std("300001", study="Prec-01"),
    ),
    Case(
        "backslash-in-experiment",
        "Experiment 'Run\\2'",
        _scan("300002"),
        "stored",
        None,
        (),
        row("300002", experiment="Run\\2"),
        stored_as=_std("300002"),
    ),
    Case(
        "dotdot-study",
        "Study '..'",
        _scan("300003"),
        HELD,
        BAD,
        ("{sheet} row {row}", "'Study'", "'..'"),
        row("300003", study=".."),
    ),
    Case(
        "traversal-study",
        "Study '../../../tmp/evil'",
        _scan("300004"),
        "stored",
        None,
        (),
        row("300004", study="../../../tmp/evil"),
        stored_as=_std("300004", study="tmp-evil"),
        extra=_nothing_outside,
    ),
    Case(
        "absolute-experiment",
        "Experiment '/etc/passwd'",
        _scan("300005"),
        "stored",
        None,
        (),
        row("300005", experiment="/etc/passwd"),
        stored_as=_std("300005", experiment="etc-passwd"),
    ),
    Case(
        "nul-in-panel",
        "Panel 'P\\x001'",
        _scan("300006"),
        HELD,
        BAD,
        ("{sheet} row {row}", "'Panel'", "NUL"),
        row("300006", panel="P\x001"),
    ),
    Case(
        "newline-in-panel",
        "Panel 'P1\\nP2' (quoted multi-line cell)",
        _scan("300007"),
        HELD,
        BAD,
        ("{sheet} row {row}", "'Panel'", "line break"),
        row("300007", panel="P1\nP2"),
    ),
    Case(
        "cr-in-scanner",
        "Scanner 'Card\\rinal'",
        _scan("300008"),
        HELD,
        BAD,
        ("{sheet} row {row}", "'Scanner'"),
        row("300008", scanner="Card\rinal"),
    ),
    Case(
        "nul-in-free-text",
        "Notes 'a\\x00b' (not in the name)",
        _scan("300009"),
        "stored",
        None,
        (),
        row("300009", notes="a\x00b"),
        stored_as=_std("300009"),
    ),
    Case(
        "10k-chars-study",
        "Study of 10,000 characters",
        _scan("300010"),
        "stored",
        None,
        (),
        row("300010", study=BIG),
        stored_as=_std("300010", study="S" * 64),
    ),
    Case(
        "10k-chars-everywhere",
        "Study, Experiment, Panel, Scanner of 10,000 characters each",
        _scan("300011"),
        "stored",
        None,
        (),
        ("300011", BIG, BIG, BIG, BIG, "", "", ""),
        extra=_fits,
    ),
    Case(
        "hyperlink-formula",
        'Panel \'=HYPERLINK("http://x","y")\'',
        _scan("300012"),
        "stored",
        None,
        (),
        row("300012", panel='=HYPERLINK("http://x","y")'),
        stored_as=_std("300012", panel="HYPERLINK(-http-x-,-y-)"),
        extra=_no_formula_starts,
    ),
    Case(
        "dde-formula",
        "Study \"+cmd|' /C calc'!A0\"",
        _scan("300013"),
        "stored",
        None,
        (),
        row("300013", study="+cmd|' /C calc'!A0"),
        stored_as=_std("300013", study="cmd-'-C-calc'!A0"),
        extra=_no_formula_starts,
    ),
    Case(
        "spaces-around",
        "Study '  Prec01  ', Experiment '\\tRun 2 '",
        _scan("300014"),
        "stored",
        None,
        (),
        row("300014", study="  Prec01  ", experiment="\tRun 2 "),
        stored_as=_std("300014"),
    ),
    Case(
        "rtl-override",
        "Study 'Prec\\u202e10'",
        _scan("300015"),
        "stored",
        None,
        (),
        row("300015", study="Prec\u202e10"),
        stored_as=_std("300015", study="Prec10"),
    ),
    Case(
        "zero-width-space",
        "Experiment 'Run\\u200b 2'",
        _scan("300016"),
        "stored",
        None,
        (),
        row("300016", experiment="Run\u200b 2"),
        stored_as=_std("300016"),
    ),
    Case(
        "windows-device-name",
        "Panel 'CON'",
        _scan("300017"),
        HELD,
        BAD,
        ("{sheet} row {row}", "'Panel'", "reserved"),
        row("300017", panel="CON"),
    ),
    Case(
        "only-separators",
        "Study '///'",
        _scan("300018"),
        HELD,
        BAD,
        ("{sheet} row {row}", "'Study'", "nothing usable"),
        row("300018", study="///"),
    ),
    Case(
        "blank-required",
        "Panel '   ' (REQUIRED)",
        _scan("300019"),
        HELD,
        "incomplete_row",
        ("row {row}", "'Panel'", "{sheet}"),
        row("300019", panel="   "),
    ),
    Case(
        "barcode-cell-spaces",
        "Barcode cell ' 300020 '",
        _scan("300020"),
        "stored",
        None,
        (),
        row(" 300020 "),
        stored_as=_std("300020"),
    ),
    Case(
        "emoji",
        "Study '🔬 Study'",
        _scan("300021"),
        "stored",
        None,
        (),
        row("300021", study="🔬 Study"),
        stored_as=_std("300021", study="🔬-Study"),
    ),
    Case(
        "decomposed-accent",
        "Study 'Cafe\\u0301' (NFD)",
        _scan("300022"),
        "stored",
        None,
        (),
        row("300022", study="Cafe\u0301"),
        stored_as=_std("300022", study="Caf\u00e9"),
    ),
    Case(
        "dot-leading",
        "Experiment '.hidden'",
        _scan("300023"),
        "stored",
        None,
        (),
        row("300023", experiment=".hidden"),
        stored_as=_std("300023", experiment="hidden"),
    ),
    Case(
        "html",
        "Panel '<script>alert(1)</script>'",
        _scan("300024"),
        "stored",
        None,
        (),
        row("300024", panel="<script>alert(1)</script>"),
        stored_as=_std("300024", panel="script-alert(1)-script"),
    ),
    Case(
        "windows-unsafe",
        "Experiment 'Run:2*?'",
        _scan("300025"),
        "stored",
        None,
        (),
        row("300025", experiment="Run:2*?"),
        stored_as=_std("300025"),
    ),
    Case(
        "line-separator",
        "Study 'Prec\\u202801' (Unicode line separator)",
        _scan("300026"),
        HELD,
        BAD,
        ("{sheet} row {row}", "'Study'"),
        row("300026", study="Prec\u202801"),
    ),
    Case(
        "multibyte-cut",
        "Study '日本語' x 50 (150 characters, 450 bytes)",
        _scan("300027"),
        "stored",
        None,
        (),
        row("300027", study="日本語" * 50),
        extra=_whole_characters,
    ),
]


@pytest.fixture(scope="module")
def corpus(
    tmp_path_factory: pytest.TempPathFactory, prefect_api: str
) -> Iterator[tuple[dict[str, Outcome], Site]]:
    yield from run_corpus(tmp_path_factory.mktemp("cells"), CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_sheet_cell(case: Case, corpus: tuple[dict[str, Outcome], Site]) -> None:
    outcomes, site = corpus
    check_outcome(outcomes[case.id], site)


def test_storage_holds_only_safe_names_inside_the_root(corpus: tuple[dict[str, Outcome], Site]) -> None:
    outcomes, site = corpus
    check_storage(outcomes, site)
