"""Read a barcode out of a name, a slide's metadata or its decoded label codes, and say why not.

Pure text work: the slide adapter (``slides.find_barcode``) opens the slide and tries the
sources of ``[scanner] barcode_sources`` in order (name, metadata, label by default); these
functions judge the text each gives. Nothing is guessed: a code decoded from the label counts only
when ``barcode_regex`` matches it, and two different valid codes on one label are an error.

A barcode is a lookup key, never a path: it is stripped of surrounding whitespace and must then
be 1-64 printable ASCII characters with no whitespace, control character or path separator, and
not ``.`` or ``..``. Leading zeros are kept (barcodes are strings, not numbers).

Unicode look-alikes are rejected, not normalised: Python's ``\\d`` matches fullwidth digits, so
a file named ``６２０９９５.svs`` would otherwise match ``(?P<barcode>\\d{6})`` and, after NFKC,
silently become ``620995``, possibly a different slide's row. A person renames the file
instead; the error names the offending character.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scanner_agent.core import errors

#: The config key the regex comes from, named in configuration errors.
CONFIG_KEY = "scanner.barcode_regex"
MAX_BARCODE_LEN = 64

#: OpenSlide property names holding a slide's barcode, most specific first.
#: - ``openslide.barcode``: OpenSlide's own normalised key (OpenSlide 4.0.1 and later, only for the
#:   formats it maps, e.g. not Aperio in 4.0.1: the vendor keys below stay needed).
#: - ``aperio.Barcode``: ``Barcode = ...`` in an SVS ImageDescription.
#: - ``leica.barcode``: Leica SCN ``<barcode>``, base64-decoded by OpenSlide itself.
#: - ``philips.PIM_DP_UFS_BARCODE``: Philips TIFF XML; still base64 here, decoded below.
#: - ``dicom.BarcodeValue`` / ``dicom.ContainerIdentifier``: DICOM WSI label barcode, and the
#:   slide (container) identifier that scanners set to the label's barcode.
#: - ``ventana.Barcode1D`` / ``ventana.Barcode2D``: attributes of the iScan element, which
#:   OpenSlide copies in full, on scanners that write them.
#: - ``argos.Barcode``: Argos XML.
#: Hamamatsu NDPI keeps its barcode text in TIFF tag 65468, which OpenSlide does not parse (the slide
#: adapter reads it with tifffile, ``NDPI_BARCODE_TAG``). MIRAX carries no barcode text, only a
#: label picture: that is the ``label`` source.
METADATA_KEYS: tuple[str, ...] = (
    "openslide.barcode",
    "aperio.Barcode",
    "leica.barcode",
    "philips.PIM_DP_UFS_BARCODE",
    "dicom.BarcodeValue",
    "dicom.ContainerIdentifier",
    "ventana.Barcode1D",
    "ventana.Barcode2D",
    "argos.Barcode",
)
_BASE64_KEYS = frozenset({"philips.PIM_DP_UFS_BARCODE"})
#: Hamamatsu NDPI's private TIFF tag holding the label's barcode text.
NDPI_BARCODE_TAG = 65468
#: Where a barcode may come from, as ``[scanner] barcode_sources`` names them; the default order.
BARCODE_SOURCES: tuple[str, ...] = ("name", "metadata", "label")
SOURCES_KEY = "scanner.barcode_sources"
_FORBIDDEN = frozenset("/\\")


@dataclass(frozen=True)
class BarcodeResult:
    """A barcode and where it came from ("file name" or "slide metadata (aperio.Barcode)")."""

    barcode: str
    source: str


@dataclass(frozen=True)
class LabelCode:
    """One symbol decoded from a label picture: its text and its symbology ("DataMatrix")."""

    text: str
    symbology: str


def check_barcode_sources(sources: Sequence[str]) -> tuple[str, ...]:
    """``sources`` as a tuple, or ``ValueError`` naming what is wrong (unknown, repeated, none)."""
    unknown = [s for s in sources if s not in BARCODE_SOURCES]
    if unknown:
        raise ValueError(
            f"unknown barcode source {', '.join(map(repr, unknown))}; use some of {list(BARCODE_SOURCES)}"
        )
    repeated = sorted({s for s in sources if list(sources).count(s) > 1})
    if repeated:
        raise ValueError(f"barcode source {', '.join(map(repr, repeated))} is listed twice")
    if not sources:
        raise ValueError(f"list at least one barcode source of {list(BARCODE_SOURCES)}")
    return tuple(sources)


def barcode_from_label(codes: Sequence[LabelCode], regex: re.Pattern[str], where: str) -> BarcodeResult:
    """The barcode among the codes decoded from the label picture ``where`` ("label image").

    A code counts only when ``regex`` matches its text (the matched group, cleaned, is the
    barcode); the same barcode in several symbols is one barcode. Raises ``ValueError`` saying
    what was decoded and why none counts, or naming both barcodes when two different ones count.
    """
    if not codes:
        raise ValueError(f"{where}: no barcode symbol could be decoded")
    found: dict[str, list[str]] = {}
    rejected: list[str] = []
    for code in codes:
        try:
            value = barcode_from_name(code.text, regex)
        except ValueError as exc:
            rejected.append(f"{code.symbology} {code.text!r} ({exc})")
            continue
        if value is None:
            rejected.append(f"{code.symbology} {code.text!r} does not match {CONFIG_KEY} {regex.pattern!r}")
            continue
        kinds = found.setdefault(value, [])
        if code.symbology not in kinds:
            kinds.append(code.symbology)
    if len(found) > 1:
        both = " and ".join(f"{b!r} ({', '.join(k)})" for b, k in found.items())
        raise ValueError(f"{where} holds {len(found)} different barcodes, {both}; nothing is guessed")
    if not found:
        raise ValueError(f"{where}: decoded " + "; ".join(rejected))
    ((barcode, kinds),) = found.items()
    return BarcodeResult(barcode, f"{where}, {' + '.join(kinds)}")


def barcode_from_text(value: str, regex: re.Pattern[str], where: str) -> BarcodeResult:
    """The barcode in a vendor's barcode field (``where`` names it): the regex's match when it
    matches, else the whole value as printed on the label. ``ValueError`` says why it is unusable."""
    if not value.strip():
        raise ValueError(f"{where} is empty")
    try:
        return BarcodeResult(_pick(value, regex), where)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _pick(value: str, regex: re.Pattern[str]) -> str:
    match = regex.search(value)
    return clean_barcode(match.group("barcode") if match and match.group("barcode") else value)


def compile_barcode_regex(pattern: str) -> re.Pattern[str]:
    """Compile the configured regex; it must have a named group ``barcode``."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise errors.ConfigError(
            f"{CONFIG_KEY} {pattern!r} is not a valid regular expression: {exc}"
        ) from None
    if "barcode" not in regex.groupindex:
        raise errors.ConfigError(
            f"{CONFIG_KEY} {pattern!r} has no named group 'barcode'; write it like (?P<barcode>\\d{{6}})"
        )
    return regex


def clean_barcode(value: str) -> str:
    """``value`` stripped of surrounding whitespace, or ``ValueError`` saying why it is unusable."""
    text = value.strip()
    if not text:
        raise ValueError("it is empty")
    if len(text) > MAX_BARCODE_LEN:
        raise ValueError(f"it is {len(text)} characters long (at most {MAX_BARCODE_LEN})")
    for ch in text:
        if not ch.isascii():
            name = unicodedata.name(ch, "unnamed character")
            raise ValueError(
                f"it contains the non-ASCII character {ch!r} (U+{ord(ch):04X} {name}); "
                "look-alike characters are not converted"
            )
        if ch in _FORBIDDEN:
            raise ValueError(f"it contains the path separator {ch!r}")
        if ch.isspace():
            raise ValueError("it contains whitespace")
        if not ch.isprintable():
            raise ValueError(f"it contains the control character U+{ord(ch):04X}")
    if set(text) == {"."}:
        raise ValueError(f"{text!r} is not a usable barcode")
    return text


def barcode_from_name(name: str, regex: re.Pattern[str]) -> str | None:
    """The barcode in ``name`` (a file name, its stem or a folder name), or ``None`` if the regex
    does not match. Raises ``ValueError`` if the match is unusable or the name holds two
    different barcodes (the regex should then be anchored, e.g. ``^(?P<barcode>\\d{6})``)."""
    found = [m.group("barcode") for m in regex.finditer(name) if m.group("barcode") is not None]
    if not found:
        return None
    distinct = list(dict.fromkeys(found))
    if len(distinct) > 1:
        raise ValueError(
            f"the regex matches {len(distinct)} different barcodes ({', '.join(map(repr, distinct))}); "
            "anchor it so that only one matches"
        )
    return clean_barcode(distinct[0])


def barcode_from_properties(properties: Mapping[str, str], regex: re.Pattern[str]) -> BarcodeResult:
    """The barcode in a slide's metadata ``properties`` (OpenSlide's, all strings).

    ``METADATA_KEYS`` are tried in order; Philips' value is base64-decoded first. The regex picks
    the barcode out of a value when it matches; otherwise the whole value is the barcode, as
    printed on the label. Raises ``ValueError`` saying, key by key, why nothing was usable.
    """
    tried: list[str] = []
    present = False
    for key in METADATA_KEYS:
        raw = properties.get(key)
        if raw is None or not raw.strip():
            continue
        present = True
        try:
            value = _decode_base64(raw) if key in _BASE64_KEYS else raw
            return BarcodeResult(_pick(value, regex), f"slide metadata ({key})")
        except ValueError as exc:
            tried.append(f"slide metadata {key}: {exc}")
    if not present:
        tried.append("slide metadata has none of " + ", ".join(METADATA_KEYS))
    raise ValueError("; ".join(tried))


def _decode_base64(value: str) -> str:
    try:
        return base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("it is not valid base64-encoded UTF-8 text") from None
