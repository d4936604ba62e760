"""What staff see: a held scan's flow-run page in the real Prefect UI, rendered by headless Chromium.

This module starts its own Prefect server with the UI on (the session's has it off, to start
faster), processes one scan whose barcode the sheet lacks with ``scanner-agent process`` against
it, then loads ``/runs/flow-run/<id>``: the page must name the run by barcode, show it Held with
the failed task Read Sheet Metadata, and offer Retry. The screenshot is kept in the test's tmp
folder (and copied to ``out/`` at the repository root with SCANNER_AGENT_KEEP_SCREENSHOTS=1).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanner_agent.testing.synthetic import write_svs
from tests.daemon_helpers import SCANNER_AGENT, records
from tests.harness import write_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason="headless Chromium is not installed (Debian: apt-get install -y chromium)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prefect server with its UI, on its own port and PREFECT_HOME; yields its base URL."""
    home = tmp_path_factory.mktemp("prefect-ui-home")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_UI_ENABLED": "true",
        # The UI calls the API from the browser: tell it where (the default is :4200).
        "PREFECT_UI_API_URL": f"{base}/api",
        "PREFECT_UI_URL": base,
        "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    with open(home / "server.log", "wb") as log:  # the server writes to its own copy of the descriptor
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("prefect")),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        end = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"the Prefect UI server did not start; see {home / 'server.log'}")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--window-size=1400,1000",
            "--virtual-time-budget=15000",
            *extra,
            url,
        ],
        capture_output=True,
        timeout=180,
    )


def test_held_scan_page_in_the_prefect_ui(tmp_path: Path, ui_server: str) -> None:
    cfg = write_config(
        tmp_path / "lab", name="Raven", prefect={"api_url": f"{ui_server}/api", "ui_url": ui_server}
    )
    scan = write_svs(
        tmp_path / "lab" / "scanner" / "777001_slide.svs", barcode="777001", width=1024, height=768
    )
    env = {**os.environ, "PREFECT_API_URL": f"{ui_server}/api"}
    done = subprocess.run(
        [str(SCANNER_AGENT), "process", "--config", str(cfg), str(scan)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 1 and "held" in done.stdout, done.stdout + done.stderr
    [rec] = records(tmp_path / "lab" / "state" / "raven.sqlite")
    assert rec.state == "held" and rec.flow_run_id
    page = f"{ui_server}/runs/flow-run/{rec.flow_run_id}"

    # The rendered page's text first (what a person reads), then the picture of it.
    dom = _chromium(page, tmp_path / "profile-dom", "--dump-dom")
    html = dom.stdout.decode(errors="replace")
    assert "777001" in html and "Held" in html, html[-2000:]
    assert "Read Sheet Metadata" in html and "Retry" in html, (
        "the failed task and the Retry button are on the page"
    )
    assert "Can't connect to Server API" not in html

    out = tmp_path / "screenshots"
    out.mkdir()
    png = out / "flow-run.png"
    shot = _chromium(page, tmp_path / "profile-shot", f"--screenshot={png}")
    assert png.exists(), shot.stderr.decode(errors="replace")[-2000:]
    from PIL import Image

    with Image.open(png) as im:
        assert im.size == (1400, 1000)
        colours = im.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 50, "a blank page, not the run's page"
    assert png.stat().st_size > 20_000
    if os.environ.get("SCANNER_AGENT_KEEP_SCREENSHOTS") == "1":
        keep = REPO / "out"
        keep.mkdir(exist_ok=True)
        shutil.copy2(png, keep / "flow-run.png")
