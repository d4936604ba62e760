"""``scanner-agent status``: what the journal and the daemon's last health report say, for a person.

``gather_status`` reads the journal (counts, today's stores, held, failed and quarantined scans,
open rescans, the daemon's last health report) and the alert outbox into JSON-able data;
``render_status`` turns that into a few lines for a terminal.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from scanner_agent.config import AgentConfig
from scanner_agent.core.humanize import age_text
from scanner_agent.journal import AlertOutbox, EventOutbox, FixityLog, Journal, ScanRecord, WritebackQueue
from scanner_agent.storage import Retention


def _pid_alive(pid: Any) -> bool:
    """Whether this user may signal process ``pid`` (signal 0 only asks), so whether it runs.

    A process of another user reads as not running (EPERM), as does a pid that is not a number.
    """
    try:
        os.kill(int(pid), 0)
        return True
    except (OSError, TypeError, ValueError):
        return False


def _brief(r: ScanRecord) -> dict[str, Any]:
    """One held, failed or quarantined scan as ``status`` lists it."""
    return {
        "file": Path(r.path).name,
        "path": r.path,
        "barcode": r.barcode,
        "kind": r.kind,
        "reason": r.reason,
        "since": r.held_since or r.updated,
        "next_check": r.next_check,
        "flow_run_id": r.flow_run_id,
        "quarantined_to": r.details.get("quarantined_to"),
    }


#: ``status``'s exit codes, as LSB has them for an init script's ``status``.
EXIT_OK, EXIT_ATTENTION, EXIT_NOT_RUNNING = 0, 1, 3
#: An alert still undelivered after this long is a backlog: retries run every ~30 s, so a channel
#: has been down a while and nobody is being told.
ALERT_BACKLOG_SECONDS = 900.0


def needs_attention(st: dict[str, Any], hold_alert_hours: float, now: float) -> list[str]:
    """What in ``gather_status``'s data needs a person, one line each; empty when nothing does."""
    out: list[str] = []
    d = st["daemon"]
    if d["running"] and d.get("watcher_alive") is False:
        out.append(f"the watcher is unhealthy ({d.get('watcher_error') or 'no reason given'})")
    for key in ("failed", "quarantined"):
        if st[key]:
            out.append(f"{len(st[key])} scan(s) {key}")
    overdue = [r for r in st["held"] if r["since"] and now - r["since"] >= hold_alert_hours * 3600]
    if overdue:
        out.append(f"{len(overdue)} scan(s) held longer than {hold_alert_hours:g} h (past their alert)")
    stale = [a for a in st.get("alerts_backlog", []) if now - float(a["created"]) >= ALERT_BACKLOG_SECONDS]
    if stale:
        out.append(f"{len(stale)} alert(s) undelivered for more than {ALERT_BACKLOG_SECONDS / 60:g} min")
    return out


def exit_status(st: dict[str, Any]) -> int:
    """3 the daemon is not running; 1 it runs but something needs a person; 0 running and healthy."""
    if not st["daemon"]["running"]:
        return EXIT_NOT_RUNNING
    return EXIT_ATTENTION if st["attention"] else EXIT_OK


def gather_status(cfg: AgentConfig) -> dict[str, Any]:
    """What ``status`` shows, as JSON-able data, read from the journal named by ``cfg``.

    The daemon counts as running only if its last health report names a live pid and no stop;
    its queue and in-flight scans are reported only then (a stopped daemon's would be stale).
    Times are Unix seconds.
    """
    j = Journal(cfg.journal.path)
    try:
        health = j.health()
        running = bool(health.get("pid")) and not health.get("stopped_at") and _pid_alive(health.get("pid"))
        # Local midnight; isdst -1 lets mktime work out whether it fell in summer time.
        midnight = time.mktime(time.localtime()[:3] + (0, 0, 0, 0, 0, -1))
        today_n, today_bytes = j.stored_since(midnight)
        last = j.last_stored()
        backlog = AlertOutbox(cfg.journal.path).pending_summary()

        st: dict[str, Any] = {
            "scanner": cfg.scanner.name,
            "journal": str(cfg.journal.path),
            "daemon": {
                "running": running,
                "pid": health.get("pid") if running else None,
                "watching": health.get("watch"),
                "watching_since": health.get("watching_since"),
                "observer": health.get("observer"),
                "watcher_alive": health.get("watcher_alive"),
                "watcher_error": health.get("watcher_error"),
                "queue": health.get("queue", 0) if running else 0,
                "in_flight": health.get("in_flight", []) if running else [],
                "last_report": health.get("_updated"),
                "stopped_at": health.get("stopped_at"),
            },
            "counts": j.counts(),
            "stored_today": {"scans": today_n, "bytes": today_bytes},
            "last_stored": None
            if last is None
            else {
                "file": Path(last.path).name,
                "barcode": last.barcode,
                "dest": last.dest,
                "at": last.stored_at,
            },
            "held": [_brief(r) for r in j.in_state("held")],
            "failed": [_brief(r) for r in j.in_state("failed")],
            "quarantined": [_brief(r) for r in j.in_state("quarantined")],
            "open_rescans": j.open_rescans(),
            "alerts_pending": len(backlog),
            "alerts_backlog": backlog,
            "verification": _last_verification(cfg),
            "kept_sources": _kept_sources(cfg, j.stored_unremoved()),
            # Sheet status cells and Prefect events not yet delivered: how many, the oldest, the last error.
            "sheet_writeback": _backlog(WritebackQueue(cfg.journal.path) if cfg.sheet.write_back else None),
            "prefect_events": _backlog(EventOutbox(cfg.journal.path) if cfg.prefect.events else None),
        }
    finally:
        j.close()
    st["attention"] = needs_attention(st, cfg.sheet.hold_alert_hours, time.time())
    st["exit_code"] = exit_status(st)
    return st


def _kept_sources(cfg: AgentConfig, recs: list[ScanRecord]) -> list[dict[str, Any]]:
    """Stored scans whose source is still on the scanner, with until when (``None``: for good)."""
    retention = Retention(cfg.scanner.remove_source, cfg.scanner.remove_source_after_days)
    if retention.immediate:
        return []  # a source left here is an unfinished removal, finished at the daemon's next start
    return [
        {
            "file": Path(r.path).name,
            "path": r.path,
            "barcode": r.barcode,
            "dest": r.dest,
            "kept_until": retention.keep_until(r.stored_at),
            "note": retention.describe(r.stored_at),
            "problem": r.details.get("retention_problem"),
        }
        for r in recs
    ]


def _last_verification(cfg: AgentConfig) -> dict[str, Any] | None:
    """The last fixity pass (background or ``scanner-agent verify``): when, what it checked and found."""
    fixity = FixityLog(cfg.journal.path)
    try:
        return fixity.last_run()
    finally:
        fixity.close()


def _backlog(queue: WritebackQueue | EventOutbox | None) -> dict[str, Any] | None:
    """What a queue in the journal's file still holds (sheet cells, Prefect events), or None."""
    if queue is None:
        return None
    try:
        return queue.summary()
    finally:
        queue.close()


def _verification_lines(v: dict[str, Any] | None) -> list[str]:
    if v is None:
        return ["  verification: never run (`scanner-agent verify`, or the daemon every verify_every_days)"]
    head = f"  verification: last {_ago(v['finished'])} ({v['by']}): "
    if v.get("share_gone"):
        return [head + str(v["share_gone"])]
    out = [head + f"{v['files']} file(s) checked, {v['verified']} verified, {v['problems']} problem(s)"]
    for p in v.get("first_problems", [])[:10]:
        detail = f" ({p['detail']})" if p.get("detail") else ""
        out.append(f"    {p.get('problem')}: {p.get('path')}{detail}")
    return out


def _ago(t: float | None) -> str:
    """How long ago ``t`` was (``12 min ago``), its date and time after two days, ``never`` if unset."""
    if not t:
        return "never"
    d = time.time() - t
    if d < 172800:
        return f"{age_text(d)} ago"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def render_status(st: dict[str, Any]) -> str:
    """``gather_status``'s data as lines for a terminal: daemon, counts, then each list that has entries."""
    d = st["daemon"]
    c = st["counts"]
    out = [f"scanner-agent for {st['scanner']} (journal {st['journal']})"]
    if d["running"]:
        out.append(
            f"  daemon: running (pid {d['pid']}), watching {d['watching']} with {d['observer']} "
            f"since {_ago(d['watching_since'])}; watcher {'healthy' if d['watcher_alive'] else 'UNHEALTHY'}"
            + (f" ({d['watcher_error']})" if d["watcher_error"] and not d["watcher_alive"] else "")
        )
        out.append(
            f"  queue: {d['queue']} waiting, {len(d['in_flight'])} in flight; "
            f"last report {_ago(d['last_report'])}"
        )
    else:
        out.append(
            "  daemon: not running" + (f" (stopped {_ago(d['stopped_at'])})" if d.get("stopped_at") else "")
        )
    out.append(
        "  scans: " + ", ".join(f"{k} {v}" for k, v in c.items() if v or k in ("stored", "held", "failed"))
    )
    s = st["stored_today"]
    out.append(f"  stored today: {s['scans']} ({s['bytes'] / 1e9:.2f} GB)")
    if st["last_stored"]:
        ls = st["last_stored"]
        out.append(f"  last stored: {ls['barcode']} -> {ls['dest']} ({_ago(ls['at'])})")
    for title, key in (
        ("held (waiting for the sheet)", "held"),
        ("failed", "failed"),
        ("quarantined", "quarantined"),
    ):
        if st[key]:
            out.append(f"  {title}:")
            for r in st[key]:
                extra = f" -> {r['quarantined_to']}" if r.get("quarantined_to") else ""
                out.append(
                    f"    {r['file']} [{r['barcode'] or 'no barcode'}] {r['kind']}: {r['reason']}{extra} "
                    f"(since {_ago(r['since'])})"
                )
    if st["open_rescans"]:
        out.append("  rescans requested:")
        for r in st["open_rescans"]:
            out.append(
                f"    {r['barcode']} by {r['requested_by']}: {r.get('reason') or ''} "
                f"(due {time.strftime('%Y-%m-%d %H:%M', time.localtime(r['deadline']))})"
            )
    kept = st.get("kept_sources") or []
    if kept:
        out.append(f"  sources kept on the scanner after storing: {len(kept)}")
        for r in kept[:20]:
            problem = f"; {r['problem']}" if r.get("problem") else ""
            out.append(f"    {r['file']} [{r['barcode']}]: {r['note']}{problem}")
    out += _verification_lines(st.get("verification"))
    if st["alerts_pending"]:
        out.append(f"  alerts waiting to be delivered: {st['alerts_pending']}")
    if wb := st.get("sheet_writeback"):
        err = f"; last error: {wb['last_error']}" if wb.get("last_error") else ""
        out.append(f"  sheet write-back: {wb['cells']} cells waiting, oldest {_ago(wb['oldest'])}{err}")
    if ev := st.get("prefect_events"):
        err = f"; last error: {ev['last_error']}" if ev.get("last_error") else ""
        out.append(f"  Prefect events waiting to be sent: {ev['events']}, oldest {_ago(ev['oldest'])}{err}")
    if st.get("attention"):
        out.append("  needs a person: " + "; ".join(st["attention"]))
    return "\n".join(out)
