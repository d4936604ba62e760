"""Find a scan's barcode: from its file name by the configured regex, else from the slide's metadata.

No barcode is ``errors.NoBarcode`` naming the file and everything tried; nothing is guessed.
The text rules (what a usable barcode is, which metadata keys hold one) are ``core.barcode``'s;
this module adds the scan and the slide opened to read its properties.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from scanner_agent.core import errors
from scanner_agent.core.barcode import CONFIG_KEY, BarcodeResult, barcode_from_name, barcode_from_properties
from scanner_agent.scanunit import ScanUnit
from scanner_agent.slides.validate import read_properties


def find_barcode(
    unit: ScanUnit, regex: re.Pattern[str], *, properties: Mapping[str, str] | None = None
) -> BarcodeResult:
    """The scan's barcode: from its name first, then from its slide metadata.

    ``properties`` are OpenSlide's properties if the caller already has them; otherwise the slide
    is opened to read them (only when the name gives no barcode). Raises ``errors.NoBarcode``
    naming the file and what was tried.
    """
    tried: list[str] = []
    try:
        from_name = barcode_from_name(unit.stem, regex)
    except ValueError as exc:
        tried.append(f"file name {unit.stem!r}: {exc}")
    else:
        if from_name is not None:
            return BarcodeResult(from_name, "file name")
        tried.append(f"file name {unit.stem!r} does not match {CONFIG_KEY} {regex.pattern!r}")

    if properties is None:
        properties = read_properties(unit.primary)
        if not properties:
            tried.append("slide metadata: OpenSlide could not open the slide")
    if properties:
        try:
            return barcode_from_properties(properties, regex)
        except ValueError as exc:
            tried.append(str(exc))
    raise errors.NoBarcode(f"No barcode for {unit.primary}: " + "; ".join(tried), path=str(unit.primary))
