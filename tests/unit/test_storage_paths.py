"""Where storage puts a scan and its sidecar: never outside the storage root, one sidecar rule."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scanner_agent.core import errors
from scanner_agent.core.naming import build_folder, build_name
from scanner_agent.storage import destination, sidecar_path


def test_destination_inside_root(tmp_path: Path) -> None:
    dest = destination(tmp_path, PurePosixPath("Prec01/Run-2"), "x_620995.svs")
    assert dest == tmp_path / "Prec01" / "Run-2" / "x_620995.svs"


@pytest.mark.parametrize(
    ("folder", "name"),
    [
        (PurePosixPath("/etc"), "x"),
        (PurePosixPath("a/../.."), "x"),
        (PurePosixPath("a"), "../x"),
        (PurePosixPath("a"), ".."),
        (PurePosixPath("a"), ""),
    ],
)
def test_destination_refuses_escapes(tmp_path: Path, folder: PurePosixPath, name: str) -> None:
    with pytest.raises(errors.SheetMalformed):
        destination(tmp_path, folder, name)


def test_destination_refuses_a_symlink_leading_out(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "Prec01")
    with pytest.raises(errors.SheetMalformed, match="outside the storage root"):
        destination(root, PurePosixPath("Prec01/Run-2"), "x.svs")
    os.symlink(root / "real", root / "alias")  # a link that stays inside is fine
    assert destination(root, PurePosixPath("alias"), "x.svs") == root / "alias" / "x.svs"


cells = st.text(st.characters(codec="utf-8"), max_size=300) | st.sampled_from(
    ["..", ".", "../../etc", "/", "\\", "CON", "=cmd|' /C calc'!A0", "\u202e", "\0", "a\nb"]
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(cells, min_size=1, max_size=4), layout_values=st.lists(cells, min_size=2, max_size=2))
def test_any_sheet_values_give_a_destination_inside_root(
    tmp_path: Path, values: list[str], layout_values: list[str]
) -> None:
    try:
        name = build_name("620995", [(f"Col{i}", v, False) for i, v in enumerate(values)], ".svs")
        folder = build_folder("{A}/{B}", {"A": layout_values[0], "B": layout_values[1]})
    except (errors.SheetMalformed, errors.IncompleteRow):
        return
    dest = destination(tmp_path, folder, name)
    assert os.path.commonpath([tmp_path, os.path.normpath(dest)]) == str(tmp_path)
    assert dest.name == name and dest.parent.parent.parent == tmp_path


@pytest.mark.parametrize(
    ("stored", "is_dir", "sidecar"),
    [
        ("Prec01_620995.svs", False, "Prec01_620995.json"),
        ("Prec01_620995.mrxs", False, "Prec01_620995.json"),  # beside the .mrxs and its data folder
        ("Prec01_1.5_620995.svs", False, "Prec01_1.5_620995.json"),
        ("Prec01_620995", True, "Prec01_620995.json"),  # a DICOM folder
        ("Prec01_1.5_620995", True, "Prec01_1.5_620995.json"),  # a dot in a folder name is no suffix
    ],
)
def test_sidecar_sits_beside_the_stored_scan(tmp_path: Path, stored: str, is_dir: bool, sidecar: str) -> None:
    path = tmp_path / stored
    if is_dir:
        path.mkdir()
    else:
        path.write_bytes(b"scan")
    assert sidecar_path(path) == tmp_path / sidecar
