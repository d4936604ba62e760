"""The one change the agent makes to how Prefect's engine runs a scan's flow, and why.

Prefect 3.8 starts, for every run that belongs to a deployment, a *suspension observer*: a
thread with its own event loop and a websocket subscription to the server's events, so that a
"Suspend" pressed in the UI reaches the running flow. The run waits for that subscription
before it starts and joins the thread (up to 2 s) when it ends. ``bench.overhead`` measured it
at 0.19 s of the 0.49 s Prefect adds to each scan (PostgreSQL server, runs back to back).

A scan run cannot be suspended usefully: it is executed in-process by the agent that holds
the scan on its disk, and nothing would resume it (Retry in the UI is how a person sends a
scan round again, and the agent polls for that itself). So the agent runs its flows without
the observer. Everything else the engine does (states, heartbeats, logs, events) is untouched.

The change is made only where the engine still has the name it is made on; after a Prefect
upgrade that moves it, the agent runs with the observer (slower, not wrong), and
``tests/test_flow_smoke.py`` fails so the next upgrade looks here.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

_lock = threading.Lock()
_applied = False


@contextlib.contextmanager
def _no_suspension_observer(*_args: Any, **_kwargs: Any) -> Iterator[None]:
    yield


def skip_suspension_observer() -> bool:
    """Run this process's flows without Prefect's suspension observer. True if in effect."""
    global _applied
    with _lock:
        if _applied:
            return True
        try:
            import prefect.flow_engine as engine
            from prefect._flow_run_suspension import observe_flow_run_suspension
        except ImportError:
            log.debug("this Prefect has no suspension observer to skip")
            return False
        if getattr(engine, "observe_flow_run_suspension", None) is not observe_flow_run_suspension:
            log.debug("Prefect's engine no longer calls observe_flow_run_suspension; leaving it as it is")
            return False
        engine.observe_flow_run_suspension = _no_suspension_observer  # type: ignore[attr-defined]
        _applied = True
        return True
