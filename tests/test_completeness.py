"""Scan units, event-path mapping, format signals, open-for-writing and the completeness tracker,
on real files in tmp_path (the tracker's clock is a plain counter so windows are exact).

Name rules and the settle decision itself are unit-tested in ``tests/unit/test_patterns.py`` and
``tests/unit/test_settle.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scanner_agent.core.patterns import DEFAULT_PATTERNS
from scanner_agent.scanunit import ScanUnit
from scanner_agent.watch import (
    CompletenessTracker,
    LinkWarnings,
    discover_units,
    format_says_done,
    is_dicom_folder,
    open_for_writing,
    unit_for_path,
)

DICOM_BYTES = b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00" + b"\0" * 64


def write(path: Path, data: bytes = b"slide bytes") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_mrxs(
    watch: Path,
    stem: str,
    finished: str | None = "True",
    *,
    bom: bool = False,
    section: str = "GENERAL",
    key: str = "SLIDE_CREATION_FINISHED",
) -> ScanUnit:
    write(watch / f"{stem}.mrxs", b"[mrxs]")
    folder = watch / stem
    write(folder / "Data0000.dat", b"d" * 100)
    write(folder / "Index.dat", b"i" * 10)
    lines = [f"[{section}]", "SLIDE_ID = 1234", "OBJECTIVE_MAGNIFICATION = 20"]
    if finished is not None:
        lines.append(f"{key} = {finished}")
    text = "\r\n".join(lines + ["[HIERARCHICAL]", "HIER_COUNT = 1", ""])
    write(folder / "Slidedat.ini", (b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return ScanUnit.from_path(watch / f"{stem}.mrxs")


# ---- discovery --------------------------------------------------------------------------------


def test_discover_finds_each_kind_of_unit_once(tmp_path: Path) -> None:
    watch = tmp_path / "watch"
    write(watch / "a.svs")
    write(watch / "B.SVS")  # scanners on Windows shares shout
    write(watch / "2024-05-01" / "c.ndpi")  # dated sub-folder
    mrxs = make_mrxs(watch, "m1")
    write(watch / "series1" / "img1.dcm", DICOM_BYTES)
    write(watch / "series1" / "img2.dcm", DICOM_BYTES)
    write(watch / "series1" / "DICOMDIR", DICOM_BYTES)
    for i in range(3):  # DICOM by magic, no extension (UID-style names)
        write(watch / "2024-05-01" / "series2" / f"1.2.840.{i}", DICOM_BYTES)
    write(watch / "notes.txt")
    write(watch / "a.svs.part")
    write(watch / "~b.svs")
    write(watch / ".incoming" / "hidden.svs")

    units = discover_units(watch, DEFAULT_PATTERNS)
    primaries = sorted(str(u.primary.relative_to(watch)) for u in units)
    assert primaries == sorted(
        ["a.svs", "B.SVS", "2024-05-01/c.ndpi", "m1.mrxs", "series1", "2024-05-01/series2"]
    )
    assert mrxs in units and mrxs.companion == watch / "m1"
    assert len(units) == len(set(units))


def test_mrxs_folder_is_never_a_scan_of_its_own(tmp_path: Path) -> None:
    watch = tmp_path / "w"
    make_mrxs(watch, "m1")
    write(watch / "m1" / "nested" / "odd.svs")  # even a slide-named file inside belongs to m1
    units = discover_units(watch, DEFAULT_PATTERNS)
    assert [u.name for u in units] == ["m1.mrxs"]


def test_folder_with_other_slides_is_not_a_dicom_unit(tmp_path: Path) -> None:
    watch = tmp_path / "w"
    write(watch / "mixed" / "x.svs")
    write(watch / "mixed" / "y.dcm", DICOM_BYTES)
    assert not is_dicom_folder(watch / "mixed")
    names = sorted(u.name for u in discover_units(watch, DEFAULT_PATTERNS))
    assert names == ["x.svs", "y.dcm"]


def test_dicom_detection_follows_patterns(tmp_path: Path) -> None:
    watch = tmp_path / "w"
    write(watch / "series" / "img.dcm", DICOM_BYTES)
    assert discover_units(watch, ("*.svs",)) == []


def test_symlinks_are_never_units_or_followed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    watch = tmp_path / "w"
    outside = tmp_path / "outside"
    write(outside / "real.svs")
    write(outside / "dir" / "inner.svs")
    watch.mkdir()
    os.symlink(outside / "real.svs", watch / "link.svs")
    os.symlink(outside / "dir", watch / "linkdir")
    write(watch / "ok.svs")
    assert [u.name for u in discover_units(watch, DEFAULT_PATTERNS)] == ["ok.svs"]
    assert unit_for_path(watch, watch / "link.svs") is None
    assert unit_for_path(watch, watch / "linkdir" / "inner.svs") is None
    assert "link.svs" in caplog.text  # said, so a person knows why it was skipped


def test_each_link_is_named_once_per_warnings_keeper(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    watch = tmp_path / "w"
    write(tmp_path / "real.svs")
    watch.mkdir()
    os.symlink(tmp_path / "real.svs", watch / "link.svs")
    links = LinkWarnings()
    for _ in range(3):  # a watcher lists the folder again and again
        discover_units(watch, DEFAULT_PATTERNS, links=links)
        unit_for_path(watch, watch / "link.svs", links=links)
    assert caplog.text.count("Ignoring symlink") == 1
    discover_units(watch, DEFAULT_PATTERNS)  # no keeper: this listing names it again
    assert caplog.text.count("Ignoring symlink") == 2


def test_link_warnings_forget_past_their_cap(caplog: pytest.LogCaptureFixture) -> None:
    links = LinkWarnings(cap=2)
    for name in ["a", "b", "a", "c", "a"]:
        links.note(Path("/w") / name)
    # a, b named; a again is known; c starts over at the cap; a is then new again
    assert [r.getMessage().split()[2] for r in caplog.records] == ["/w/a", "/w/b", "/w/c", "/w/a"]


def test_missing_watch_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        discover_units(tmp_path / "nope", DEFAULT_PATTERNS)


# ---- event paths ---------------------------------------------------------------------------------


def test_unit_for_path_maps_every_file_of_every_unit_back(tmp_path: Path) -> None:
    watch = tmp_path / "w"
    write(watch / "a.svs")
    make_mrxs(watch, "m1")
    write(watch / "d" / "series1" / "img1.dcm", DICOM_BYTES)
    write(watch / "d" / "series1" / "manifest.json", b"{}")
    write(watch / "d" / "series2" / "1.2.3", DICOM_BYTES)
    units = discover_units(watch, DEFAULT_PATTERNS)
    assert len(units) == 4
    for unit in units:
        assert unit_for_path(watch, unit.primary) == unit
        for fp, _rel in unit.files():
            assert unit_for_path(watch, fp) == unit, fp
    assert unit_for_path(watch, watch / "m1") == ScanUnit.from_path(watch / "m1.mrxs")


def test_unit_for_path_rejects_non_scans(tmp_path: Path) -> None:
    watch = tmp_path / "w"
    write(watch / "notes.txt")
    write(watch / "x.svs.tmp")
    write(watch / "dated" / "readme.md")
    write(watch / "orphan" / "Data0000.dat")  # MIRAX data folder whose .mrxs is not there yet
    assert unit_for_path(watch, watch) is None
    assert unit_for_path(watch, watch / "notes.txt") is None
    assert unit_for_path(watch, watch / "x.svs.tmp") is None
    assert unit_for_path(watch, watch / "dated") is None
    assert unit_for_path(watch, watch / "dated" / "readme.md") is None
    assert unit_for_path(watch, watch / "orphan" / "Data0000.dat") is None
    assert unit_for_path(watch, tmp_path / "elsewhere.svs") is None
    assert unit_for_path(watch, watch / ".incoming" / "y.svs") is None


def test_unit_for_path_of_a_vanished_slide_still_names_it(tmp_path: Path) -> None:
    watch = tmp_path / "w"
    watch.mkdir()
    assert unit_for_path(watch, watch / "gone.svs") == ScanUnit(primary=watch / "gone.svs")


# ---- format signal --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"), [("True", True), ("true", True), ("False", False), ("FALSE", False), ("0", False)]
)
def test_mirax_finished_flag(tmp_path: Path, value: str, expected: bool) -> None:
    assert format_says_done(make_mrxs(tmp_path, "m", value)) is expected


def test_mirax_flag_tolerates_bom_and_case(tmp_path: Path) -> None:
    unit = make_mrxs(tmp_path, "m", "True", bom=True, section="general", key="slide_creation_finished")
    assert format_says_done(unit) is True


def test_mirax_without_slidedat_is_not_done(tmp_path: Path) -> None:
    write(tmp_path / "m.mrxs")
    assert format_says_done(ScanUnit.from_path(tmp_path / "m.mrxs")) is False
    (tmp_path / "m").mkdir()
    assert format_says_done(ScanUnit.from_path(tmp_path / "m.mrxs")) is False
    write(tmp_path / "m" / "Slidedat.ini", b"\x00\x01 not an ini")
    assert format_says_done(ScanUnit.from_path(tmp_path / "m.mrxs")) is False


def test_mirax_without_the_key_gives_no_signal(tmp_path: Path) -> None:
    assert format_says_done(make_mrxs(tmp_path, "m", None)) is None


def test_other_formats_give_no_signal(tmp_path: Path) -> None:
    assert format_says_done(ScanUnit(primary=write(tmp_path / "a.svs"))) is None


# ---- open for writing -----------------------------------------------------------------------------


def test_open_for_writing_sees_a_writer_in_this_process(tmp_path: Path) -> None:
    path = write(tmp_path / "a.svs")
    unit = ScanUnit(primary=path)
    assert not open_for_writing(unit)
    with open(path, "rb"):
        assert not open_for_writing(unit)  # readers do not count
    with open(path, "ab"):
        assert open_for_writing(unit)
    with open(path, "r+b"):
        assert open_for_writing(unit)
    assert not open_for_writing(unit)


def test_open_for_writing_sees_another_process_and_folder_units(tmp_path: Path) -> None:
    unit = make_mrxs(tmp_path, "m")
    data = tmp_path / "m" / "Data0000.dat"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time; f=open(sys.argv[1],'ab'); print('open', flush=True); time.sleep(60)",
            str(data),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "open"
        assert open_for_writing(unit)
    finally:
        child.kill()
        child.wait()
    assert not open_for_writing(unit)


def test_open_for_writing_without_proc(tmp_path: Path) -> None:
    unit = ScanUnit(primary=write(tmp_path / "a.svs"))
    with open(unit.primary, "ab"):
        assert not open_for_writing(unit, proc=tmp_path / "no-proc")


# ---- completeness tracker ---------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_unchanged_unit_is_ready_after_the_window(tmp_path: Path) -> None:
    clock = Clock()
    tracker = CompletenessTracker(10, clock)
    unit = ScanUnit(primary=write(tmp_path / "a.svs"))
    tracker.observe(unit)
    assert tracker.pending() == [unit]
    clock.now += 9.9
    assert not tracker.ready(unit)
    clock.now += 0.2
    assert tracker.ready(unit)
    tracker.forget(unit)
    assert tracker.pending() == [] and not tracker.ready(unit)


def test_a_change_without_an_event_is_caught_at_the_check(tmp_path: Path) -> None:
    clock = Clock()
    tracker = CompletenessTracker(10, clock)
    path = write(tmp_path / "a.svs", b"x")
    unit = ScanUnit(primary=path)
    tracker.observe(unit)
    path.write_bytes(b"grown while no event came")
    clock.now += 11
    assert not tracker.ready(unit)  # fingerprint differs: window restarts now
    clock.now += 9
    assert not tracker.ready(unit)
    clock.now += 1.1
    assert tracker.ready(unit)


def test_close_hint_shortens_but_keeps_the_check(tmp_path: Path) -> None:
    clock = Clock()
    tracker = CompletenessTracker(8, clock)
    path = write(tmp_path / "a.svs", b"x")
    unit = ScanUnit(primary=path)
    tracker.observe(unit)
    tracker.hint_closed(unit)
    clock.now += 1.9
    assert not tracker.ready(unit)
    clock.now += 0.2
    assert tracker.ready(unit)
    # A write after the close cancels the hint: the full window applies again.
    path.write_bytes(b"reopened and written")
    tracker.observe(unit)
    clock.now += 2.1
    assert not tracker.ready(unit)
    clock.now += 6
    assert tracker.ready(unit)


def test_unfinished_mirax_is_not_ready_until_flag(tmp_path: Path) -> None:
    clock = Clock()
    tracker = CompletenessTracker(5, clock)
    unit = make_mrxs(tmp_path, "m", "False")
    tracker.observe(unit)
    clock.now += 6
    assert not tracker.ready(unit)
    make_mrxs(tmp_path, "m", "True")  # rewrites Slidedat.ini: the fingerprint changes
    tracker.observe(unit)
    clock.now += 5.1
    assert tracker.ready(unit)


def test_open_writer_blocks_readiness(tmp_path: Path) -> None:
    clock = Clock()
    tracker = CompletenessTracker(5, clock)
    path = write(tmp_path / "a.svs")
    unit = ScanUnit(primary=path)
    tracker.observe(unit)
    clock.now += 6
    with open(path, "ab"):
        assert not tracker.ready(unit)
    tracker.hint_closed(unit)  # the writer closed: the quarter window applies again
    clock.now += 1.3
    assert tracker.ready(unit)


def test_vanished_unit_is_never_ready(tmp_path: Path) -> None:
    clock = Clock()
    tracker = CompletenessTracker(1, clock)
    path = write(tmp_path / "a.svs")
    unit = ScanUnit(primary=path)
    tracker.observe(unit)
    path.unlink()
    clock.now += 5
    assert not tracker.ready(unit)
    assert tracker.fingerprint(unit) is None


def test_ready_units_checks_many_at_once(tmp_path: Path) -> None:
    clock = Clock()
    tracker = CompletenessTracker(2, clock)
    units = [ScanUnit(primary=write(tmp_path / f"s{i}.svs")) for i in range(50)]
    unfinished = make_mrxs(tmp_path, "m", "False")
    for unit in [*units, unfinished]:
        tracker.observe(unit)
    clock.now += 1
    assert tracker.ready_units() == []
    clock.now += 1.1
    with open(units[7].primary, "ab"):
        ready = tracker.ready_units()
    assert set(ready) == set(units) - {units[7]}
    assert unfinished not in ready


# --------------------------------------------------------------------------- VSI units and completion markers


def _vsi(folder: Path, stem: str) -> Path:
    from scanner_agent.testing.passthrough import write_vsi

    return write_vsi(folder, stem, stack_bytes=1000)


def test_vsi_and_its_name_folder_are_one_unit_when_vsi_is_a_pattern(tmp_path: Path) -> None:
    vsi = _vsi(tmp_path, "620995")
    patterns = [*DEFAULT_PATTERNS, "*.vsi"]
    [unit] = discover_units(tmp_path, patterns)
    assert unit == ScanUnit.from_path(vsi) and unit.companion == tmp_path / "_620995_"
    assert {rel for _p, rel in unit.files()} == {
        "620995.vsi",
        "_620995_/stack1/frame_t.ets",
        "_620995_/stack10001/frame_t.ets",
    }
    # An event deep inside the data folder belongs to the .vsi, as a MIRAX data file does to its .mrxs.
    assert unit_for_path(tmp_path, tmp_path / "_620995_" / "stack1" / "frame_t.ets", patterns) == unit


def test_without_vsi_in_the_patterns_neither_the_vsi_nor_its_folder_is_a_scan(tmp_path: Path) -> None:
    _vsi(tmp_path, "620995")
    assert discover_units(tmp_path, DEFAULT_PATTERNS) == []


def test_orphan_markers_are_found_and_a_scans_own_marker_is_not(tmp_path: Path) -> None:
    from scanner_agent.watch.units import orphan_markers, scan_for_marker

    (tmp_path / "620995.svs").write_bytes(b"II*\0" + b"\0" * 100)
    (tmp_path / "620995.done").touch()
    (tmp_path / "777777.done").touch()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "888888.done").touch()
    units = discover_units(tmp_path)
    assert orphan_markers(tmp_path, "{stem}.done", units) == [
        tmp_path / "777777.done",
        tmp_path / "sub" / "888888.done",
    ]
    assert scan_for_marker(tmp_path / "620995.done", "{stem}.done") == ScanUnit.from_path(
        tmp_path / "620995.svs"
    )
    assert scan_for_marker(tmp_path / "777777.done", "{stem}.done") is None
    assert orphan_markers(tmp_path, "", units) == []
