"""Turn a barcode and its sheet row into a stored file name and folder: pure functions, no I/O.

The name is the row's include-in-name values in sheet order, then the barcode, joined by ``_``,
plus the scan's extension: ``Prec01_Run-2_P1_Cardinal_620995.svs``. Every value is made safe
for a single path component on Linux, macOS and Windows shares (see ``safe_component``), so a
cell can never steer a file outside its folder. Same inputs, same name.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath

from scanner_agent.core import errors

MAX_COMPONENT = 64  # bytes of UTF-8 per value
MAX_NAME_BYTES = 200  # whole file name, leaving room for ".partial" and suffixes on 255-byte filesystems
SEPARATOR = "_"

_UNSAFE = re.compile(r'[/\\:*?"<>|]')
_DASHES = re.compile(r"-{2,}")
_WHITESPACE = re.compile(r"\s+")
_EXT = re.compile(r"(\.[A-Za-z0-9]{1,16})?")
# Unicode categories removed outright: controls (NUL, ESC, ...), format characters (RTL
# overrides and zero-width marks that make a name display differently from what it is) and
# lone surrogates (not encodable as UTF-8).
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})
_WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
)


def safe_component(value: str, *, max_len: int = MAX_COMPONENT) -> str:
    """``value`` made into one safe path component, or ``ValueError`` saying why it cannot be.

    NFC-normalise; whitespace runs become ``-``; control and format characters are dropped;
    ``/ \\ : * ? " < > |`` become ``-``; runs of ``-`` collapse; leading and trailing ``-`` and
    ``.`` go, and so do leading ``= + @`` (so a name pasted into a sheet or CSV report is never
    read as a formula); then it is cut to ``max_len`` bytes of UTF-8 without splitting a
    character. Empty, ``.``/``..`` and Windows device names (``CON``, ``NUL``...) are refused.
    """
    text = unicodedata.normalize("NFC", value)
    text = _WHITESPACE.sub("-", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) not in _DROPPED_CATEGORIES)
    text = _UNSAFE.sub("-", text)
    text = _DASHES.sub("-", text)
    text = _trim(text)
    text = _trim(_truncate_utf8(text, max_len))
    if not text:
        raise ValueError("nothing usable is left after removing unsafe characters")
    if text in (".", ".."):
        raise ValueError(f"{text!r} is not a usable name")
    if text.split(".")[0].upper() in _WINDOWS_RESERVED:
        raise ValueError(f"{text!r} is a reserved device name on Windows")
    return text


def build_name(
    barcode: str,
    fields: Sequence[tuple[str, str, bool]],
    ext: str,
    *,
    row_number: int | None = None,
    source: str = "the sheet",
) -> str:
    """The stored file name for ``barcode`` from its row's flagged ``(column, value, required)``
    fields (sheet order, barcode column excluded) and the scan's extension (``".svs"`` or ``""``).

    An empty REQUIRED value raises ``errors.IncompleteRow`` (listing every empty one); an empty
    OPTIONAL value is skipped; a value that cannot be made safe raises ``errors.SheetMalformed``
    naming source, row and column. If the parts together pass ``MAX_NAME_BYTES``, the longest
    values are cut (never the barcode) until the name fits.
    """
    if not _EXT.fullmatch(ext):
        raise ValueError(f"extension {ext!r} must be empty or a dot and 1-16 letters/digits")
    where = _where(source, row_number)
    missing = [column for column, value, required in fields if required and not (value or "").strip()]
    if missing:
        cols = ", ".join(repr(c) for c in missing)
        raise errors.IncompleteRow(
            f"{where}: REQUIRED column(s) {cols} empty for barcode {barcode!r}",
            missing=missing,
            barcode=barcode,
        )
    parts = [
        _safe_cell(value, column, where, barcode) for column, value, _ in fields if (value or "").strip()
    ]
    code = _safe_cell(barcode, "Barcode", where, barcode)
    budget = MAX_NAME_BYTES - len(ext) - _nbytes(code) - len(SEPARATOR) * len(parts)
    parts = _fit_parts(parts, budget, where, barcode)
    return SEPARATOR.join([*parts, code]) + ext


def layout_columns(layout: str) -> list[str]:
    """Column names used by a folder layout like ``"{Study}/{Experiment}"``, in order.

    Raises ``errors.ConfigError`` for a layout that is absolute, has ``..`` or empty segments,
    unbalanced braces, positional ``{}`` or format specs/conversions, or literal text that is not a
    safe component.
    """
    if layout.startswith("/") or "\\" in layout:
        raise errors.ConfigError(f"folder layout {layout!r} must be a relative path with '/' separators")
    columns: list[str] = []
    if not layout:
        return columns
    for segment in layout.split("/"):
        if not segment:
            raise errors.ConfigError(
                f"folder layout {layout!r} has an empty segment (double or trailing '/')"
            )
        try:
            parsed = list(string.Formatter().parse(segment))
        except ValueError as exc:
            raise errors.ConfigError(f"folder layout {layout!r}: {exc}") from None
        for literal, field, spec, conversion in parsed:
            if literal and (literal in (".", "..") or _UNSAFE.search(literal)):
                raise errors.ConfigError(f"folder layout {layout!r} has unsafe literal text {literal!r}")
            if field is None:
                continue
            if not field.strip():
                raise errors.ConfigError(
                    f"folder layout {layout!r} has an empty placeholder '{{}}'; name a column"
                )
            if spec or conversion:
                raise errors.ConfigError(
                    f"folder layout {layout!r}: placeholder {{{field}}} may not have "
                    "a format spec or conversion"
                )
            columns.append(field)
    return columns


def build_folder(
    layout: str, values: Mapping[str, str], *, row_number: int | None = None, source: str = "the sheet"
) -> PurePosixPath:
    """The relative folder for a row: ``layout`` with each ``{Column}`` replaced by its value,
    made safe. Never absolute, never containing ``..``. A column the row does not have raises
    ``errors.SheetMalformed``; an empty value raises ``errors.IncompleteRow`` (a scan is not filed
    in a half-named folder); an unsafe value raises ``errors.SheetMalformed``."""
    layout_columns(layout)  # validates the layout itself
    where = _where(source, row_number)
    barcode = values.get("Barcode")
    segments: list[str] = []
    for segment in layout.split("/") if layout else []:
        rendered = []
        for literal, field, _, _ in string.Formatter().parse(segment):
            rendered.append(literal)
            if field is None:
                continue
            if field not in values:
                raise errors.SheetMalformed(
                    f"{where}: folder layout {layout!r} uses column {field!r}, which the sheet does not have",
                    barcode=barcode,
                )
            value = values[field] or ""
            if not value.strip():
                raise errors.IncompleteRow(
                    f"{where}: column {field!r} (used in the folder layout) is empty",
                    missing=[field],
                    barcode=barcode,
                )
            rendered.append(_safe_cell(value, field, where, barcode))
        segments.append(_safe_cell("".join(rendered), f"folder {segment!r}", where, barcode))
    return PurePosixPath(*segments)


# --- helpers ---------------------------------------------------------------------------------


def _where(source: str, row_number: int | None) -> str:
    return f"{source} row {row_number}" if row_number is not None else source


def _safe_cell(value: str, column: str, where: str, barcode: str | None) -> str:
    try:
        return safe_component(value)
    except ValueError as exc:
        shown = value if len(value) <= 60 else value[:57] + "..."
        raise errors.SheetMalformed(
            f"{where}, column {column!r}: value {shown!r} cannot be used in a file name: {exc}",
            barcode=barcode,
        ) from None


def _trim(text: str) -> str:
    text = text.strip("-.")
    while text and text[0] in "=+@-.":  # formula starters, then anything they uncovered
        text = text[1:]
    return text.rstrip("-.")


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


def _truncate_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` within ``max_bytes`` that ends between characters and does
    not strip an accent from its letter (a combining mark after the cut drops its base too)."""
    if _nbytes(text) <= max_bytes:
        return text
    out: list[str] = []
    used = 0
    for ch in text:
        size = _nbytes(ch)
        if used + size > max_bytes:
            while out and unicodedata.combining(ch):
                ch = out.pop()  # walk back to (and drop) the base of the cut cluster
                if not unicodedata.combining(ch):
                    break
            break
        out.append(ch)
        used += size
    return "".join(out)


def _fit_parts(parts: list[str], budget: int, where: str, barcode: str) -> list[str]:
    """Cut the longest parts to a common byte cap so that together they fit ``budget``."""
    if sum(map(_nbytes, parts)) <= budget:
        return parts
    if budget < 2 * len(parts):
        raise errors.SheetMalformed(
            f"{where}: too many name columns to fit a {MAX_NAME_BYTES}-byte file name", barcode=barcode
        )
    cap = max(map(_nbytes, parts))
    while cap > 1 and sum(min(_nbytes(p), cap) for p in parts) > budget:
        cap -= 1
    fitted = []
    for part in parts:
        cut = _trim(_truncate_utf8(part, cap))
        if not cut:
            raise errors.SheetMalformed(
                f"{where}: value {part!r} cannot be shortened to fit a {MAX_NAME_BYTES}-byte file name",
                barcode=barcode,
            )
        fitted.append(cut)
    return fitted
