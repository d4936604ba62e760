"""The scan's summary in markdown, left on its run: where it was stored, or what went wrong and what to do."""

from __future__ import annotations

import re
import time
from pathlib import Path

from scanner_agent.core.qc import QcResult
from scanner_agent.pipeline.ports import RunPort
from scanner_agent.storage import TransferResult


def artifact_key(s: str) -> str:
    """``scan-<barcode>``'s tail: Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", s.lower()).strip("-")[:60] or "scan"


def render(
    scanner: str,
    barcode: str | None,
    source: Path,
    result: TransferResult | None,
    qc: QcResult | None,
    note: str,
    seconds: float,
    barcode_source: str | None = None,
) -> str:
    lines = [
        f"# {barcode or source.name} on {scanner}",
        "",
        note,
        "",
        "| | |",
        "|---|---|",
        f"| Barcode | {barcode or '(none found)'} |",
        *([f"| Barcode from | {barcode_source} |"] if barcode and barcode_source else []),
        f"| Source | `{source}` |",
    ]
    if result is not None:
        copy = f"{result.seconds:.2f} s{' (same filesystem: rename)' if result.same_filesystem else ''}"
        lines += [
            f"| Stored as | `{result.dest}` |",
            f"| Size | {result.total_size:,} bytes |",
            f"| sha256 | `{result.sha256}` |",
            f"| Copy | {copy} |",
            f"| Sidecar | `{result.sidecar}` |",
        ]
        if result.superseded:
            lines.append(f"| Superseded | {', '.join(f'`{p}`' for p in result.superseded)} |")
    if qc is not None:
        verdict = "passed" if qc.passed else "FAILED"
        lines.append(f"| QC | {verdict} (blur {qc.blur_score:.1f}, tissue {qc.tissue_fraction:.1%}) |")
    lines.append(f"| Duration | {seconds:.2f} s |")
    return "\n".join(lines)


class Summary:
    """Publishes one scan's summary on its run, timed from when the run started (``t0``, monotonic)."""

    def __init__(self, scanner: str, run: RunPort, *, t0: float) -> None:
        self.scanner = scanner
        self.run = run
        self.t0 = t0
        #: Where Identify Barcode found the barcode ("label image, DataMatrix"), once it has.
        self.barcode_source: str | None = None

    async def publish(
        self,
        barcode: str | None,
        source: Path,
        result: TransferResult | None,
        qc: QcResult | None,
        note: str,
    ) -> None:
        seconds = time.monotonic() - self.t0
        text = render(self.scanner, barcode, source, result, qc, note, seconds, self.barcode_source)
        await self.run.artifact(
            text,
            key=f"scan-{artifact_key(barcode or source.stem)}",
            description=f"Scan summary for {barcode or source.name}",
        )
