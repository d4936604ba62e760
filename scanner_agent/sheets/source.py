"""What every metadata-sheet adapter offers the pipeline: the ``MetadataSource`` protocol."""

from __future__ import annotations

from typing import Protocol

from scanner_agent.core.sheet_table import SheetTable


class MetadataSource(Protocol):
    """Where the sheet comes from. ``table`` is cheap to call per scan: sources cache their reads."""

    def table(self, *, want: str | None = None) -> SheetTable:
        """The current table. ``want`` is the barcode the caller is after (a hint to refresh early)."""
        ...

    def describe(self) -> str: ...

    def check(self) -> list[str]:
        """Everything wrong with the source (reachability, permissions, malformed sheet), as sentences."""
        ...
