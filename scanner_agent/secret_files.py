"""Secrets kept in files (Slack token, SMTP password, webhook): read them, and say when they are too open."""

from __future__ import annotations

import stat
from pathlib import Path

from scanner_agent.core.errors import ConfigError


def read_secret_file(path: Path, key: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read secret file {path}: {exc.strerror}") from None


def secret_file_problems(path: Path | None, key: str) -> list[str]:
    """A secret file readable by group or others is a problem ``check`` reports."""
    if path is None or not path.exists():
        return []
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO) & ~stat.S_IRGRP:
        return [f"{key}: {path} is readable by others (mode {stat.S_IMODE(mode):o}); run `chmod 600 {path}`"]
    return []
