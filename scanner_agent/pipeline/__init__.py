"""The scan use case without Prefect: ``process_scan`` over plain steps and injected services.

The orchestration layer runs it inside a Prefect flow, each step as a task; tests run it with
in-memory fakes and a step runner that just calls each step. Nothing here imports Prefect.
"""

from scanner_agent.pipeline.adapters import FileStorage, IsolatedSlideReader, OpenSlideReader
from scanner_agent.pipeline.ports import (
    Notifier,
    RunPort,
    ScanOutcome,
    ScanServices,
    Settings,
    SlideReader,
    Step,
    StepRunner,
    Storage,
    call_directly,
)
from scanner_agent.pipeline.process import process_scan
from scanner_agent.pipeline.steps import STEPS

__all__ = [
    "STEPS",
    "FileStorage",
    "IsolatedSlideReader",
    "Notifier",
    "OpenSlideReader",
    "RunPort",
    "ScanOutcome",
    "ScanServices",
    "Settings",
    "SlideReader",
    "Step",
    "StepRunner",
    "Storage",
    "call_directly",
    "process_scan",
]
