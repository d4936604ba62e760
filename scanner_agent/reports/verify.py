"""``scanner-agent verify``: re-hash stored files against their sidecars and say, per file, what was found.

Exit codes (also in ``--help`` and the README): 0 every file verified; 1 a file missing, changed
(mismatched), unreadable or without a record, or a sidecar or ``SHA256SUMS`` problem; 3 the
storage share is gone (root or ``marker_file`` missing): nothing was judged; 2 a bad configuration.
"""

from __future__ import annotations

import time
from typing import Any

from scanner_agent.config import AgentConfig
from scanner_agent.journal import FixityLog, Journal
from scanner_agent.service.fixity import PassResult, verify_pass
from scanner_agent.storage import OUTCOMES, Expected

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_SHARE_GONE = 3


def run_verify(cfg: AgentConfig, since_days: float | None = None) -> PassResult:
    """Check every stored file (only scans stored in the last ``since_days`` days, if given; files
    without a sidecar are always checked) at full speed, recording the pass for ``status``."""
    cutoff = None if since_days is None else time.time() - since_days * 86400

    def recent(e: Expected) -> bool:
        return cutoff is None or e.stored_at is None or e.stored_at >= cutoff

    Journal(cfg.journal.path).close()  # creates the journal (its folder, mode 0600) if it is new
    fixity = FixityLog(cfg.journal.path)
    try:
        return verify_pass(
            cfg.storage.root, cfg.storage.marker_file, fixity, by="scanner-agent verify", select=recent
        )
    finally:
        fixity.close()


def exit_code(result: PassResult) -> int:
    if result.share_gone:
        return EXIT_SHARE_GONE
    return EXIT_PROBLEMS if result.problems else EXIT_OK


def as_json(result: PassResult) -> dict[str, Any]:
    return {
        "share_gone": result.share_gone,
        "started": result.started,
        "seconds": round(result.finished - result.started, 3),
        "bytes": result.nbytes,
        "counts": {o: result.count(o) for o in OUTCOMES},
        "skipped": result.skipped,
        "files": [
            {
                "path": c.path,
                "outcome": c.outcome,
                "expected": c.expected,
                "found": c.found,
                "detail": c.detail,
                "sidecar": c.sidecar,
                "barcode": c.barcode,
            }
            for c in result.checks
        ],
        "record_problems": result.record_problems,
        "exit_code": exit_code(result),
    }


def render(result: PassResult) -> str:
    if result.share_gone:
        return f"{result.share_gone}\nnothing was verified; no file is reported as corrupt"
    out = []
    for c in result.checks:
        out.append(f"{c.outcome:<11} {c.path}" + (f": {c.detail}" if c.detail else ""))
        if c.outcome == "mismatched":
            out.append(f"{'':<11}   expected {c.expected}\n{'':<11}   found    {c.found}")
    for p in result.record_problems:
        out.append(f"{'record':<11} {p['path']}: {p['problem']}")
    counts = ", ".join(f"{o} {result.count(o)}" for o in OUTCOMES if result.count(o) or o == "verified")
    secs = max(result.finished - result.started, 1e-9)
    out.append(
        f"{len(result.checks)} file(s), {result.nbytes / 1e9:.2f} GB in {secs:.1f} s "
        f"({result.nbytes / 1e6 / secs:.0f} MB/s): {counts}"
        + (f", {len(result.record_problems)} record problem(s)" if result.record_problems else "")
        + (f"; {result.skipped} older file(s) not checked (--since)" if result.skipped else "")
    )
    return "\n".join(out)
