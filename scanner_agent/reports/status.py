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
from scanner_agent.journal import AlertOutbox, Journal, ScanRecord


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

        return {
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
            "alerts_pending": AlertOutbox(cfg.journal.path).pending_count(),
        }
    finally:
        j.close()


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
    if st["alerts_pending"]:
        out.append(f"  alerts waiting to be delivered: {st['alerts_pending']}")
    return "\n".join(out)
