"""Property: whatever text a sheet's name columns hold, the pipeline either stores the scan inside
the storage root under a safe name, or holds it naming the sheet's row; it never fails, never
quarantines a good slide, never writes outside the root and never loses the source.

``tests/test_naming.py`` checks the naming functions on thousands of values; this runs a few
hypothesis-drawn sheets (several rows each, so each example is one batch of real flow runs)
through the whole pipeline, because safety that only holds in ``naming.py`` is not enough:
the folder layout, the transfer's own checks and the sidecar all see these values too.
"""

from __future__ import annotations

import itertools
import os
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from scanner_agent.scanunit import ScanUnit
from tests.badinput.corpus import (
    Site,
    digests,
    files_under,
    leftovers,
    make_site,
    process_together,
    sheet_csv,
)

ROWS_PER_EXAMPLE = 5
HOSTILE = [
    "..",
    ".",
    "/",
    "\\",
    "\x00",
    "\n",
    "\r",
    "\t",
    " ",
    "=",
    "+",
    "@",
    "-",
    "CON",
    "nul",
    "\u202e",
    "\u200b",
    "\u2028",
    "~",
    "$HOME",
    "%2e%2e",
    ":",
    "*",
    "?",
    '"',
    "<",
    ">",
    "|",
    "é",
    "e\u0301",
    "日本",
    "🔬",
]
cell = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40),
    st.lists(st.one_of(st.sampled_from(HOSTILE), st.text(max_size=3)), min_size=1, max_size=12).map("".join),
    st.text(st.sampled_from("S/."), min_size=60, max_size=400),
)
row_values = st.tuples(cell, cell, cell, cell)

_barcodes = itertools.count(800_000)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Iterator[Site]:
    s = make_site(tmp_path_factory.mktemp("property"), name="Property")
    yield s
    s.agent.close()


def _safe_component(part: str) -> bool:
    return (
        part not in ("", ".", "..")
        and "/" not in part
        and "\\" not in part
        and len(part.encode()) <= 255
        and not any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in part)
    )


@settings(
    max_examples=3,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(rows=st.lists(row_values, min_size=ROWS_PER_EXAMPLE, max_size=ROWS_PER_EXAMPLE))
@example(
    rows=[
        ("../../etc", "..\\..\\win", '=HYPERLINK("x")', "P1"),
        ("Prec01", "Run 2", "P1", "Cardinal"),
        ("\u202eevil", "a\u200bb", "@SUM(1)", "+x"),
        ("日本語" * 40, "S" * 300, "/" + "x" * 100, "🔬"),
        (".", "..", "...", "...."),
    ]
)
def test_any_sheet_values_store_inside_the_root_or_hold(site: Site, rows: list[tuple[str, ...]]) -> None:
    barcodes = [str(next(_barcodes)) for _ in rows]
    site.write_sheet(sheet_csv([(b, *values, "", "", "") for b, values in zip(barcodes, rows, strict=True)]))
    sources = [site.svs(f"{b}_p.svs") for b in barcodes]
    before = {s: digests(ScanUnit.from_path(s)) for s in sources}
    outside_before = sorted(os.listdir(site.base))

    recs = process_together(site.agent, sources, workers=2)

    root = site.storage.resolve()
    for src, rec in zip(sources, recs, strict=True):
        assert rec.state in ("stored", "held"), (rec.state, rec.kind, rec.reason)
        if rec.state == "held":
            assert rec.kind in ("sheet_malformed", "incomplete_row"), rec.reason
            assert str(site.sheet) in (rec.reason or "") and "row " in (rec.reason or "")
            assert digests(ScanUnit.from_path(src)) == before[src]
            continue
        dest = Path(rec.dest or "")
        assert root in dest.resolve().parents
        rel = dest.relative_to(site.storage)
        assert len(rel.parts) == 3 and all(_safe_component(p) for p in rel.parts), rel
        assert rel.name.endswith(f"_{rec.barcode}.svs") and len(rel.name.encode()) <= 200
        assert sorted(digests(ScanUnit.from_path(dest)).values()) == sorted(before[src].values())
        assert not src.exists()
    assert all(root in p.resolve().parents for p in files_under(site.storage))
    assert leftovers(site.storage) == []
    assert sorted(os.listdir(site.base)) == outside_before
