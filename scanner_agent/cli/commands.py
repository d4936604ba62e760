"""The body of each ``scanner-agent`` subcommand: ``cmd_<name>(args) -> exit status``.

``build_parser`` (in ``scanner_agent/cli/__init__.py``) binds each to its subcommand and states
its exit codes; a ``ConfigError`` raised here is turned into exit status 2 by ``main``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from scanner_agent.cli.startup import _load, _refuse_root
from scanner_agent.core.errors import ConfigError


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
    if args.study and not args.on_stored:
        raise ConfigError("setup-prefect: --study S goes with --on-stored DEPLOYMENT")
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
            on_stored=args.on_stored,
            study=args.study,
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
