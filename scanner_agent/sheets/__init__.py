"""The metadata-sheet adapters: a local CSV and the Google Sheet (gspread), with its cache.

Other layers import from this package, never from its modules, so the modules can be split
without touching their callers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scanner_agent.sheets.csv_source import CsvSource, read_csv_values
from scanner_agent.sheets.source import MetadataSource
from scanner_agent.sheets.write_back import CsvWriteBackPreview, SheetWriteBack, write_back_sink

if TYPE_CHECKING:
    from scanner_agent.sheets.google import GoogleSheetSource

__all__ = [
    "CsvSource",
    "CsvWriteBackPreview",
    "GoogleSheetSource",
    "MetadataSource",
    "SheetWriteBack",
    "read_csv_values",
    "write_back_sink",
]


def __getattr__(name: str) -> Any:
    # gspread and google-auth take a while to import; an agent reading a CSV never needs them.
    if name == "GoogleSheetSource":
        from scanner_agent.sheets.google import GoogleSheetSource

        return GoogleSheetSource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
