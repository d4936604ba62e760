"""Prefect servers started with ``PREFECT_SERVER_API_AUTH_STRING``: tell a refused credential apart.

Such a server answers ``/api/health`` to anyone and every other call with 401 unless the client
sends the same string (Prefect's client does, from ``PREFECT_API_AUTH_STRING``). Without this,
a missing or wrong credential reads as "the server does not answer" or as a failed flow run.
"""

from __future__ import annotations

import os

from scanner_agent.core.errors import ConfigError

_REFUSED = frozenset({401, 403})


def auth_problem(exc: BaseException, url: str) -> str | None:
    """The clear sentence for a refused credential, or None when ``exc`` is something else."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status not in _REFUSED:
        return None
    if os.environ.get("PREFECT_API_AUTH_STRING") or os.environ.get("PREFECT_API_KEY"):
        return (
            f"the Prefect server {url} refused our credential ({status}): PREFECT_API_AUTH_STRING does not "
            "match the server's PREFECT_SERVER_API_AUTH_STRING (see docs/prefect-server.md)"
        )
    return (
        f"the Prefect server {url} requires a credential ({status}): set PREFECT_API_AUTH_STRING "
        "(user:password, as in the server's PREFECT_SERVER_API_AUTH_STRING) in the agent's environment, "
        "e.g. in its systemd EnvironmentFile (see docs/prefect-server.md)"
    )


def require_prefect_auth(url: str | None) -> None:
    """Before the daemon starts: a server that refuses our credential is a ``ConfigError``.

    A server that is down is not: the agent stores scans without it and catches up. Only an
    authenticated call can tell (health answers anyone), so this asks for the server's version.
    """
    if not url:
        return
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    try:
        with (
            temporary_settings(updates={PREFECT_API_URL: url, PREFECT_CLIENT_MAX_RETRIES: 0}),
            get_client(sync_client=True) as client,
        ):
            client.api_version()
    except Exception as exc:
        problem = auth_problem(exc, url)
        if problem is not None:
            raise ConfigError(problem) from None
