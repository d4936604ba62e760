"""The ``scanner-agent`` command: run, process, status, check, retry, reconcile, setup-prefect,
simulate, demo.

Exit codes: 0 success; 1 something needs a person (a scan held or failed, a check failed);
2 the command itself was wrong (bad config, bad arguments); ``run`` exits 78 (EX_CONFIG) on a
bad configuration, which its systemd unit does not restart.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scanner_agent.core.errors import ConfigError

log = logging.getLogger("scanner_agent")


def _prefect_env() -> None:
    # Must happen before Prefect configures logging: the agent's own module logs then appear
    # on each run's page in the UI, not only in journald.
    extra = os.environ.get("PREFECT_LOGGING_EXTRA_LOGGERS", "")
    if "scanner_agent" not in extra.split(","):
        os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] = ",".join(x for x in (extra, "scanner_agent") if x)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The watcher and daemon log outside flow runs too; those lines go to journald, not the API.
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")


def _setup_logging(verbose: bool, *, quiet_prefect: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    if quiet_prefect:
        # The demo prints its own story; Prefect's per-task lines (kept in the UI) would drown it.
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
        for h in logging.getLogger().handlers:
            h.setLevel(logging.WARNING)
            h.addFilter(lambda r: not r.name.startswith("prefect"))
    for noisy in ("httpx", "httpcore", "watchdog", "urllib3", "slack_sdk", "google", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _load(args: argparse.Namespace) -> Any:
    from scanner_agent.config import load_config

    cfg = load_config(args.config)
    if cfg.prefect.api_url and not os.environ.get("PREFECT_API_URL"):
        os.environ["PREFECT_API_URL"] = cfg.prefect.api_url
    if cfg.ui_url() and not os.environ.get("PREFECT_UI_URL"):
        os.environ["PREFECT_UI_URL"] = cfg.ui_url()
    return cfg


def _refuse_root(cfg: Any) -> None:
    if (
        hasattr(os, "geteuid")
        and os.geteuid() == 0
        and not cfg.scanner.allow_root
        and os.environ.get("SCANNER_AGENT_ALLOW_ROOT") != "1"
    ):
        raise ConfigError(
            "refusing to run as root: run as the scanner-agent service user (see systemd/README.md), "
            "or set scanner.allow_root = true / SCANNER_AGENT_ALLOW_ROOT=1 if you really mean it"
        )


# --- commands ------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    import faulthandler

    from scanner_agent.service.bootstrap import bootstrap
    from scanner_agent.service.daemon import Daemon

    faulthandler.enable()  # a watchdog kill then leaves every thread's stack in the journal
    try:
        cfg = _load(args)
        _refuse_root(cfg)
    except ConfigError as exc:
        # EX_CONFIG: the systemd unit does not restart on it (RestartPreventExitStatus=78).
        print(f"scanner-agent: {exc}", file=sys.stderr)
        return 78
    services = bootstrap(cfg)
    try:
        return Daemon(services).run()
    finally:
        services.close()


def cmd_process(args: argparse.Namespace) -> int:
    """Process the given scans now (backfill), through the same intake and flow the daemon uses.

    A held or failed scan is re-checked at once; a quarantined scan is submitted again by giving
    its path in the quarantine folder (renamed, if its name lacked the barcode)."""
    from scanner_agent.core.states import ScanState
    from scanner_agent.service.backfill import backfill

    cfg = _load(args)
    _refuse_root(cfg)
    with backfill(cfg) as bf:
        taken: list[tuple[str, int]] = []
        missing = unnamed = 0  # a path that is not there is a bad argument: never exit 0 over it
        for raw in args.paths:
            got = bf.offer(Path(raw))
            if got.bad_name is not None:
                print(
                    f"{got.bad_name}: the name is not valid UTF-8; rename it, then process it again",
                    file=sys.stderr,
                )
                unnamed += 1
            elif got.record is None:
                print(f"{raw}: no such file or folder", file=sys.stderr)
                missing += 1
            else:
                taken.append((raw, got.record.id))
        rows = bf.finish()
        bad = 0
        for raw, sid in taken:
            rec = rows[sid]
            where = rec.dest if rec.state == ScanState.STORED else rec.reason
            print(f"{rec.state:<11} {raw} -> {where}")
            bad += rec.state != ScanState.STORED
    return 2 if missing else 1 if bad or unnamed else 0


def cmd_status(args: argparse.Namespace) -> int:
    from scanner_agent.reports.status import gather_status, render_status

    cfg = _load(args)
    st = gather_status(cfg)
    print(json.dumps(st, indent=2, default=str) if args.json else render_status(st))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from scanner_agent.reports.checks import run_checks

    try:
        cfg = _load(args)
    except ConfigError as exc:
        print(f"{args.config}: configuration problems:")
        for p in exc.problems:
            print(f"  ✗ {p}")
        return 1
    results = run_checks(cfg, network=not args.offline)
    bad = 0
    for ok, text in results:
        print(f"  {'✓' if ok else '✗'} {text}")
        bad += not ok
    print(f"{args.config}: {'OK' if not bad else f'{bad} problem(s)'}")
    return 1 if bad else 0


def cmd_retry(args: argparse.Namespace) -> int:
    """Re-check held and failed scans now: the running daemon re-reads each held scan's sheet row and
    queues each failed scan again on its next pass. Quarantined scans are not retried: submit one
    again with ``scanner-agent process``."""
    from scanner_agent.journal import Journal
    from scanner_agent.service.maintenance import recheck_now

    cfg = _load(args)
    due = recheck_now(Journal(cfg.journal.path), args.barcode or ())
    for rec in due:
        print(f"retry queued: {Path(rec.path).name} ({rec.state}: {rec.reason})")
    if not due:
        print("nothing to retry")
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    from scanner_agent.reports.reconcile import reconcile, render_reconcile

    cfg = _load(args)
    report = reconcile(cfg)
    print(json.dumps(report, indent=2, default=str) if args.json else render_reconcile(report))
    return 1 if report.get("summary", {}).get("stored_twice") else 0


def cmd_setup_prefect(args: argparse.Namespace) -> int:
    """Create or update the Prefect server's automations for this scanner (idempotent)."""
    from scanner_agent.orchestration.automations import SetupError, setup_prefect_sync

    cfg = _load(args)
    if not os.environ.get("PREFECT_API_URL"):
        raise ConfigError(
            "setup-prefect needs a Prefect server: set [prefect] api_url (or PREFECT_API_URL); "
            "the embedded API has no automations service running between scans"
        )
    a = cfg.alerts
    try:
        done = setup_prefect_sync(
            scanner=cfg.scanner.name,
            crash_after_seconds=cfg.prefect.crash_after_seconds,
            notify=args.notify,
            webhook_url=cfg.notify_webhook_url() if args.notify else None,
            agent_alerts_on=bool(a.slack_channel or a.email_to),
            ui_url=cfg.ui_url(),
        )
    except SetupError as exc:
        raise ConfigError(str(exc)) from None
    for outcome in done:
        print(f"  ✓ {outcome}")
    print(f"Prefect server {os.environ['PREFECT_API_URL']}: automations for {cfg.scanner.name} are in place")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from scanner_agent.testing.simulator import SimScan, simulate

    scans = [SimScan(name=n, kind=args.kind, barcode=n if n.isdigit() else None) for n in args.names]
    simulate(Path(args.watch), scans, chunk_interval=args.chunk_interval, on_progress=print)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from scanner_agent.testing.demo import run_demo

    return run_demo(Path(args.config), keep=args.keep)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scanner-agent", description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument(
            "--config", "-c", required=True, help="the scanner's TOML file, e.g. config/cardinal.toml"
        )
        return sp

    with_config(sub.add_parser("run", help="run the daemon: watch, process, alert")).set_defaults(
        func=cmd_run
    )
    sp = with_config(sub.add_parser("process", help="process the given scans now (backfill)"))
    sp.add_argument("paths", nargs="+")
    sp.set_defaults(func=cmd_process)
    sp = with_config(sub.add_parser("status", help="journal summary, daemon health, held and failed scans"))
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_status)
    sp = with_config(
        sub.add_parser("check", help="validate configuration, folders, sheet, alert channels, Prefect")
    )
    sp.add_argument(
        "--offline", action="store_true", help="skip network checks (sheet, Slack, SMTP, Prefect)"
    )
    sp.set_defaults(func=cmd_check)
    sp = with_config(sub.add_parser("retry", help="re-check held and failed scans now"))
    sp.add_argument("--barcode", action="append", help="only this barcode (repeatable)")
    sp.set_defaults(func=cmd_retry)
    sp = with_config(sub.add_parser("reconcile", help="sheet vs storage vs journal, per barcode"))
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_reconcile)
    sp = with_config(
        sub.add_parser(
            "setup-prefect",
            help="create/update the Prefect server's automations "
            "(crash runs whose host died; with --notify, post failed runs to a webhook)",
        )
    )
    sp.add_argument(
        "--notify", action="store_true", help="also notify the webhook in prefect.notify_webhook_url_file"
    )
    sp.set_defaults(func=cmd_setup_prefect)
    sp = sub.add_parser("simulate", help="write synthetic slides slowly into a folder, like a scanner")
    sp.add_argument("--watch", required=True)
    sp.add_argument("--kind", default="svs", choices=["svs", "mrxs", "corrupt"])
    sp.add_argument("--chunk-interval", type=float, default=0.2)
    sp.add_argument("names", nargs="+", help="scan names; all-digit names are used as barcodes")
    sp.set_defaults(func=cmd_simulate)
    sp = sub.add_parser("demo", help="run the daemon on a simulated scanner with embedded defaults")
    sp.add_argument("--config", "-c", default="config/demo.toml")
    sp.add_argument("--keep", action="store_true", help="keep the previous demo's folders")
    sp.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    _prefect_env()
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose, quiet_prefect=args.command == "demo" and not args.verbose)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"scanner-agent: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the daemon logs details; the operator gets one clear line
        from scanner_agent.service.lock import AlreadyRunning

        if isinstance(exc, AlreadyRunning):
            print(f"scanner-agent: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
