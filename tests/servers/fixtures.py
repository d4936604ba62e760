"""The ``slack`` and ``smtp`` fixtures: a local Slack Web API and SMTP server for one test.

They take the credentials from the using module's ``TOKEN``, ``SMTP_USER`` and ``SMTP_PASSWORD``,
so each module plants secrets of its own (the security tests search for them everywhere the agent
writes). Load them with ``pytest_plugins = ["tests.servers.fixtures"]`` rather than importing them,
so a test's ``slack`` argument does not shadow an imported name.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.slack_api import SlackApiServer
from tests.servers.smtp import SmtpServer


@pytest.fixture
def slack(request: pytest.FixtureRequest) -> Iterator[SlackApiServer]:
    with SlackApiServer(token=request.module.TOKEN) as server:
        yield server


@pytest.fixture
def smtp(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SmtpServer]:
    server = SmtpServer(
        tmp_path / "tls", user=request.module.SMTP_USER, password=request.module.SMTP_PASSWORD
    ).start()
    try:
        yield server
    finally:
        server.stop()
