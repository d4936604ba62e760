"""The metadata-sheet adapters: a local CSV and the Google Sheet (gspread), with its cache.

Other layers import from this package, never from its modules, so the modules can be split
without touching their callers.
"""

from scanner_agent.sheets.google import GoogleSheetSource

__all__ = ["GoogleSheetSource"]
