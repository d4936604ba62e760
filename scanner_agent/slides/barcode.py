"""Find a scan's barcode: from its file name, its slide's metadata or its label picture, in the
order of ``[scanner] barcode_sources`` (name, metadata, label by default).

No barcode is ``errors.NoBarcode`` naming the file and everything tried; nothing is guessed.
The text rules (what a usable barcode is, which metadata keys hold one, when a decoded label
code counts) are ``core.barcode``'s; this module adds the scan, the slide opened to read its
properties, Hamamatsu's barcode tag and the label picture (``slides.label``).

``find_barcode`` takes and returns only picklable values, so it can run in a worker process.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from scanner_agent.core import errors
from scanner_agent.core.barcode import (
    BARCODE_SOURCES,
    CONFIG_KEY,
    NDPI_BARCODE_TAG,
    BarcodeResult,
    barcode_from_label,
    barcode_from_name,
    barcode_from_properties,
    barcode_from_text,
)
from scanner_agent.scanunit import ScanUnit
from scanner_agent.slides import label as labels
from scanner_agent.slides.validate import read_properties, slide_file

LABEL_SOURCE = "label image"


def find_barcode(
    unit: ScanUnit,
    regex: re.Pattern[str],
    *,
    properties: Mapping[str, str] | None = None,
    sources: Sequence[str] = BARCODE_SOURCES,
    keep_label: bool = False,
) -> BarcodeResult:
    """The scan's barcode from the first of ``sources`` that gives one.

    ``properties`` are OpenSlide's properties if the caller already has them; otherwise the slide
    is opened to read them (only when the metadata is tried). Raises ``errors.NoBarcode`` naming
    the file and what was tried; with ``keep_label`` it carries the label picture (PNG) for the
    alert, when one was read.
    """
    tried: list[str] = []
    picture: bytes | None = None
    for source in sources:
        try:
            if source == "name":
                return _from_name(unit, regex)
            if source == "metadata":
                return _from_metadata(unit, regex, properties)
            if source == "label":
                return _from_label(unit, regex, keep_label)
            tried.append(f"unknown barcode source {source!r}")
        except _NotFound as exc:
            tried.extend(exc.tried)
            picture = exc.picture or picture
    raise errors.NoBarcode(
        f"No barcode for {unit.primary}: " + "; ".join(tried), path=str(unit.primary), label_png=picture
    )


class _NotFound(Exception):
    """One source gave no barcode: what was tried, and the label picture if it was read."""

    def __init__(self, *tried: str, picture: bytes | None = None) -> None:
        super().__init__(*tried)
        self.tried = list(tried)
        self.picture = picture


def _from_name(unit: ScanUnit, regex: re.Pattern[str]) -> BarcodeResult:
    try:
        from_name = barcode_from_name(unit.stem, regex)
    except ValueError as exc:
        raise _NotFound(f"file name {unit.stem!r}: {exc}") from None
    if from_name is None:
        raise _NotFound(f"file name {unit.stem!r} does not match {CONFIG_KEY} {regex.pattern!r}")
    return BarcodeResult(from_name, "file name")


def _from_metadata(
    unit: ScanUnit, regex: re.Pattern[str], properties: Mapping[str, str] | None
) -> BarcodeResult:
    tried: list[str] = []
    if properties is None:
        properties = read_properties(unit.primary)
        if not properties:
            tried.append("slide metadata: OpenSlide could not open the slide")
    if properties:
        try:
            return barcode_from_properties(properties, regex)
        except ValueError as exc:
            tried.append(str(exc))
    if unit.primary.suffix.lower() == ".ndpi":  # OpenSlide does not parse Hamamatsu's barcode tag
        where = f"slide metadata (NDPI tag {NDPI_BARCODE_TAG})"
        try:
            text = labels.ndpi_barcode_text(unit.primary)
            return barcode_from_text(text, regex, where)
        except ValueError as exc:
            message = str(exc)
            tried.append(message if message.startswith(where) else f"{where}: {message}")
    raise _NotFound(*tried)


def _from_label(unit: ScanUnit, regex: re.Pattern[str], keep_label: bool) -> BarcodeResult:
    try:
        target = slide_file(unit)
        name, image = labels.read_label(target)
    except (ValueError, errors.ScanError) as exc:
        message = exc.message if isinstance(exc, errors.ScanError) else str(exc)
        raise _NotFound(f"{LABEL_SOURCE}: {message}") from None
    where = LABEL_SOURCE if name == "label" else f"{LABEL_SOURCE} (in the macro picture)"
    try:
        return barcode_from_label(labels.decode_codes(image), regex, where)
    except ValueError as exc:
        raise _NotFound(str(exc), picture=labels.attachment_png(image) if keep_label else None) from None
