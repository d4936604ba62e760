"""Barcodes read from the slide's label picture (zxing-cpp) and Hamamatsu's barcode tag, on slides
the tests build with real printed codes, opened by the real OpenSlide; end to end through the agent
with the local Slack and SMTP servers and the session Prefect server."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tifffile

from scanner_agent.core import errors
from scanner_agent.core.barcode import BarcodeResult, compile_barcode_regex
from scanner_agent.scanunit import ScanUnit
from scanner_agent.slides import find_barcode
from scanner_agent.testing.artwork import code_label
from scanner_agent.testing.ndpi import write_ndpi
from scanner_agent.testing.tiff_slides import write_labelled_svs
from tests.harness import make_agent, process, write_config
from tests.servers.slack_api import SlackApiServer
from tests.servers.smtp import SmtpServer

pytest_plugins = ["tests.servers.fixtures"]

TOKEN = "xoxb-label-7777-SECRETlabelTOKEN"
SMTP_USER = "scanner-agent"
SMTP_PASSWORD = "l4bel-Sm7p-never-shown"
SIX = compile_barcode_regex(r"(?<!\d)(?P<barcode>\d{6})(?!\d)")


def slide(tmp_path: Path, name: str, codes: list[tuple[str, str]], **kw: Any) -> Path:
    look = {k: kw.pop(k) for k in ("angle", "jpeg_quality", "blur", "contrast") if k in kw}
    return write_labelled_svs(tmp_path / name, code_label(codes, **look), width=512, height=384, **kw)


def find(path: Path, **kw: Any) -> BarcodeResult:
    return find_barcode(ScanUnit.from_path(path), SIX, **kw)


def no_barcode(path: Path, **kw: Any) -> errors.NoBarcode:
    with pytest.raises(errors.NoBarcode) as info:
        find(path, **kw)
    assert info.value.path == str(path) and info.value.state == "quarantined"
    return info.value


# --- decoding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("symbology", ["DataMatrix", "QRCode", "Code128", "Code39"])
@pytest.mark.parametrize(
    "look",
    [
        {},
        {"angle": 90},
        {"angle": 197, "jpeg_quality": 40},
        {"angle": 33, "blur": 0.8},
        {"angle": 290, "contrast": 0.3, "jpeg_quality": 60},
    ],
    ids=["plain", "turned-90", "turned-197-jpeg40", "turned-33-blurred", "turned-290-faint-jpeg60"],
)
def test_label_codes_read_at_any_angle_jpeg_blurred_faint(
    tmp_path: Path, symbology: str, look: dict[str, Any]
) -> None:
    p = slide(tmp_path, "scan_a.svs", [("620995", symbology)], **look)
    assert find(p) == BarcodeResult("620995", f"label image, {symbology}")


def test_label_only_in_the_macro_picture(tmp_path: Path) -> None:
    p = slide(tmp_path, "scan_m.svs", [("620995", "DataMatrix")], label_in="macro", angle=180)
    assert find(p) == BarcodeResult("620995", "label image (in the macro picture), DataMatrix")


def test_same_barcode_in_two_symbols_is_one_barcode(tmp_path: Path) -> None:
    p = slide(tmp_path, "scan_s.svs", [("620995", "QRCode"), ("620995", "Code128")])
    result = find(p)
    assert result.barcode == "620995" and result.source.startswith("label image, ")
    assert set(result.source.removeprefix("label image, ").split(" + ")) == {"QRCode", "Code128"}


def test_regex_picks_the_barcode_out_of_a_longer_code(tmp_path: Path) -> None:
    p = slide(tmp_path, "scan_l.svs", [("LAB-620995-HE", "DataMatrix")])
    assert find(p) == BarcodeResult("620995", "label image, DataMatrix")


# --- sources and their order -----------------------------------------------------------------


def test_metadata_comes_before_the_label_by_default(tmp_path: Path) -> None:
    p = slide(tmp_path, "scan_o.svs", [("645750", "DataMatrix")], barcode="620995")
    assert find(p) == BarcodeResult("620995", "slide metadata (aperio.Barcode)")
    assert find(p, sources=("label", "metadata")) == BarcodeResult("645750", "label image, DataMatrix")


def test_label_not_tried_when_not_listed(tmp_path: Path) -> None:
    p = slide(tmp_path, "scan_n.svs", [("620995", "DataMatrix")])
    err = no_barcode(p, sources=("name", "metadata"))
    assert "label image" not in err.message


def test_name_not_tried_when_not_listed(tmp_path: Path) -> None:
    p = slide(tmp_path, "645750_x.svs", [("620995", "DataMatrix")])
    assert find(p, sources=("label",)).barcode == "620995"


def test_barcode_sources_config_is_validated(tmp_path: Path) -> None:
    from scanner_agent.config import load_config

    good = write_config(tmp_path / "a", scanner={"barcode_sources": ["label", "name"]})
    assert load_config(good).scanner.barcode_sources == ["label", "name"]
    assert load_config(write_config(tmp_path / "b")).scanner.barcode_sources == ["name", "metadata", "label"]
    bad = write_config(tmp_path / "c", scanner={"barcode_sources": ["name", "ocr"]})
    with pytest.raises(errors.ConfigError, match=r"barcode_sources.*unknown barcode source 'ocr'"):
        load_config(bad)


# --- bad input -------------------------------------------------------------------------------


def test_label_with_no_code(tmp_path: Path) -> None:
    p = slide(tmp_path, "scan_e.svs", [])
    err = no_barcode(p)
    assert err.message.startswith(f"No barcode for {p}: file name 'scan_e' does not match")
    assert err.message.endswith("label image: no barcode symbol could be decoded")
    assert err.label_png is None  # not asked for


def test_label_with_two_different_codes_names_both(tmp_path: Path) -> None:
    p = slide(tmp_path, "scan_t.svs", [("620995", "DataMatrix"), ("645750", "Code128")])
    err = no_barcode(p)
    assert (
        "label image holds 2 different barcodes, '620995' (DataMatrix) and '645750' (Code128); "
        "nothing is guessed" in err.message
    )


def test_code_whose_text_fails_the_regex(tmp_path: Path) -> None:
    p = slide(tmp_path, "scan_r.svs", [("ABC-12", "Code128")])
    err = no_barcode(p)
    assert err.message.endswith(
        f"label image: decoded Code128 'ABC-12' does not match scanner.barcode_regex {SIX.pattern!r}"
    )


def test_label_that_is_not_an_image(tmp_path: Path) -> None:
    p = slide(tmp_path, "scan_g.svs", [("620995", "DataMatrix")])
    with tifffile.TiffFile(p) as tif:  # the label's pixel data, overwritten with garbage
        page = next(pg for pg in tif.pages if "label" in pg.description.split("\r\n")[-1])
        offset, count = page.dataoffsets[0], page.databytecounts[0]
    with p.open("r+b") as fh:
        fh.seek(offset)
        fh.write(b"not a picture " * (count // 14))
    err = no_barcode(p)
    assert "label image: its label image is not a readable image" in err.message


def test_ndpi_barcode_tag(tmp_path: Path) -> None:
    p = write_ndpi(tmp_path / "scan_h.ndpi", barcode="620995")
    assert find(p) == BarcodeResult("620995", "slide metadata (NDPI tag 65468)")


def test_ndpi_with_an_empty_tag_is_not_a_barcode(tmp_path: Path) -> None:
    p = write_ndpi(tmp_path / "scan_i.ndpi", barcode="")
    err = no_barcode(p, sources=("name", "metadata"))
    assert err.message.endswith("; slide metadata (NDPI tag 65468) is empty")


# --- the label picture for the alert -----------------------------------------------------------


def test_no_barcode_carries_the_label_only_when_asked_and_survives_a_worker(tmp_path: Path) -> None:
    p = slide(tmp_path, "scan_k.svs", [("ABC-12", "DataMatrix")])
    assert no_barcode(p).label_png is None
    err = no_barcode(p, keep_label=True)
    assert err.label_png is not None and err.label_png.startswith(b"\x89PNG")
    again = pickle.loads(pickle.dumps(err))  # a worker process hands it back pickled
    assert (again.message, again.path, again.label_png) == (err.message, err.path, err.label_png)


@pytest.fixture
def lab(
    tmp_path: Path, slack: SlackApiServer, smtp: SmtpServer, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    password_file = tmp_path / "smtp-password"
    password_file.write_text(SMTP_PASSWORD + "\n")
    os.chmod(password_file, 0o600)
    agents: list[Any] = []

    def build(attach_label: bool) -> Any:
        alerts = {
            "slack_channel": "#slide-scanning",
            "slack_api_url": slack.url,
            "email_to": ["lab@example.org"],
            "email_from": "scanner@example.org",
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp.port,
            "smtp_username": SMTP_USER,
            "smtp_password_file": str(password_file),
            "smtp_ca_file": str(smtp.cert_path),
            "attach_label": attach_label,
        }
        agent = make_agent(write_config(tmp_path / f"lab-{attach_label}", alerts=alerts))
        agents.append(agent)
        return agent

    yield build
    for a in agents:
        a.close()


@pytest.mark.parametrize("attach", [False, True])
def test_no_barcode_alert_attaches_the_label_only_with_attach_label(
    lab: Any, slack: SlackApiServer, smtp: SmtpServer, attach: bool
) -> None:
    agent = lab(attach)
    p = slide(agent.cfg.scanner.watch, "slide_0007.svs", [])
    [rec] = process(agent, p)
    assert rec.state == "quarantined" and "label image: no barcode symbol could be decoded" in rec.reason
    [mail] = smtp.messages
    names = [a.get_filename() for a in mail.iter_attachments()]
    label_uploads = [
        c for c in slack.calls_to("files.getUploadURLExternal") if "label" in c.payload["filename"]
    ]
    if attach:
        assert names == ["slide_0007.svs-label.png"] and len(label_uploads) == 1
        [(_id, png)] = slack.uploads.items()
        assert png.startswith(b"\x89PNG")
    else:
        assert names == [] and label_uploads == [] and slack.uploads == {}


# --- end to end: stored by the label's barcode, run renamed -------------------------------------


def test_label_only_scan_is_stored_and_its_run_named_by_the_barcode(tmp_path: Path, prefect_api: str) -> None:
    agent = make_agent(write_config(tmp_path / "lab"))
    try:
        p = slide(agent.cfg.scanner.watch, "slide_0042.svs", [("620995", "DataMatrix")], angle=75)
        [rec] = process(agent, p)
        assert rec.state == "stored", rec.reason
        assert rec.details["barcode_source"] == "label image, DataMatrix"
        sidecar = json.loads(Path(rec.dest).with_suffix(".json").read_text())
        assert sidecar["barcode"] == "620995" and sidecar["barcode_source"] == "label image, DataMatrix"

        async def read_run() -> Any:
            from prefect.client.orchestration import get_client
            from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

            async with get_client() as c:
                run = await c.read_flow_run(rec.flow_run_id)
                # This run's only: the session's server holds more than one page of artifacts.
                only = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
                artifacts = await c.read_artifacts(artifact_filter=only)
            return run, artifacts

        run, artifacts = asyncio.run(read_run())
        assert run.name == "620995"
        assert "barcode:620995" in run.tags and "scanner:Cardinal" in run.tags
        assert any(t.startswith("study:") for t in run.tags)  # the study tag did not drop the barcode's
        mine = [a for a in artifacts if a.flow_run_id == run.id]
        assert any("| Barcode from | label image, DataMatrix |" in (a.data or "") for a in mine)
    finally:
        agent.close()
