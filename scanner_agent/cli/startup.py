"""What the ``scanner-agent`` command does around every subcommand: Prefect's environment (set before
Prefect configures logging), the logging set-up (journald under systemd), loading the config into
the environment Prefect reads, and refusing to run as root.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from scanner_agent.core.errors import ConfigError


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
