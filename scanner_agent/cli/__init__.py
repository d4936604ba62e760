"""The ``scanner-agent`` command: run, process, status, check, retry, reconcile, setup-prefect,
simulate, demo.

Exit codes: 0 success; 1 something needs a person (a scan held or failed, a check failed);
2 the command itself was wrong (bad config, bad arguments); ``run`` exits 78 (EX_CONFIG) on a
bad configuration, which its systemd unit does not restart; ``status`` exits 3 when the daemon
is not running (LSB). Each command's own are in ``EXIT_CODES`` and its ``--help``.

The package: ``build_parser`` and ``main`` here; each subcommand's body in ``commands.py``; what
runs around every command (Prefect's environment, logging, loading the config) in ``startup.py``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from scanner_agent.cli.commands import _packaged as _packaged  # re-exported: tests read the packaged files
from scanner_agent.cli.commands import (
    cmd_check,
    cmd_demo,
    cmd_init_config,
    cmd_print_unit,
    cmd_process,
    cmd_reconcile,
    cmd_retry,
    cmd_run,
    cmd_setup_prefect,
    cmd_simulate,
    cmd_status,
    cmd_verify,
)
from scanner_agent.cli.startup import _prefect_env, _setup_logging
from scanner_agent.core.errors import ConfigError

log = logging.getLogger("scanner_agent")


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
    sp.add_argument(
        "--on-stored",
        metavar="DEPLOYMENT",
        help="also run this deployment (FLOW-NAME/DEPLOYMENT-NAME) for every stored scan, with its path "
        "and barcode as parameters (docs/events.md)",
    )
    sp.add_argument("--study", metavar="S", help="with --on-stored: only for scans of study S")
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
