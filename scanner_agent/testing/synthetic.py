"""Real slide files made on the spot, for tests, the demo and the scanner simulator.

Everything written here is opened by the real OpenSlide: an Aperio-style SVS (vendor
``aperio``, with ``aperio.Barcode``), a generic tiled pyramidal TIFF (``generic-tiff``), a MIRAX
slide (``.mrxs`` + data folder) and a set of broken files that a scanner or a network share can
really produce. Output is deterministic: the same arguments give the same bytes, so two scans
made with the same seed are byte-identical and a different seed gives a different file.

This module is the front door; the makers live in ``tiff_slides``, ``mirax``, ``corrupt_slides``
and the picture they all show in ``artwork``.
"""

from __future__ import annotations

from scanner_agent.testing.corrupt_slides import CORRUPT_KINDS, write_corrupt
from scanner_agent.testing.mirax import write_mrxs
from scanner_agent.testing.tiff_slides import write_generic_tiff, write_svs

__all__ = ["CORRUPT_KINDS", "write_corrupt", "write_generic_tiff", "write_mrxs", "write_svs"]
