"""Prefect automations for scanners sharing one server: crash silent runs, notify failed ones.

``scanner-agent setup-prefect`` calls ``setup_prefect``; it creates or updates, by name, so it
can be run again after every upgrade or config change:

* **"scanner-agent: crash runs whose heartbeats stop"** (one for the whole server): a Running
  ``Scan Image Flow: *`` run emits ``prefect.flow-run.heartbeat`` every
  ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (180 by default, from a thread, so a long copy
  keeps beating). When a heartbeat is followed by neither another heartbeat nor a final state
  within ``crash_after_seconds``, the host is gone, and the server sets the run Crashed. An agent
  that restarts does this itself (``service.recovery.mark_stale_runs_crashed``); this covers the host that
  does not come back.
* **"scanner-agent: notify failed scan runs (<scanner>)"** (one per scanner, with ``notify``):
  posts to a Slack incoming webhook through a Prefect "Custom Webhook" block when the scanner's
  run ends Crashed, and also Failed/Held/Quarantined when the agent's own alerts are off for that
  scanner (when they are on, the agent already said so: no duplicates).
* **"scanner-agent: run <flow/deployment> on stored scans[ of study S]"** (with ``on_stored``): on
  every ``scanner-agent.scan.stored`` event (``orchestration.events``; only the study's with
  ``study``), runs the named deployment with the stored file's ``path`` and ``barcode`` (and
  ``stored_path``, ``sha256``, ``size``, ``scanner``, ``study``, ``sheet_row`` when its flow takes
  them), templated by the server from the event. docs/events.md has an example.

Only plain arguments here; the CLI reads them from the configuration.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

CRASH_AUTOMATION = "scanner-agent: crash runs whose heartbeats stop"
NOTIFY_AUTOMATION = "scanner-agent: notify failed scan runs ({scanner})"
FLOW_PREFIX = "Scan Image Flow: "
TAG = "scanner-agent"
WEBHOOK_SLUG = "custom-webhook"  # Prefect's CustomWebhookNotificationBlock

#: Final states a scan run can end in (the flow names some of its own: Held, Quarantined, ...).
#: Any of them after a heartbeat means the run ended normally and must not be crashed.
FINAL_STATE_NAMES = (
    "Completed",
    "Failed",
    "Cancelled",
    "Crashed",
    "Held",
    "Quarantined",
    "Already stored",
    "Stored, QC failed",
    "Cached",
)
#: Always notified: the one outcome the agent cannot report, because it is dead.
CRASHED_STATES = ("Crashed",)
#: Notified as well when the agent's own Slack/e-mail alerts are off for the scanner.
FAILED_STATES = ("Failed", "Held", "Quarantined", "Crashed")

NOTIFY_WINDOW_SECONDS = 600

ON_STORED_AUTOMATION = "scanner-agent: run {deployment} on stored scans"
STORED_EVENT = "scanner-agent.scan.stored"
#: The downstream flow's parameters, each rendered by the server from the stored event. A plain
#: ``{{ expr }}`` keeps the value's JSON type (Prefect wraps it as ``expr | tojson``).
ON_STORED_REQUIRED = {"path": "{{ event.payload.path }}", "barcode": "{{ event.payload.barcode }}"}
#: Passed only when the flow takes them (a flow refuses parameters it does not declare).
ON_STORED_OPTIONAL = {
    name: "{{ event.payload." + name + " | default(none) }}"
    for name in ("stored_path", "sha256", "size", "scanner", "study", "sheet_row")
}

CRASH_MESSAGE = (
    "No heartbeat from the scanner-agent running this scan for {minutes}: its host is down, asleep or "
    "cut off from the Prefect server. The scan is safe on the scanner's disk (a source is removed only "
    "after a verified copy exists) and resumes when the agent starts again; check "
    "`systemctl status scanner-agent@<scanner>` on that host."
)

NOTIFY_SUBJECT = "{{ flow.name }}: {{ flow_run.name }} is {{ flow_run.state.name }}"
NOTIFY_BODY = (
    "{{ flow.name }}: scan {{ flow_run.name }} is {{ flow_run.state.name }}.\n{{ flow_run.state.message }}\n"
)
#: The run's link: from the agent's configured UI address, else the server's PREFECT_UI_URL.
SERVER_LINK = '{{ flow_run|ui_url or "(set PREFECT_UI_URL on the Prefect server for a link to the run)" }}'


class SetupError(RuntimeError):
    """setup-prefect cannot do what was asked; the message says why and what to change."""


@dataclass
class Outcome:
    """What ``setup_prefect`` did to one object on the server."""

    kind: str  # "automation" or "block"
    name: str
    action: str  # "created", "updated" or "unchanged"
    id: UUID

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r}: {self.action} ({self.id})"


def flow_name_pattern(scanner: str | None = None) -> str:
    """The flow (by name, glob) an automation covers: one scanner's, or every scanner's."""
    return FLOW_PREFIX + (scanner or "*")


def heartbeat_seconds() -> int | None:
    """This process's flow-run heartbeat interval (what the agents use if run with the same env)."""
    from prefect.settings import get_current_settings

    return get_current_settings().flows.heartbeat_frequency


def crash_automation(crash_after_seconds: float, *, heartbeat: int | None = None) -> Any:
    """The proactive trigger: after a heartbeat, expect another heartbeat or a final state."""
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    beat = heartbeat_seconds() if heartbeat is None else heartbeat
    if beat is None:
        raise SetupError(
            "flow-run heartbeats are off (PREFECT_FLOWS_HEARTBEAT_FREQUENCY is empty), so a dead host "
            "cannot be told from a long scan; unset it (default 180 s) and run setup-prefect again"
        )
    if crash_after_seconds < 2 * beat:
        raise SetupError(
            f"prefect.crash_after_seconds = {crash_after_seconds:g} is less than twice the heartbeat "
            f"interval ({beat} s, PREFECT_FLOWS_HEARTBEAT_FREQUENCY): healthy runs would be crashed; "
            f"set it to at least {2 * beat}"
        )
    minutes = (
        f"{crash_after_seconds / 60:g} min" if crash_after_seconds >= 60 else f"{crash_after_seconds:g} s"
    )
    return AutomationCore(
        name=CRASH_AUTOMATION,
        description=(
            f"Sets a scan run Crashed when its scanner-agent stops sending heartbeats (every {beat} s) for "
            f"{minutes} without the run finishing. Created by `scanner-agent setup-prefect`."
        ),
        tags=[TAG],
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": flow_name_pattern()},
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in FINAL_STATE_NAMES)},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=crash_after_seconds),
        ),
        # Not forced: if the run finished meanwhile (a lost event), the server refuses to crash it.
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message=CRASH_MESSAGE.format(minutes=minutes))],
    )


def notify_automation(
    scanner: str, block_document_id: UUID, *, agent_alerts_on: bool, ui_url: str = ""
) -> Any:
    """The reactive trigger on the scanner's runs ending badly, posting through the webhook block."""
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    states = CRASHED_STATES if agent_alerts_on else FAILED_STATES
    why = (
        "the agent's own alerts cover Failed, Held and Quarantined"
        if agent_alerts_on
        else "the agent's own alerts are off for this scanner"
    )
    return AutomationCore(
        name=NOTIFY_AUTOMATION.format(scanner=scanner),
        description=(
            f"Posts to the lab's chat webhook when a {flow_name_pattern(scanner)} run ends "
            f"{'/'.join(states)} ({why}). Created by `scanner-agent setup-prefect --notify`."
        ),
        tags=[TAG, f"scanner:{scanner}"],
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={
                "prefect.resource.role": "flow",
                "prefect.resource.name": flow_name_pattern(scanner),
            },
            expect={f"prefect.flow-run.{s}" for s in states},
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive,
            threshold=1,
            # Once per run per window: under load the server may evaluate one state event more
            # than once (seen: four posts for one Crashed state with a 0 s window).
            within=timedelta(seconds=NOTIFY_WINDOW_SECONDS),
        ),
        actions=[
            SendNotification(
                block_document_id=block_document_id,
                subject=NOTIFY_SUBJECT,
                body=NOTIFY_BODY
                + (f"{ui_url.rstrip('/')}/runs/flow-run/{{{{ flow_run.id }}}}" if ui_url else SERVER_LINK),
            )
        ],
    )


def block_name(scanner: str) -> str:
    # Block document names: lowercase letters, digits and dashes.
    return (
        "scanner-agent-" + (re.sub(r"[^a-z0-9-]+", "-", scanner.lower()).strip("-") or "scanner") + "-notify"
    )


def webhook_block(scanner: str, webhook_url: str) -> Any:
    """A Custom Webhook block posting Slack's incoming-webhook JSON. The URL is a credential (anyone
    holding it can post), so it sits in the block's secrets and the UI shows only ``{{webhook_url}}``."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    if not re.match(r"https?://", webhook_url):
        raise SetupError(
            "prefect.notify_webhook_url_file must hold an http(s) webhook URL "
            '(a Slack incoming webhook, or any webhook taking Slack\'s {"text": ...} JSON)'
        )
    return CustomWebhookNotificationBlock(
        name=f"scanner-agent {scanner}",
        url="{{webhook_url}}",
        method="POST",
        json_data={"text": "*{{subject}}*\n{{body}}"},
        secrets={"webhook_url": webhook_url},
    )


def on_stored_parameters(deployment: str, schema: dict[str, Any] | None) -> dict[str, str]:
    """The templated parameters for the deployment's flow, from its parameter schema."""
    takes = set(((schema or {}).get("properties") or {}).keys())
    missing = [p for p in ON_STORED_REQUIRED if p not in takes]
    if missing:
        raise SetupError(
            f"--on-stored {deployment}: its flow takes no {' and no '.join(repr(p) for p in missing)} "
            f"parameter; a downstream flow for stored scans takes at least `path: str` and `barcode: str` "
            f"(and optionally {', '.join(ON_STORED_OPTIONAL)}); see docs/events.md"
        )
    return {**ON_STORED_REQUIRED, **{k: v for k, v in ON_STORED_OPTIONAL.items() if k in takes}}


def on_stored_automation(
    deployment: str, deployment_id: UUID, parameters: dict[str, str], *, study: str | None = None
) -> Any:
    """The reactive trigger on each stored scan (of ``study``), running ``deployment`` for it."""
    from prefect.events.actions import RunDeployment
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    match: dict[str, str] = {"prefect.resource.id": "scanner-agent.scan.*"}
    if study:
        match["scanner-agent.study"] = study
    name = ON_STORED_AUTOMATION.format(deployment=deployment) + (f" of study {study}" if study else "")
    return AutomationCore(
        name=name,
        description=(
            f"Runs the deployment {deployment} for every scan scanner-agent stores"
            + (f" for study {study}" if study else "")
            + f", with the stored file's {', '.join(parameters)}. "
            "Created by `scanner-agent setup-prefect --on-stored`."
        ),
        tags=[TAG],
        trigger=EventTrigger(
            match=match,
            expect={STORED_EVENT},
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[RunDeployment(source="selected", deployment_id=deployment_id, parameters=dict(parameters))],
    )


async def resolve_deployment(client: Any, deployment: str) -> Any:
    """The deployment named ``flow-name/deployment-name``, or a SetupError saying what to do."""
    from prefect.exceptions import ObjectNotFound

    if deployment.count("/") != 1 or not all(deployment.split("/")):
        raise SetupError(
            f"--on-stored {deployment!r}: name the deployment as FLOW-NAME/DEPLOYMENT-NAME "
            "(as `prefect deployment ls` shows it)"
        )
    try:
        return await client.read_deployment_by_name(deployment)
    except ObjectNotFound:
        raise SetupError(
            f"--on-stored {deployment}: no such deployment on this Prefect server; deploy or serve it "
            "first (`prefect deployment ls` lists them)"
        ) from None


async def ensure_automation(client: Any, automation: Any) -> Outcome:
    """Create the automation, or bring the one of the same name up to date (duplicates removed)."""
    from prefect.events.schemas.automations import AutomationCore

    existing = await client.read_automations_by_name(automation.name)
    if not existing:
        return Outcome("automation", automation.name, "created", await client.create_automation(automation))
    keep, *extra = existing
    for dup in extra:  # two setups racing, or a copy made in the UI: one automation per name
        await client.delete_automation(dup.id)
    current = AutomationCore(**keep.model_dump(exclude={"id", "owner_resource"}))
    if _comparable(current) == _comparable(automation) and not extra:
        return Outcome("automation", automation.name, "unchanged", keep.id)
    await client.update_automation(keep.id, automation)
    return Outcome("automation", automation.name, "updated", keep.id)


def _comparable(automation: Any) -> Any:
    data = automation.model_dump(mode="json", exclude={"owner_resource"})
    data["tags"] = sorted(data.get("tags") or [])
    trigger = data.get("trigger") or {}
    for key in ("expect", "after", "for_each"):  # sets: their JSON order differs between processes
        if isinstance(trigger.get(key), list):
            trigger[key] = sorted(trigger[key])
    return data


async def ensure_block(client: Any, block: Any, name: str) -> Outcome:
    """Save the webhook block under ``name`` unless the saved one is identical (secrets included)."""
    from prefect.exceptions import ObjectNotFound

    try:
        old = await client.read_block_document_by_name(
            name, block_type_slug=WEBHOOK_SLUG, include_secrets=True
        )
    except ObjectNotFound:
        old = None
    want = {
        k: v
        for k, v in block.model_dump(mode="json", context={"include_secrets": True}).items()
        if not k.startswith("_") and k != "block_type_slug"
    }
    if old is not None and old.data == want:
        return Outcome("block", name, "unchanged", old.id)
    block_id = await block.asave(name, overwrite=True, client=client)
    return Outcome("block", name, "updated" if old is not None else "created", block_id)


async def setup_prefect(
    *,
    scanner: str,
    crash_after_seconds: float,
    notify: bool = False,
    webhook_url: str | None = None,
    agent_alerts_on: bool = True,
    ui_url: str = "",
    on_stored: str | None = None,
    study: str | None = None,
) -> list[Outcome]:
    """Create or update this server's automations for ``scanner``; returns what was done."""
    from prefect.client.orchestration import get_client

    crash = crash_automation(crash_after_seconds)
    if notify and not webhook_url:
        raise SetupError(
            "--notify needs a webhook: set prefect.notify_webhook_url_file (a file holding the URL) "
            "or SCANNER_AGENT_PREFECT__NOTIFY_WEBHOOK_URL"
        )
    out: list[Outcome] = []
    async with get_client() as client:
        out.append(await ensure_automation(client, crash))
        if notify:
            assert webhook_url is not None
            name = block_name(scanner)
            block = await ensure_block(client, webhook_block(scanner, webhook_url), name)
            out.append(block)
            out.append(
                await ensure_automation(
                    client,
                    notify_automation(scanner, block.id, ui_url=ui_url, agent_alerts_on=agent_alerts_on),
                )
            )
        if on_stored:
            dep = await resolve_deployment(client, on_stored)
            params = on_stored_parameters(on_stored, dep.parameter_openapi_schema)
            out.append(
                await ensure_automation(client, on_stored_automation(on_stored, dep.id, params, study=study))
            )
    return out


def setup_prefect_sync(**kw: Any) -> list[Outcome]:
    return asyncio.run(setup_prefect(**kw))


async def remove(names: Sequence[str], block_names: Sequence[str] = ()) -> None:
    """Delete automations and webhook blocks by name (tests, and labs leaving Prefect)."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        for name in names:
            for a in await client.read_automations_by_name(name):
                await client.delete_automation(a.id)
        for bname in block_names:
            try:
                doc = await client.read_block_document_by_name(bname, block_type_slug=WEBHOOK_SLUG)
            except Exception:
                continue
            await client.delete_block_document(doc.id)
