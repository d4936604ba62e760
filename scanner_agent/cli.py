"""The ``scanner-agent`` command: run, process, status, check, retry, reconcile, setup-prefect,
simulate, demo.

Exit codes: 0 success; 1 something needs a person (a scan held or failed, a check failed);
2 the command itself was wrong (bad config, bad arguments); ``run`` exits 78 (EX_CONFIG) on a
bad configuration, which its systemd unit does not restart; ``status`` exits 3 when the daemon
is not running (LSB). Each command's own are in ``EXIT_CODES`` and its ``--help``.
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
    from scanner_agent.systemd import journald

    level = logging.DEBUG if verbose else logging.INFO
    # Under systemd: priorities journalctl -p can filter on, and the scan's fields; else as ever.
    handler = journald.journal_handler()
    if handler is not None:
        logging.basicConfig(level=level, handlers=[handler])
    else:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
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
    from scanner_agent.systemd import journald

    journald.set_process_fields(scanner=cfg.scanner.name)
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
        from scanner_agent.orchestration.auth import require_prefect_auth

        require_prefect_auth(os.environ.get("PREFECT_API_URL"))  # a refused credential is a config error
    except ConfigError as exc:
        # EX_CONFIG: the systemd unit does not restart on it (RestartPreventExitStatus=78).
        print(f"scanner-agent: {exc}", file=sys.stderr)
        return 78
    try:
        services = bootstrap(cfg)  # a journal from a newer release is refused here
    except ConfigError as exc:
        print(f"scanner-agent: {exc}", file=sys.stderr)
        return 78
    try:
        return Daemon(services).run()
    except ConfigError as exc:  # e.g. [metrics] listen: the address is in use
        print(f"scanner-agent: {exc}", file=sys.stderr)
        return 78
    finally:
        services.close()


def cmd_process(args: argparse.Namespace) -> int:
    """Process the given scans now (backfill), through the same intake and flow the daemon uses.

    A held or failed scan is re-checked at once; a quarantined scan is submitted again by giving
    its path in the quarantine folder (renamed, if its name lacked the barcode)."""
    from scanner_agent.core.states import ScanState
    from scanner_agent.reports.progress import backfill_progress
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
        labels = {sid: raw for raw, sid in reversed(taken)}  # the first path given names a scan
        if args.json:
            rows = bf.finish()
        else:
            records = bf.taken
            live = sys.stdout.isatty()
            with backfill_progress(
                sys.stdout, len(records), sum(r.size for r in records), live=live
            ) as shown:
                rows = bf.finish(lambda rec: shown.done(rec, labels.get(rec.id, rec.path)))
        bad = sum(rows[sid].state != ScanState.STORED for _, sid in taken)
    if args.json:
        scans = [
            {
                "path": raw,
                "id": sid,
                "state": rows[sid].state,
                "barcode": rows[sid].barcode,
                "dest": rows[sid].dest,
                "reason": rows[sid].reason,
            }
            for raw, sid in taken
        ]
        print(json.dumps({"scans": scans, "missing": missing, "bad_names": unnamed}, indent=2, default=str))
    return 2 if missing else 1 if bad or unnamed else 0


def cmd_status(args: argparse.Namespace) -> int:
    from scanner_agent.reports.status import gather_status, render_status

    cfg = _load(args)
    st = gather_status(cfg)
    print(json.dumps(st, indent=2, default=str) if args.json else render_status(st))
    return int(st["exit_code"])  # LSB: 0 running and healthy, 1 needs a person, 3 not running


def cmd_check(args: argparse.Namespace) -> int:
    from scanner_agent.reports.checks import run_checks

    try:
        cfg = _load(args)
    except ConfigError as exc:
        if args.json:
            checks = [{"ok": False, "warning": False, "text": p} for p in exc.problems]
            print(json.dumps({"config": str(args.config), "ok": False, "checks": checks}, indent=2))
            return 1
        print(f"{args.config}: configuration problems:")
        for p in exc.problems:
            print(f"  ✗ {p}")
        return 1
    results = run_checks(cfg, network=not args.offline)
    bad = sum(not r.ok and not r.warning for r in results)
    warned = sum(not r.ok and r.warning for r in results)
    if args.json:
        checks = [r._asdict() for r in results]
        doc = {
            "config": str(args.config),
            "ok": not bad,
            "problems": bad,
            "warnings": warned,
            "checks": checks,
        }
        print(json.dumps(doc, indent=2, default=str))
        return 1 if bad else 0
    for r in results:
        print(f"  {'✓' if r.ok else '!' if r.warning else '✗'} {r.text}")
    verdict = f"{bad} problem(s)" if bad else "OK"
    print(f"{args.config}: {verdict}" + (f", {warned} warning(s)" if warned else ""))
    return 1 if bad else 0


def cmd_retry(args: argparse.Namespace) -> int:
    """Re-check held and failed scans now: the running daemon re-reads each held scan's sheet row and
    queues each failed scan again on its next pass. Quarantined scans are not retried: submit one
    again with ``scanner-agent process``."""
    from scanner_agent.journal import Journal
    from scanner_agent.service.maintenance import recheck_now

    cfg = _load(args)
    due = recheck_now(Journal(cfg.journal.path), args.barcode or ())
    if args.json:
        queued = [
            {
                "id": r.id,
                "file": Path(r.path).name,
                "path": r.path,
                "barcode": r.barcode,
                "state": r.state,
                "reason": r.reason,
            }
            for r in due
        ]
        print(json.dumps({"queued": queued}, indent=2, default=str))
        return 0
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


def cmd_verify(args: argparse.Namespace) -> int:
    """Re-hash stored files against their sidecars; exit 0 all verified, 1 a problem, 3 the share is gone."""
    from scanner_agent.reports.verify import as_json, exit_code, render, run_verify

    cfg = _load(args)
    result = run_verify(cfg, since_days=args.since)
    print(json.dumps(as_json(result), indent=2, default=str) if args.json else render(result))
    return exit_code(result)


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
    except Exception as exc:
        from scanner_agent.orchestration.auth import auth_problem

        refused = auth_problem(exc, os.environ["PREFECT_API_URL"])
        if refused is None:
            raise
        raise ConfigError(refused) from None
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


def _packaged(name: str) -> str:
    """A file the wheel carries in ``scanner_agent/data`` (the unit, an example config)."""
    from importlib import resources

    return resources.files("scanner_agent").joinpath("data", name).read_text(encoding="utf-8")


def cmd_print_unit(args: argparse.Namespace) -> int:
    print(_packaged("scanner-agent.sysusers.conf" if args.sysusers else "scanner-agent@.service"), end="")
    return 0


def cmd_init_config(args: argparse.Namespace) -> int:
    """The example config (config/cardinal.toml) for scanner NAME, instance ``name.lower()``."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", args.name):
        raise ConfigError(f"{args.name!r}: a scanner name is letters, digits, '_', '.', '-' (names the unit)")
    text = _packaged("example.toml").replace("Cardinal", args.name).replace("cardinal", args.name.lower())
    if not args.output or args.output == "-":
        print(text, end="")
        return 0
    out = Path(args.output)
    try:  # never over an existing config: it is someone's edited file
        with open(out, "x", encoding="utf-8") as f:
            f.write(text)
    except FileExistsError:
        raise ConfigError(f"{out} exists; remove it first or choose another path") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror}") from None
    print(f"wrote {out}: edit [scanner] watch, [storage] root and [sheet], then `scanner-agent check`")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("scanner-agent")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


#: Each command's exit codes, shown in its ``--help`` (and the README's command table).
EXIT_CODES = {
    "run": "exit codes: 0 stopped cleanly; 2 another agent holds the journal; 78 (EX_CONFIG) bad "
    "configuration or run as root (systemd does not restart it); other non-zero: a crash (restarted)",
    "process": "exit codes: 0 every scan stored; 1 a scan held, failed or quarantined, or a name that is "
    "not UTF-8; 2 a path that does not exist, bad configuration, or the daemon holds the journal",
    "status": "exit codes: 0 the daemon runs and nothing needs a person; 1 it runs but "
    "something does (failed or quarantined scans, a hold past its alert, undelivered alerts, an "
    "unhealthy watcher); 3 the daemon is not running (as LSB status); 2 bad configuration",
    "check": "exit codes: 0 every check passed (warnings, marked !, do not fail it); 1 a problem",
    "retry": "exit codes: 0 done (also when nothing needed a retry); 2 bad configuration",
    "reconcile": "exit codes: 0 consistent; 1 a barcode stored twice; 2 bad configuration",
    "setup-prefect": "exit codes: 0 automations in place; 2 no Prefect server or bad configuration",
    "simulate": "exit codes: 0 done",
    "demo": "exit codes: 0 the demo ended as expected; non-zero otherwise",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scanner-agent", description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
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
    sp.add_argument("--json", action="store_true", help="each scan's outcome as JSON (no progress bar)")
    sp.set_defaults(func=cmd_process)
    sp = with_config(sub.add_parser("status", help="journal summary, daemon health, held and failed scans"))
    sp.add_argument("--json", action="store_true", help="the same as JSON (with exit_code and attention)")
    sp.set_defaults(func=cmd_status)
    sp = with_config(
        sub.add_parser("check", help="validate configuration, folders, sheet, alert channels, Prefect")
    )
    sp.add_argument(
        "--offline", action="store_true", help="skip network checks (sheet, Slack, SMTP, Prefect)"
    )
    sp.add_argument("--json", action="store_true", help="each check as JSON: ok, text, warning")
    sp.set_defaults(func=cmd_check)
    sp = with_config(sub.add_parser("retry", help="re-check held and failed scans now"))
    sp.add_argument("--barcode", action="append", help="only this barcode (repeatable)")
    sp.add_argument("--json", action="store_true", help="the scans queued, as JSON")
    sp.set_defaults(func=cmd_retry)
    sp = with_config(sub.add_parser("reconcile", help="sheet vs storage vs journal, per barcode"))
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_reconcile)
    sp = with_config(
        sub.add_parser(
            "verify",
            help="re-hash stored files against their sidecars' sha256 (fixity)",
            description="Re-hash every stored file (each file of a MIRAX or DICOM scan on its own) and "
            "compare it with its sidecar's sha256; report verified, missing, mismatched, unreadable or "
            "unrecorded per file, and SHA256SUMS lines that disagree with the sidecars.",
            epilog="exit codes: 0 every file verified; 1 a file missing, mismatched, unreadable or "
            "unrecorded, or a sidecar/SHA256SUMS problem; 2 bad configuration; 3 the storage share is "
            "gone (root or marker_file missing): nothing was judged",
        )
    )
    sp.add_argument("--since", type=float, metavar="DAYS", help="only scans stored in the last DAYS days")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_verify)
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
    sp = sub.add_parser(
        "print-unit",
        help="print the systemd unit scanner-agent@.service (for /etc/systemd/system)",
        epilog="exit codes: 0 printed",
    )
    sp.add_argument("--sysusers", action="store_true", help="print the sysusers.d file instead")
    sp.set_defaults(func=cmd_print_unit)
    sp = sub.add_parser(
        "init-config",
        help="write an example config for scanner NAME (to stdout, or --output PATH)",
        epilog="exit codes: 0 written; 2 a bad name, or PATH exists or cannot be written",
    )
    sp.add_argument("name", metavar="NAME", help="the scanner's name, e.g. Raven (instance: raven)")
    sp.add_argument("--output", "-o", help="a file to create (never overwritten); default: stdout")
    sp.set_defaults(func=cmd_init_config)
    for name, command in sub.choices.items():  # a command that states its own keeps it
        command.epilog = command.epilog or EXIT_CODES.get(name, "exit codes: 0 done; 2 bad arguments")
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
