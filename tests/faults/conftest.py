"""Fixtures of the fault suite: a local Slack server for alerts, and the seed of the random faults."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

from tests.faults.tools import TOKEN
from tests.servers.slack_api import SlackApiServer


@pytest.fixture(scope="module")
def slack() -> Iterator[SlackApiServer]:
    """The Slack Web API on 127.0.0.1 that every agent of a module posts its alerts to."""
    with SlackApiServer(token=TOKEN) as server:
        yield server


@pytest.fixture
def fault_seed() -> int:
    """The seed of a test's random faults: ``SCANNER_AGENT_FAULT_SEED`` to replay one, else a fresh
    one (printed)."""
    given = os.environ.get("SCANNER_AGENT_FAULT_SEED")
    seed = int(given) if given else random.SystemRandom().randrange(1, 2**31)
    print(f"fault seed: SCANNER_AGENT_FAULT_SEED={seed} (set it to replay this schedule)")
    return seed
