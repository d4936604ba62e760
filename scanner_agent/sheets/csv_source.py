"""The metadata sheet read from a local CSV file, re-read only when the file changes."""

from __future__ import annotations

import csv
import io
import logging
import threading
import time
from pathlib import Path

from scanner_agent.core.errors import SheetMalformed, SheetUnavailable
from scanner_agent.core.sheet_table import SheetTable, parse_table

log = logging.getLogger(__name__)


def read_csv_values(path: Path) -> list[list[str]]:
    """Raw rows of a CSV file. Raises ``SheetMalformed`` (naming the file) if it is not UTF-8 CSV."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # Excel's "CSV UTF-8" starts with a BOM
    except UnicodeDecodeError as e:
        # Guessing another encoding could silently change a name (é vs Ã©): refuse instead.
        raise SheetMalformed(
            f"{path} is not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); save it as 'CSV UTF-8'."
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        return list(reader)
    except csv.Error as e:
        raise SheetMalformed(f"{path} line {reader.line_num}: not valid CSV ({e}).") from None


class CsvSource:
    """A local CSV of the sheet's shape. Re-read only when the file's stat changes (one stat per call)."""

    def __init__(self, path: Path, *, barcode_column: str = "Barcode") -> None:
        self.path = Path(path)
        self.barcode_column = barcode_column
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int, int] | None = None
        self._result: SheetTable | SheetMalformed | None = None

    def describe(self) -> str:
        return str(self.path)

    def table(self, *, want: str | None = None) -> SheetTable:
        # ``want`` needs no special case: any edit changes the stat, and the stat is checked every call.
        with self._lock:
            try:
                st = self.path.stat()
            except OSError as e:
                raise SheetUnavailable(
                    f"Cannot read metadata sheet {self.path}: {e.strerror or e}."
                ) from None
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
            if stamp != self._stamp:
                self._result = self._read()
                self._stamp = stamp
            result = self._result
        if isinstance(result, SheetMalformed):
            raise SheetMalformed(result.message)  # a fresh exception per caller, same words
        assert result is not None
        return result

    def _read(self) -> SheetTable | SheetMalformed:
        fetched = time.time()
        try:
            values = read_csv_values(self.path)
            table = parse_table(
                values, source=str(self.path), barcode_column=self.barcode_column, fetched_at=fetched
            )
        except SheetMalformed as e:
            log.warning("Metadata sheet is malformed: %s", e)
            return e
        except OSError as e:
            raise SheetUnavailable(f"Cannot read metadata sheet {self.path}: {e.strerror or e}.") from None
        log.info(
            "Read metadata sheet %s: %d barcodes, %d problem(s)",
            self.path,
            len(table.rows),
            len(table.problems),
        )
        return table

    def check(self) -> list[str]:
        try:
            return list(self.table().problems)
        except (SheetMalformed, SheetUnavailable) as e:
            return [str(e)]
