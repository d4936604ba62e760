"""Two scanners, one Prefect server: each agent a real ``scanner-agent run`` process with its own
folders and journal, both reporting to the session's server.

Checked through the Prefect API, the way staff see it in the UI: one flow per scanner, runs named
by barcode; a held scan's run names the failed task and what to do; Retry pressed in the UI (the
exact call the UI makes) is picked up by the agent that holds the scan, not the other one; an
agent killed mid-copy leaves no run Running once it is back; ``check`` and ``setup-prefect``
work against the server, and the automations it creates really fire.

Scanner names carry a random suffix (``Cardinal-1a2b3c``): other tests in the session use plain
``Cardinal``, and a deployment is shared by every agent of the same scanner name.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from scanner_agent.orchestration import automations as prefect_setup
from scanner_agent.testing.synthetic import write_svs
from tests.daemon_helpers import SCANNER_AGENT, DaemonProcess, final_task_runs, partials, records, wait_for
from tests.harness import write_config

HEAD = (
    "Include in Name?,REQUIRED,REQUIRED,REQUIRED,REQUIRED,,,\n"
    "Barcode,Study,Experiment,Panel,Scanner,Scan Date,Rescan Requested,Notes\n"
)
CARDINAL_SHEET = HEAD + "620995,Prec01,Run 2,P1,Cardinal,,,\n620996,Prec01,Run 2,P1,Cardinal,,,\n"
RAVEN_SHEET = HEAD + "545891,Prec01,Run 3,P2,Raven,,,\n"
UI_URL = "http://prefect.lab.example:4200"  # what staff open; links in notifications point there
BIG_MB = 400  # a cross-filesystem copy of this takes ~1-2 s here: long enough to kill it mid-way


# --------------------------------------------------------------------------- a chat webhook


class Webhook:
    """A local HTTP endpoint standing in for a Slack incoming webhook: records each JSON post."""

    def __init__(self) -> None:
        posts: list[dict[str, Any]] = []
        self.posts = posts

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                posts.append({"path": self.path, "json": json.loads(body or b"{}")})
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T0LAB/B0SCAN/secretpart"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def texts(self) -> list[str]:
        return [str(p["json"].get("text", "")) for p in self.posts]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------- reading Prefect back


def _client_call(fn: Any) -> Any:
    async def go() -> Any:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            return await fn(client)

    return asyncio.run(go())


def flow_runs(flow_name: str) -> list[Any]:
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    return _client_call(
        lambda c: c.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])), limit=200)
    )


def flow_run(run_id: str) -> Any:
    return _client_call(lambda c: c.read_flow_run(run_id))


def state_names(run_id: str) -> list[str]:
    states = _client_call(lambda c: c.read_flow_run_states(run_id))
    return [s.name for s in sorted(states, key=lambda s: s.timestamp)]


def task_states(run_id: str, *, at_least: int = 1) -> dict[str, tuple[str, str]]:
    trs = _client_call(lambda c: final_task_runs(c, run_id, at_least=at_least))
    out: dict[str, tuple[str, str]] = {}
    for t in sorted(trs, key=lambda t: t.expected_start_time or t.created):
        out[t.name.rsplit("-", 1)[0]] = (t.state.type.value, t.state.message or "")
    return out


# --------------------------------------------------------------------------- the lab


@dataclass
class Scanner:
    name: str
    config: Path
    watch: Path
    storage: Path
    journal: Path
    sheet: Path
    daemon: DaemonProcess | None = None
    old_daemons: list[DaemonProcess] = field(default_factory=list)

    @property
    def flow_name(self) -> str:
        return f"Scan Image Flow: {self.name}"

    def start(self) -> DaemonProcess:
        if self.daemon is not None:
            self.old_daemons.append(self.daemon)
        self.daemon = DaemonProcess(
            self.config, self.config.with_name(f"{self.config.stem}-{len(self.old_daemons)}.log")
        )
        self.daemon.start()
        self.daemon.wait_watching(180)
        return self.daemon

    def drop(self, name: str, *, barcode: str, pad_mb: int = 0) -> Path:
        """Put a scan in the watch folder as a scanner finishes one: written aside, renamed in."""
        tmp = write_svs(self.watch / f".{name}.writing", barcode=barcode, width=1024, height=768)
        if pad_mb:  # bytes past the last IFD: the slide still opens, the copy takes longer
            with open(tmp, "ab") as fh:
                block = bytes(1 << 20)
                for _ in range(pad_mb):
                    fh.write(block)
        final = self.watch / name
        os.rename(tmp, final)
        return final

    def record(self, filename: str) -> Any:
        rows = [r for r in records(self.journal) if Path(r.path).name == filename]
        return rows[-1] if rows else None

    def wait_state(self, filename: str, *states: str, timeout: float = 120) -> Any:
        def check() -> Any:
            rec = self.record(filename)
            return rec if rec is not None and rec.state in states else None

        return wait_for(
            check, timeout, f"{filename} to be {'/'.join(states)} on {self.name}", alive=self.daemon
        )


@dataclass
class Lab:
    cardinal: Scanner
    raven: Scanner
    webhook: Webhook
    api_url: str


def _scanner(
    base: Path,
    name: str,
    sheet: str,
    api_url: str,
    hook_file: Path,
    *,
    watch: Path | None = None,
    recheck: float = 1,
    ui_url: str = "",
) -> Scanner:
    cfg = write_config(
        base,
        name=name,
        sheet=sheet,
        scanner={"watch": str(watch or base / "scanner"), "settle_seconds": 0.3, "rescan_seconds": 2},
        prefect={
            "api_url": api_url,
            "retry_poll_seconds": 1,
            "notify_webhook_url_file": str(hook_file),
            "ui_url": ui_url,
        },
    )
    # write_config's `sheet` is the CSV's text, so the [sheet] section's key is set here.
    text = cfg.read_text()
    assert "recheck_seconds = 1\n" in text
    cfg.write_text(text.replace("recheck_seconds = 1\n", f"recheck_seconds = {recheck!r}\n"))
    w = watch or base / "scanner"
    w.mkdir(parents=True, exist_ok=True)
    return Scanner(
        name, cfg, w, base / "storage", base / "state" / f"{name.lower()}.sqlite", base / "sheet.csv"
    )


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("multi")
    suffix = uuid.uuid4().hex[:6]
    hook = Webhook()
    hook_file = base / "webhook-url"
    hook_file.write_text(hook.url + "\n")
    hook_file.chmod(0o600)
    # Cardinal's scanner folder on tmpfs, storage on disk: a real copy, slow enough to be killed mid-way.
    shm = Path("/dev/shm")
    cross_fs = shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != base.stat().st_dev
    watch = shm / f"scanner-agent-test-{suffix}" if cross_fs else None
    cardinal = _scanner(
        base / "cardinal",
        f"Cardinal-{suffix}",
        CARDINAL_SHEET,
        prefect_api,
        hook_file,
        watch=watch,
        ui_url=UI_URL,
    )
    # Raven re-checks held scans only hourly: here a held scan moves only when Retry is pressed.
    raven = _scanner(base / "raven", f"Raven-{suffix}", RAVEN_SHEET, prefect_api, hook_file, recheck=3600)
    try:
        cardinal.start()
        raven.start()
        yield Lab(cardinal, raven, hook, prefect_api)
    finally:
        for s in (cardinal, raven):
            for d in [*s.old_daemons, s.daemon]:
                if d is not None:
                    d.__exit__(None, None, None)
        asyncio.run(
            prefect_setup.remove(
                [prefect_setup.CRASH_AUTOMATION]
                + [prefect_setup.NOTIFY_AUTOMATION.format(scanner=s.name) for s in (cardinal, raven)],
                [prefect_setup.block_name(s.name) for s in (cardinal, raven)],
            )
        )
        hook.close()
        if watch is not None:
            subprocess.run(["rm", "-rf", str(watch)], check=False)


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCANNER_AGENT), *args], capture_output=True, text=True, timeout=timeout, env=dict(os.environ)
    )


# --------------------------------------------------------------------------- the tests


def test_each_scanner_has_its_own_flow_with_runs_named_by_barcode(lab: Lab) -> None:
    lab.cardinal.drop("620995_a.svs", barcode="620995")
    lab.raven.drop("545891_b.svs", barcode="545891")
    c = lab.cardinal.wait_state("620995_a.svs", "stored")
    r = lab.raven.wait_state("545891_b.svs", "stored")
    assert Path(c.dest).is_relative_to(lab.cardinal.storage) and Path(r.dest).is_relative_to(
        lab.raven.storage
    )

    for scanner, rec, barcode, study in (
        (lab.cardinal, c, "620995", "Prec01"),
        (lab.raven, r, "545891", "Prec01"),
    ):
        runs = flow_runs(scanner.flow_name)
        assert [run.name for run in runs] == [barcode], (
            f"{scanner.flow_name} should hold exactly its own scan's run"
        )
        # The journal says "stored" a moment before the run proposes its final state.
        run = wait_for(
            lambda rec=rec: (r := flow_run(rec.flow_run_id)) and r.state.is_final() and r,
            30,
            f"run {barcode} to finish",
        )
        assert str(run.id) == str(runs[0].id) and run.state.is_completed()
        assert f"scanner:{scanner.name}" in run.tags and f"study:{study}" in run.tags
        assert run.deployment_id is not None, (
            "runs must belong to the scanner's deployment, or the UI offers no Retry"
        )
        assert run.parameters["scanner"] == scanner.name


@pytest.mark.parametrize("ui, force", [("v2", True), ("v1", False)])
def test_held_scan_is_retried_from_the_ui_by_the_agent_that_holds_it(lab: Lab, ui: str, force: bool) -> None:
    barcode = "777001" if ui == "v2" else "777002"
    name = f"{barcode}_held.svs"
    lab.raven.drop(name, barcode=barcode)
    rec = lab.raven.wait_state(name, "held")
    assert barcode in (rec.reason or "")

    def run_is_held() -> Any:
        run = flow_run(rec.flow_run_id)
        return run if run.state.is_final() else None

    run = wait_for(run_is_held, 60, f"run {barcode} to end")
    assert run.name == barcode and run.state.type.value == "FAILED" and run.state.name == "Held"
    tasks = task_states(rec.flow_run_id, at_least=2)  # "Identify Barcode", "Read Sheet Metadata"
    failed = [t for t, (st, _msg) in tasks.items() if st == "FAILED"]
    assert failed == ["Read Sheet Metadata"], tasks
    message = tasks["Read Sheet Metadata"][1]
    assert f"No row for barcode {barcode}" in message and "Add a row for this barcode" in message, message

    # Staff add the row, then press Retry on the run's page. The UI's own call, per UI version
    # (prefect/server/ui*/assets): V2 (the default in 3.8) forces, V1 does not.
    with lab.raven.sheet.open("a", encoding="utf-8") as fh:
        fh.write(f"{barcode},Prec01,Run 3,P2,Raven,,,\n")
    from prefect.client.schemas.objects import State, StateType

    result = _client_call(
        lambda c: c.set_flow_run_state(
            rec.flow_run_id,
            State(type=StateType.SCHEDULED, name="AwaitingRetry", message="Retry from the UI"),
            force=force,
        )
    )
    assert result.status.value == "ACCEPT", result

    stored = lab.raven.wait_state(name, "stored", timeout=120)
    assert Path(stored.dest).is_relative_to(lab.raven.storage)
    assert lab.cardinal.record(name) is None, "the other scanner's agent must not touch Raven's scan"
    assert stored.flow_run_id == rec.flow_run_id, "one run per scan: the retried run is the same run"

    def completed() -> Any:
        return flow_run(rec.flow_run_id).state.is_completed()

    wait_for(completed, 30, f"run {barcode} to be Completed")
    history = state_names(rec.flow_run_id)
    assert history.index("Held") < history.index("AwaitingRetry") < len(history) - 1, history
    assert history[-2:] == ["Running", "Completed"], history
    assert [r.name for r in flow_runs(lab.cardinal.flow_name)].count(barcode) == 0


def test_killed_agent_leaves_no_run_running_and_the_crash_is_notified(lab: Lab) -> None:
    s = lab.cardinal
    if s.watch.stat().st_dev == s.storage.stat().st_dev:
        pytest.skip(
            "needs /dev/shm on another filesystem than the test's tmp folder (a same-filesystem move is a "
            "rename, too quick to be killed mid-way)"
        )
    done = _cli("setup-prefect", "--config", str(s.config), "--notify")
    assert done.returncode == 0, done.stdout + done.stderr

    name = "620996_big.svs"
    s.drop(name, barcode="620996", pad_mb=BIG_MB)

    def copying() -> Any:
        rec = s.record(name)
        return rec if rec is not None and rec.state == "processing" and partials(s.storage) else None

    rec = wait_for(copying, 120, f"{name} to be half copied", interval=0.005, alive=s.daemon)
    assert s.daemon is not None
    s.daemon.kill()
    run_id = rec.flow_run_id
    assert flow_run(run_id).state.type.value == "RUNNING", (
        "killed mid-copy, the run is still Running in Prefect"
    )

    s.start()
    stored = s.wait_state(name, "stored", timeout=180)
    assert stored.flow_run_id == run_id
    assert Path(stored.dest).stat().st_size > BIG_MB << 20
    wait_for(lambda: s.record(name).source_removed, 30, f"{name} to be removed from the scanner's disk")
    assert not (s.watch / name).exists()

    def settled() -> Any:
        runs = flow_runs(s.flow_name)
        return (
            runs if all(r.state.type.value not in ("RUNNING", "PENDING", "SCHEDULED") for r in runs) else None
        )

    runs = wait_for(settled, 30, "every Cardinal run to reach a final state")
    assert "620996" in {r.name for r in runs}
    history = state_names(run_id)
    assert "Crashed" in history and history[-1] == "Completed", history

    # setup-prefect --notify: the server posts the crash to the lab's webhook, with the run's link.
    def notified() -> list[str]:
        return [t for t in lab.webhook.texts() if "620996" in t and "Crashed" in t]

    texts = wait_for(notified, 90, "the crash notification on the webhook")
    time.sleep(3)  # a second notification would be a duplicate
    assert len(notified()) == 1, (notified(), history)
    text = texts[0]
    assert s.flow_name in text and f"{UI_URL}/runs/flow-run/{run_id}" in text
    assert "secretpart" not in text


def test_check_says_the_server_answers(lab: Lab) -> None:
    out = _cli("check", "--config", str(lab.raven.config))
    line = [ln for ln in out.stdout.splitlines() if "prefect:" in ln]
    assert line and "✓" in line[0] and f"server {lab.api_url} answers" in line[0], out.stdout + out.stderr


def test_setup_prefect_creates_the_automations_once(lab: Lab) -> None:
    cfg = str(lab.raven.config)
    first = _cli("setup-prefect", "--config", cfg, "--notify")
    assert first.returncode == 0, first.stdout + first.stderr
    again = _cli("setup-prefect", "--config", cfg, "--notify")
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("unchanged") == 3, again.stdout
    assert "secretpart" not in first.stdout + first.stderr + again.stdout + again.stderr

    crash_name = prefect_setup.CRASH_AUTOMATION
    notify_name = prefect_setup.NOTIFY_AUTOMATION.format(scanner=lab.raven.name)
    [crash] = _client_call(lambda c: c.read_automations_by_name(crash_name))
    [notify] = _client_call(lambda c: c.read_automations_by_name(notify_name))

    t = crash.trigger
    assert crash.enabled and t.posture.value == "Proactive" and t.threshold == 1
    assert t.after == {"prefect.flow-run.heartbeat"}
    assert {
        "prefect.flow-run.heartbeat",
        "prefect.flow-run.Completed",
        "prefect.flow-run.Held",
        "prefect.flow-run.Quarantined",
        "prefect.flow-run.Crashed",
    } <= t.expect
    assert t.for_each == {"prefect.resource.id"} and t.within.total_seconds() == 600
    assert t.match_related.root == {
        "prefect.resource.role": "flow",
        "prefect.resource.name": "Scan Image Flow: *",
    }
    [act] = crash.actions
    assert act.type == "change-flow-run-state" and act.state.value == "CRASHED" and not act.force

    n = notify.trigger
    assert (
        n.posture.value == "Reactive" and n.match_related.root["prefect.resource.name"] == lab.raven.flow_name
    )
    # Raven's config has no Slack/e-mail alerts of its own, so the server notifies every bad ending.
    assert n.expect == {f"prefect.flow-run.{s}" for s in ("Failed", "Held", "Quarantined", "Crashed")}
    [send] = notify.actions
    assert send.type == "send-notification"
    doc = _client_call(lambda c: c.read_block_document(send.block_document_id, include_secrets=False))
    assert doc.name == prefect_setup.block_name(lab.raven.name) and doc.data["url"] == "{{webhook_url}}"
    assert "secretpart" not in json.dumps(doc.data, default=str), "the webhook URL is a credential"


def test_notify_only_crashes_when_the_agent_alerts_itself() -> None:
    a = prefect_setup.notify_automation("Cardinal", uuid.uuid4(), agent_alerts_on=True)
    assert a.trigger.expect == {"prefect.flow-run.Crashed"}
    with pytest.raises(prefect_setup.SetupError, match="twice the heartbeat"):
        prefect_setup.crash_automation(200, heartbeat=180)


@pytest.mark.slow
def test_a_dead_host_s_run_is_crashed_by_the_server(lab: Lab) -> None:
    """No restart this time: the heartbeat automation alone marks the run Crashed."""
    s = lab.cardinal
    if s.watch.stat().st_dev == s.storage.stat().st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test's tmp folder")
    env = dict(os.environ, PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30")
    cfg = s.config.with_name("cardinal-fast-crash.toml")
    cfg.write_text(s.config.read_text().replace("[prefect]", "[prefect]\ncrash_after_seconds = 60"))
    done = subprocess.run(
        [str(SCANNER_AGENT), "setup-prefect", "--config", str(cfg)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    try:
        assert s.daemon is not None
        s.daemon.kill()
        d = DaemonProcess(cfg, cfg.with_suffix(".log"))
        with open(d.log_path, "ab") as log:  # the agent writes to its own copy of the descriptor
            d.proc = subprocess.Popen(
                [str(SCANNER_AGENT), "run", "--config", str(cfg)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        s.old_daemons.append(d)
        d.wait_watching(180)
        name = "620997_big.svs"
        with s.sheet.open("a", encoding="utf-8") as fh:
            fh.write("620997,Prec01,Run 2,P1,Cardinal,,,\n")
        s.drop(name, barcode="620997", pad_mb=BIG_MB)

        def copying() -> Any:
            rec = s.record(name)
            return rec if rec is not None and rec.state == "processing" and partials(s.storage) else None

        rec = wait_for(copying, 120, f"{name} to be half copied", interval=0.005, alive=d)
        d.kill()
        t0 = time.monotonic()

        def crashed() -> Any:
            st = flow_run(rec.flow_run_id).state
            return st if st.type.value == "CRASHED" else None

        state = wait_for(crashed, 180, "the server to crash the silent run", interval=2)
        assert "No heartbeat from the scanner-agent" in (state.message or "")
        print(f"crashed {time.monotonic() - t0:.0f} s after the kill (window 60 s, heartbeat 30 s)")
    finally:
        # Put the normal window back, and a Cardinal agent, for whatever runs after.
        _cli("setup-prefect", "--config", str(s.config))
        s.start()


def _latest_artifact(key: str) -> Any:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    arts = _client_call(
        lambda c: c.read_latest_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    )
    return arts[0] if arts else None


def test_each_agent_publishes_its_daily_table(lab: Lab) -> None:
    from scanner_agent.orchestration.daily_report import artifact_key

    for s in (lab.cardinal, lab.raven):
        art = wait_for(lambda s=s: _latest_artifact(artifact_key(s.name)), 60, f"{s.name}'s daily artifact")
        assert art.type == "table" and s.name in (art.description or "")


def test_daily_report_counts_each_scan_once_per_outcome(tmp_path: Path, prefect_api: str) -> None:
    from datetime import date, datetime, timedelta
    from datetime import time as dtime

    from scanner_agent.journal import Journal
    from scanner_agent.orchestration.daily_report import DailyReporter, artifact_key, daily_rows

    today = date.today()
    clock = [datetime.combine(today - timedelta(days=1), dtime(10)).timestamp()]
    path = tmp_path / "state" / "report.sqlite"
    j = Journal(path, clock=lambda: clock[0])

    def at(hours: float) -> None:
        clock[0] += hours * 3600

    a, _ = j.record_ready(
        "/scans/100001_a.svs", 2_000_000_000, 1
    )  # yesterday: held three checks, then stored
    for state in ("processing", "held", "held", "held", "ready", "processing", "stored"):
        j.transition(a.id, state, reason="test")
        at(0.1)
    b, _ = j.record_ready("/scans/bad.svs", 10, 2)  # yesterday: quarantined
    j.transition(b.id, "processing")
    j.transition(b.id, "quarantined", reason="corrupt")
    clock[0] = datetime.combine(today, dtime(9)).timestamp()
    c, _ = j.record_ready("/scans/100002_c.svs", 500_000_000, 3)  # today: failed twice, then stored
    for state in ("processing", "failed", "ready", "processing", "failed", "ready", "processing", "stored"):
        j.transition(c.id, state, reason="test")
        at(0.1)
    j.close()

    rows = daily_rows(path, days=3, today=today)
    assert [r["Day"] for r in rows] == [(today - timedelta(days=i)).isoformat() for i in range(3)]
    assert rows[0] == {
        "Day": today.isoformat(),
        "New scans": 1,
        "Stored": 1,
        "Stored (GB)": 0.5,
        "Held": 0,
        "Failed": 1,
        "Quarantined": 0,
    }
    assert rows[1] == {
        "Day": (today - timedelta(days=1)).isoformat(),
        "New scans": 2,
        "Stored": 1,
        "Stored (GB)": 2.0,
        "Held": 1,
        "Failed": 0,
        "Quarantined": 1,
    }
    assert rows[2]["New scans"] == 0

    name = f"Report {uuid.uuid4().hex[:6]}"
    rep = DailyReporter(name, path, every_seconds=300, days=3)
    assert rep.maybe_publish(background=False) and rep.published == 1
    assert not rep.maybe_publish(background=False), "at most one publish per interval"
    rep._last_try = float("-inf")
    rep.maybe_publish(background=False)
    assert rep.published == 1, "an unchanged table is not published again"
    art = _latest_artifact(artifact_key(name))
    assert art is not None and art.key == f"scanner-report-{name.split()[1]}-daily"
    table = json.loads(art.data) if isinstance(art.data, str) else art.data
    assert table[1]["Stored (GB)"] == 2.0 and table[1]["Quarantined"] == 1
    assert "1 in quarantine" in art.description and "0 held" in art.description


def test_a_retried_run_for_another_journal_s_scan_is_refused(lab: Lab) -> None:
    """A run whose scan id exists in this journal but names another file (a journal recreated, or
    two hosts given one scanner name) must not re-point that scan: the agent refuses the run."""
    from prefect.client.schemas.objects import State, StateType

    s = lab.raven
    mine = s.record("545891_b.svs")
    assert mine is not None and mine.state == "stored"
    dep = _client_call(lambda c: c.read_deployment_by_name(f"{s.flow_name}/{s.name.lower()}"))
    params = {"scanner": s.name, "scan_id": mine.id, "path": "/elsewhere/999999_other.svs", "label": "999999"}
    run = _client_call(lambda c: c.create_flow_run_from_deployment(dep.id, parameters=params, name="999999"))
    _client_call(
        lambda c: c.set_flow_run_state(run.id, State(type=StateType.FAILED, message="old"), force=True)
    )
    _client_call(
        lambda c: c.set_flow_run_state(
            run.id,
            State(type=StateType.SCHEDULED, name="AwaitingRetry", message="Retry from the UI"),
            force=True,
        )
    )

    def refused() -> Any:
        st = flow_run(str(run.id)).state
        return (
            st if st.type.value == "FAILED" and st.name != "AwaitingRetry" and st.message != "old" else None
        )

    state = wait_for(refused, 60, "the agent to refuse the foreign run", alive=s.daemon)
    assert "999999_other.svs" in (state.message or "") or "no scan" in (state.message or ""), state.message
    after = s.record("545891_b.svs")
    assert after.flow_run_id == mine.flow_run_id and after.state == "stored"
