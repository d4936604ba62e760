"""``[metrics] listen``: a real daemon serves Prometheus text whose counters move as it stores scans;
a malformed or busy address stops ``run`` with exit 78 naming the key; the shipped Grafana
dashboard and Prometheus rules parse and name only metrics the agent exports."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from scanner_agent.config import load_config
from scanner_agent.core.errors import ConfigError
from scanner_agent.testing.synthetic import write_svs
from tests.daemon_helpers import (
    SCANNER_AGENT,
    SHEET_BARCODES,
    DaemonProcess,
    scanner_config,
    stored,
    wait_for,
)
from tests.harness import write_config

WAIT = 180
DOCS = Path(__file__).resolve().parents[1] / "docs"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(url: str) -> dict[str, float]:
    """``name{labels}`` → value, from the exposition text."""
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def exported_names() -> set[str]:
    """Every metric family the agent defines (the names in service/metrics.py)."""
    src = (Path(__file__).resolve().parents[1] / "scanner_agent" / "service" / "metrics.py").read_text()
    base = set(re.findall(r'PREFIX \+ "([a-z_]+)"', src))
    names = {"scanner_agent_" + b for b in base}
    for counter in ("scans_stored", "bytes_stored"):
        names |= {f"scanner_agent_{counter}_total", f"scanner_agent_{counter}_created"}
    for hist in ("transfer_seconds", "transfer_bytes_per_second"):
        names |= {f"scanner_agent_{hist}_{s}" for s in ("bucket", "sum", "count", "created")}
    return names


def test_counters_move_as_the_daemon_stores_scans(tmp_path: Path, prefect_api: str) -> None:
    port = _free_port()
    cfg = scanner_config(tmp_path, metrics={"listen": f"127.0.0.1:{port}"})
    watch = tmp_path / "scanner"
    url = f"http://127.0.0.1:{port}/metrics"
    with DaemonProcess(cfg) as d:
        d.wait_watching()
        m0 = scrape(url)
        assert m0["scanner_agent_scans_stored_total"] == 0
        assert m0["scanner_agent_watcher_healthy"] == 1
        assert m0['scanner_agent_scans{state="stored"}'] == 0
        assert m0["scanner_agent_queue_length"] == 0 and m0["scanner_agent_alert_outbox_backlog"] == 0
        assert "scanner_agent_last_stored_timestamp_seconds" not in m0
        write_svs(watch / f"{SHEET_BARCODES[0]}.svs", width=512, height=384, seed=1)
        write_svs(watch / "777777.svs", width=512, height=384, seed=2)  # no sheet row: held
        jpath = d.cfg.journal.path
        wait_for(lambda: len(stored(jpath)) == 1, WAIT, "the first scan to be stored", alive=d)
        m1 = wait_for(
            lambda: (m := scrape(url))["scanner_agent_scans_stored_total"] == 1 and m, 30, "the counter"
        )
        size = stored(jpath)[0].size
        assert m1["scanner_agent_bytes_stored_total"] == size
        assert m1['scanner_agent_scans{state="stored"}'] == 1
        assert m1["scanner_agent_transfer_seconds_count"] == 1
        assert m1["scanner_agent_transfer_bytes_per_second_count"] == 1
        assert m1["scanner_agent_last_stored_timestamp_seconds"] == pytest.approx(stored(jpath)[0].stored_at)
        m2 = wait_for(
            lambda: (m := scrape(url))["scanner_agent_held_scans"] == 1 and m, WAIT, "the held scan"
        )
        assert m2['scanner_agent_scans{state="held"}'] == 1
        assert m2["scanner_agent_oldest_held_seconds"] >= 0
        write_svs(watch / f"{SHEET_BARCODES[1]}.svs", width=512, height=384, seed=3)
        wait_for(lambda: len(stored(jpath)) == 2, WAIT, "the second scan to be stored", alive=d)
        m3 = wait_for(
            lambda: (m := scrape(url))["scanner_agent_scans_stored_total"] == 2 and m, 30, "the counter"
        )
        assert m3["scanner_agent_bytes_stored_total"] == sum(r.size for r in stored(jpath))
        assert {k.split("{")[0] for k in m3 if k.startswith("scanner_agent_")} <= exported_names()
        assert d.terminate() == 0


@pytest.mark.parametrize(
    "listen", ["9464", "127.0.0.1", "127.0.0.1:99999", "::1:9464", "bad host:9464", "127.0.0.1:port"]
)
def test_malformed_listen_is_a_config_error_naming_the_key(tmp_path: Path, listen: str) -> None:
    cfg = write_config(tmp_path, metrics={"listen": listen})
    with pytest.raises(ConfigError, match=r"metrics\.listen"):
        load_config(cfg)
    out = subprocess.run(
        [str(SCANNER_AGENT), "run", "--config", str(cfg)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 78 and "metrics.listen" in out.stderr, out.stderr


def test_listen_address_in_use_stops_run_with_exit_78(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = write_config(tmp_path, metrics={"listen": f"127.0.0.1:{port}"})
        out = subprocess.run(
            [str(SCANNER_AGENT), "run", "--config", str(cfg)], capture_output=True, text=True, timeout=300
        )
    assert out.returncode == 78, out.stderr
    assert f"metrics.listen: cannot listen on 127.0.0.1:{port}" in out.stderr and "in use" in out.stderr


def test_metrics_are_off_by_default(tmp_path: Path) -> None:
    assert load_config(write_config(tmp_path)).metrics.listen == ""


def test_grafana_dashboard_names_only_exported_metrics() -> None:
    board = json.loads((DOCS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 8
    used = {n for e in exprs for n in re.findall(r"scanner_agent_[a-z_]+", e)}
    assert used and used <= exported_names(), used - exported_names()
    # every family the agent exports has a panel
    bases = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}
    exported = {
        re.sub(r"_(total|bucket|sum|count)$", "", n) for n in exported_names() if not n.endswith("_created")
    }
    assert exported <= bases, exported - bases


def test_prometheus_alert_rules_name_only_exported_metrics() -> None:
    rules = yaml.safe_load((DOCS / "prometheus-alerts.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert alerts and all({"alert", "expr", "annotations"} <= set(r) for r in alerts)
    used = {n for r in alerts for n in re.findall(r"scanner_agent_[a-z_]+", r["expr"])}
    assert used and used <= exported_names(), used - exported_names()
